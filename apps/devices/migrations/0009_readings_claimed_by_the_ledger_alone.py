"""Readings lose two indexes: the unique one on the idempotency key (the ledger's unique key,
claimed in the same transaction, is the claim) and the device's own (the (device, recorded_at)
index serves it). On SQLite Django rebuilds the four reading tables: on a large database this
takes a while, once. On PostgreSQL it drops the indexes."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("devices", "0008_device_last_heartbeat"),
    ]

    operations = [
        migrations.AlterField(
            model_name="guardlocation",
            name="device",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to="devices.device",
            ),
        ),
        migrations.AlterField(
            model_name="guardlocation",
            name="idempotency_key",
            field=models.CharField(max_length=200),
        ),
        migrations.AlterField(
            model_name="sensorreading",
            name="device",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to="devices.device",
            ),
        ),
        migrations.AlterField(
            model_name="sensorreading",
            name="idempotency_key",
            field=models.CharField(max_length=200),
        ),
        migrations.AlterField(
            model_name="systemhealthsample",
            name="device",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to="devices.device",
            ),
        ),
        migrations.AlterField(
            model_name="systemhealthsample",
            name="idempotency_key",
            field=models.CharField(max_length=200),
        ),
        migrations.AlterField(
            model_name="telemetryreading",
            name="device",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to="devices.device",
            ),
        ),
        migrations.AlterField(
            model_name="telemetryreading",
            name="idempotency_key",
            field=models.CharField(max_length=200),
        ),
    ]
