from typing import Any

from django.core.management.base import BaseCommand

from apps.mqtt.subscriber import main


class Command(BaseCommand):
    help = "Run the MQTT subscriber (validate, batch and enqueue device messages)."

    def handle(self, *args: Any, **options: Any) -> None:
        main()
