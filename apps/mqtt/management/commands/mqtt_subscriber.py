from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand

from apps.mqtt.subscriber import Lane, main


class Command(BaseCommand):
    help = "Run the MQTT subscriber (validate, batch and enqueue device messages)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--lane",
            choices=[lane.value for lane in Lane],
            default=Lane.ALL.value,
            help="the topic kinds this subscriber's session reads: urgent (alerts, as "
            "<MQTT_CLIENT_ID>-urgent), routine (the rest, as MQTT_CLIENT_ID) or all (default, "
            "one session); make run and the systemd units run an urgent and a routine one",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        main(Lane(options["lane"]))
