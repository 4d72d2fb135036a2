from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("devices", "0007_device_report_interval"),
    ]

    operations = [
        migrations.AddField(
            model_name="device",
            name="last_heartbeat",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
