import datetime

import django.core.validators
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("devices", "0006_device_commands"),
    ]

    operations = [
        migrations.AddField(
            model_name="device",
            name="report_interval",
            field=models.DurationField(
                blank=True,
                help_text=(
                    "How often this device reports, e.g. 00:05:00; silent for longer, it goes "
                    "OFFLINE. Empty: as its kind does (DEVICE_REPORT_INTERVALS, "
                    "DEVICE_OFFLINE_AFTER)."
                ),
                null=True,
                validators=[
                    django.core.validators.MinValueValidator(datetime.timedelta(seconds=10))
                ],
            ),
        ),
    ]
