from typing import Any

from django.contrib import admin

from apps.devices.models import Device, DeviceCommand, DeviceCommandTransition, Geofence, Guard


@admin.register(Device)
class DeviceAdmin(admin.ModelAdmin[Device]):
    list_display = ["device_id", "tenant", "kind", "site", "status", "battery", "last_seen"]
    list_filter = ["tenant", "kind", "status", "auto_registered"]
    search_fields = ["device_id", "name", "site"]
    readonly_fields = [
        "last_seen",
        "last_heartbeat",
        "battery",
        "signal",
        "auto_registered",
        "created_at",
    ]


@admin.register(Guard)
class GuardAdmin(admin.ModelAdmin[Guard]):
    list_display = ["name", "tenant", "device", "on_duty"]
    list_filter = ["tenant", "on_duty"]


@admin.register(Geofence)
class GeofenceAdmin(admin.ModelAdmin[Geofence]):
    list_display = ["name", "tenant", "shape", "active"]
    list_filter = ["tenant", "shape", "active"]


class DeviceCommandTransitionInline(admin.TabularInline[DeviceCommandTransition, DeviceCommand]):
    model = DeviceCommandTransition
    extra = 0
    can_delete = False
    readonly_fields = ["from_status", "to_status", "by", "at", "note"]

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(DeviceCommand)
class DeviceCommandAdmin(admin.ModelAdmin[DeviceCommand]):
    """Read only: a command moves through its states by its lifecycle (apps/devices/commands.py),
    never by an edit."""

    list_display = ["id", "name", "device", "tenant", "status", "created_at", "expires_at"]
    list_filter = ["tenant", "status"]
    search_fields = ["id", "name", "device__device_id"]
    inlines = [DeviceCommandTransitionInline]

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False
