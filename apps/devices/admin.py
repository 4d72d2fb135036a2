from django.contrib import admin

from apps.devices.models import Device, Geofence, Guard


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin[Device]):
    list_display = ["device_id", "tenant", "kind", "site", "status", "battery", "last_seen"]
    list_filter = ["tenant", "kind", "status", "auto_registered"]
    search_fields = ["device_id", "name", "site"]
    readonly_fields = ["last_seen", "battery", "signal", "auto_registered", "created_at"]


@admin.register(Guard)
class GuardAdmin(admin.ModelAdmin[Guard]):
    list_display = ["name", "tenant", "device", "on_duty"]
    list_filter = ["tenant", "on_duty"]


@admin.register(Geofence)
class GeofenceAdmin(admin.ModelAdmin[Geofence]):
    list_display = ["name", "tenant", "shape", "active"]
    list_filter = ["tenant", "shape", "active"]
