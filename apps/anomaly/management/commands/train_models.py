from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.anomaly.models import TrainingRun
from apps.anomaly.tasks import broadcast_progress, train_anomaly_models
from apps.anomaly.training import Progress, train
from apps.devices.models import Device
from apps.tenants.models import Tenant


class Command(BaseCommand):
    help = (
        "Train the anomaly models of every tenant (or one) now, showing each step; the NOC sees "
        "the same steps as task_progress. --queue hands the run to the ml_training worker."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", help="tenant name (default: every tenant)")
        parser.add_argument("--kind", choices=Device.Kind.values, help="one device kind only")
        parser.add_argument(
            "--queue", action="store_true", help="send it to the ml_training queue and return"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        tenants = None
        if options["tenant"]:
            tenants = Tenant.objects.filter(name=options["tenant"])
            if not tenants.exists():
                raise CommandError(f"no tenant named {options['tenant']!r}")
        if options["queue"]:
            tenant_id = tenants.get().pk if tenants is not None else None
            train_anomaly_models.delay(tenant_id, options["kind"])
            self.stdout.write(
                "Queued on ml_training; follow it in the worker's log or the NOC's task_progress."
            )
            return
        names = dict(Tenant.objects.values_list("pk", "name"))

        def report(progress: Progress) -> None:
            broadcast_progress(progress)
            self.stdout.write(
                f"[{progress.done}/{progress.total}] {names.get(progress.tenant_id)} "
                f"{progress.device_kind}: {progress.stage}: {progress.message}"
            )

        runs = train(tenants, device_kind=options["kind"], report=report)
        if not runs:
            self.stdout.write("No tenant has devices of that kind: nothing to train.")
        trained = sum(run.outcome == TrainingRun.Outcome.TRAINED for run in runs)
        summary = f"{trained} of {len(runs)} models trained."
        failed = [run for run in runs if run.outcome == TrainingRun.Outcome.FAILED]
        if failed:
            raise CommandError(f"{summary} {len(failed)} failed: see the lines above.")
        kept = len(runs) - trained
        style = self.style.SUCCESS if kept == 0 else self.style.WARNING
        self.stdout.write(style(summary + (f" {kept} kept their previous model." if kept else "")))
