"""The REST API: alerts (read and act on), devices and geofences (read, register and edit),
readings, device commands (send, follow, cancel) — all of the caller's tenant only.

Every queryset starts from `request.user.tenant`, so another tenant's id is simply not found
(404, never 403) and a user without a tenant sees nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.db.models import Q, QuerySet
from drf_spectacular.utils import (
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, NotFound, PermissionDenied
from rest_framework.generics import get_object_or_404
from rest_framework.permissions import BasePermission, DjangoModelPermissions
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer, Serializer
from rest_framework.views import APIView

from apps.alerts.models import ACTIVE_STATUSES, Alert, AlertStatus
from apps.alerts.services import TransitionError, transition
from apps.core.outbox import broadcast_on_commit
from apps.devices.commands import CommandStateError
from apps.devices.models import Device, DeviceCommand, Geofence
from apps.devices.services import NaturallyOrdered, search_devices
from apps.noc.api.serializers import (
    READING_SERIALIZERS,
    AlertDetailSerializer,
    AlertFilterSerializer,
    AlertNoteSerializer,
    AlertSerializer,
    CommandDetailSerializer,
    CommandFilterSerializer,
    CommandRequestSerializer,
    CommandSerializer,
    DeviceDetailSerializer,
    DeviceFilterSerializer,
    DeviceSerializer,
    GeofenceFilterSerializer,
    GeofenceSerializer,
    ReadingQuerySerializer,
    readings_of,
)
from apps.noc.auth import ALERT_ACTION_PERMISSION, COMMAND_PERMISSION, NOC_PERMISSION
from apps.noc.commands import cancel_command, send_command, tenant_commands
from apps.tenants.models import User


class HasNocAccess(BasePermission):
    message = f"This needs the {NOC_PERMISSION} permission."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return bool(request.user.is_authenticated and request.user.has_perm(NOC_PERMISSION))


class CanActOnAlerts(BasePermission):
    message = f"Acting on alerts needs the {ALERT_ACTION_PERMISSION} permission."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return bool(
            request.user.is_authenticated and request.user.has_perm(ALERT_ACTION_PERMISSION)
        )


class CanSendCommands(BasePermission):
    message = f"Sending or cancelling device commands needs the {COMMAND_PERMISSION} permission."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return bool(request.user.is_authenticated and request.user.has_perm(COMMAND_PERMISSION))


class AlertConflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"


def caller_tenant_id(request: Request) -> int | None:
    user = request.user
    return user.tenant_id if isinstance(user, User) else None


def owning_tenant_id(request: Request) -> int:
    """The tenant a new row belongs to: always the caller's, never one named in the body."""
    tenant_id = caller_tenant_id(request)
    if tenant_id is None:
        raise PermissionDenied("A user without a tenant cannot own devices or geofences.")
    return tenant_id


def validated_query(serializer_class: type[Serializer[Any]], request: Request) -> dict[str, Any]:
    """Query parameters checked by a serializer; a bad one is a 400 that names it."""
    # A plain dict, not the QueryDict: DRF would read an absent boolean in form data as false.
    query = serializer_class(data=request.query_params.dict())
    query.is_valid(raise_exception=True)
    return dict(query.validated_data)


def alert_action(summary: str) -> Callable[[Callable[..., Response]], Any]:
    """A POST on one alert that moves it to another status (needs the alert action permission)."""

    def decorate(method: Callable[..., Response]) -> Any:
        as_action = action(
            detail=True, methods=["post"], permission_classes=[HasNocAccess, CanActOnAlerts]
        )(method)
        return extend_schema(
            summary=summary,
            request=AlertNoteSerializer,
            responses={
                200: AlertSerializer,
                409: OpenApiResponse(description="The alert's status does not allow this move."),
            },
        )(as_action)

    return decorate


ALERT_FILTER_LOOKUPS = {
    "status": "status",
    "severity": "severity",
    "alert_type": "alert_type",
    "device": "source_id",
    "site": "device__site",
}


def alert_search(text: str) -> Q:
    """What the NOC page's search box matches: the message, the device id or the site."""
    return (
        Q(message__icontains=text) | Q(source_id__icontains=text) | Q(device__site__icontains=text)
    )


@extend_schema_view(list=extend_schema(parameters=[AlertFilterSerializer]))
class AlertViewSet(viewsets.ReadOnlyModelViewSet[Alert]):
    """The tenant's alerts, newest first; one alert with its history of transitions."""

    permission_classes = [HasNocAccess]

    def get_serializer_class(self) -> type[BaseSerializer[Alert]]:
        return AlertDetailSerializer if self.action == "retrieve" else AlertSerializer

    def get_queryset(self) -> QuerySet[Alert]:
        tenant_id = caller_tenant_id(self.request)
        if tenant_id is None:
            return Alert.objects.none()
        alerts = (
            Alert.objects.filter(tenant_id=tenant_id)
            .select_related("device")
            .order_by("-last_seen", "-id")
        )
        if self.action == "retrieve":
            return alerts.prefetch_related("transitions__by")
        if self.action != "list":
            return alerts
        filters = validated_query(AlertFilterSerializer, self.request)
        active = filters.pop("active", None)
        if active is True:
            alerts = alerts.filter(status__in=ACTIVE_STATUSES)
        elif active is False:
            alerts = alerts.exclude(status__in=ACTIVE_STATUSES)
        if "search" in filters:
            alerts = alerts.filter(alert_search(filters.pop("search")))
        return alerts.filter(
            **{ALERT_FILTER_LOOKUPS[name]: value for name, value in filters.items()}
        )

    @alert_action("Acknowledge an alert")
    def acknowledge(self, request: Request, pk: str) -> Response:
        return self._move(request, AlertStatus.ACKNOWLEDGED)

    @alert_action("Start work on an alert (IN_PROGRESS)")
    def start(self, request: Request, pk: str) -> Response:
        return self._move(request, AlertStatus.IN_PROGRESS)

    @alert_action("Resolve an alert")
    def resolve(self, request: Request, pk: str) -> Response:
        return self._move(request, AlertStatus.RESOLVED)

    @alert_action("Close an alert as a false alarm")
    def false_alarm(self, request: Request, pk: str) -> Response:
        return self._move(request, AlertStatus.FALSE_ALARM)

    def _move(self, request: Request, to_status: str) -> Response:
        body = AlertNoteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        operator = request.user
        assert isinstance(operator, User)  # HasNocAccess let only authenticated users in
        with transaction.atomic():
            # Locked, so two operators acting at once cannot both move it from the same status.
            alert = get_object_or_404(
                self.get_queryset().select_for_update(of=("self",)), pk=self.kwargs["pk"]
            )
            try:
                event = transition(alert, to_status, by=operator, note=body.validated_data["note"])
            except TransitionError as exc:
                raise AlertConflict(str(exc)) from None
            broadcast_on_commit([event])
        return Response(AlertSerializer(alert).data)


READINGS_RESPONSE = PolymorphicProxySerializer(
    component_name="Reading",
    serializers=list(READING_SERIALIZERS.values()),
    resource_type_field_name=None,
    many=True,
)


@extend_schema_view(
    list=extend_schema(
        summary="The tenant's devices in natural order of id (burst-2 before burst-10)",
        parameters=[DeviceFilterSerializer],
    ),
    create=extend_schema(summary="Register a device in the caller's tenant"),
    partial_update=extend_schema(summary="Rename a device or move it to another site"),
)
class DeviceViewSet(
    mixins.CreateModelMixin, mixins.UpdateModelMixin, viewsets.ReadOnlyModelViewSet[Device]
):
    """The tenant's devices; the detail adds the latest telemetry, location and sensor reading.

    Reading needs the NOC permission; registering and editing also the model's permissions
    (devices.add_device, devices.change_device), which a tenant's administrator grants. There
    is no DELETE: a device's readings, alerts and commands hang on it (the admin removes one).
    """

    permission_classes = [HasNocAccess, DjangoModelPermissions]
    lookup_field = "device_id"
    lookup_value_regex = "[^/]+"
    http_method_names = ["get", "post", "patch", "head", "options"]

    def get_queryset(self) -> QuerySet[Device]:
        tenant_id = caller_tenant_id(self.request)
        if tenant_id is None:
            return Device.objects.none()
        devices = Device.objects.filter(tenant_id=tenant_id).order_by("device_id")
        if self.action != "list":
            return devices
        filters = validated_query(DeviceFilterSerializer, self.request)
        search = filters.pop("search", "")
        devices = devices.filter(**filters)
        return search_devices(devices, search) if search else devices

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        page = self.paginate_queryset(NaturallyOrdered(self.get_queryset()))
        assert page is not None  # REST_FRAMEWORK sets DEFAULT_PAGINATION_CLASS
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    def get_serializer_class(self) -> type[BaseSerializer[Device]]:
        return DeviceDetailSerializer if self.action == "retrieve" else DeviceSerializer

    def get_permissions(self) -> Sequence[Any]:
        if self.action == "send_command":  # a POST, but it registers nothing
            return [HasNocAccess(), CanSendCommands()]
        return super().get_permissions()

    def perform_create(self, serializer: BaseSerializer[Device]) -> None:
        owning_tenant_id(self.request)  # refuses a user without a tenant
        operator = self.request.user
        assert isinstance(operator, User)
        serializer.save(tenant=operator.tenant)

    @extend_schema(
        summary="The device's commands, newest first",
        responses=CommandSerializer(many=True),
    )
    @action(detail=True, methods=["get"])
    def commands(self, request: Request, device_id: str) -> Response:
        device = self.get_object()
        paginator = self.paginator
        assert paginator is not None
        commands = tenant_commands(device.tenant_id).filter(device=device).order_by("-created_at")
        page = paginator.paginate_queryset(commands, request, view=self)
        return paginator.get_paginated_response(CommandSerializer(page, many=True).data)

    @extend_schema(
        summary="Send a command to the device (stored QUEUED, then followed to its end)",
        request=CommandRequestSerializer,
        responses={201: CommandDetailSerializer},
    )
    @commands.mapping.post
    def send_command(self, request: Request, device_id: str) -> Response:
        device = self.get_object()  # of the caller's tenant: another's is a 404
        body = CommandRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        operator = request.user
        assert isinstance(operator, User)
        fields = body.validated_data
        command = send_command(
            operator, device, fields["command"], fields["params"], fields.get("ttl_seconds")
        )
        shown = tenant_commands(device.tenant_id).prefetch_related("transitions__by")
        return Response(
            CommandDetailSerializer(shown.get(pk=command.pk)).data, status=status.HTTP_201_CREATED
        )

    @extend_schema(
        summary="A device's readings of one kind, newest first, in [since, until)",
        parameters=[ReadingQuerySerializer],
        responses=READINGS_RESPONSE,
    )
    @action(detail=True, methods=["get"])
    def readings(self, request: Request, device_id: str) -> Response:
        device = self.get_object()
        query = validated_query(ReadingQuerySerializer, request)
        serializer_class = READING_SERIALIZERS[query["kind"]]
        readings = readings_of(serializer_class, device)
        if "since" in query:
            readings = readings.filter(recorded_at__gte=query["since"])
        if "until" in query:
            readings = readings.filter(recorded_at__lt=query["until"])
        paginator = self.paginator  # typed for devices, so used directly for readings
        assert paginator is not None  # REST_FRAMEWORK sets DEFAULT_PAGINATION_CLASS
        page = paginator.paginate_queryset(readings, request, view=self)
        return paginator.get_paginated_response(serializer_class(page, many=True).data)


@extend_schema_view(list=extend_schema(parameters=[GeofenceFilterSerializer]))
class GeofenceViewSet(viewsets.ModelViewSet[Geofence]):
    """The tenant's geofences, the areas its guards must stay in (a GPS position outside every
    active one raises GEOFENCE_VIOLATION). Reading needs the NOC permission; creating, changing
    and deleting also the model's permissions (devices.add_/change_/delete_geofence)."""

    serializer_class = GeofenceSerializer
    permission_classes = [HasNocAccess, DjangoModelPermissions]
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self) -> QuerySet[Geofence]:
        tenant_id = caller_tenant_id(self.request)
        if tenant_id is None:
            return Geofence.objects.none()
        fences = Geofence.objects.filter(tenant_id=tenant_id).order_by("name", "id")
        if self.action != "list":
            return fences
        return fences.filter(**validated_query(GeofenceFilterSerializer, self.request))

    def perform_create(self, serializer: BaseSerializer[Geofence]) -> None:
        serializer.save(tenant_id=owning_tenant_id(self.request))


class CommandConflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"


@extend_schema_view(list=extend_schema(parameters=[CommandFilterSerializer]))
class CommandViewSet(viewsets.ReadOnlyModelViewSet[DeviceCommand]):
    """The tenant's device commands, newest first; one with its history of states."""

    permission_classes = [HasNocAccess]
    lookup_field = "pk"
    lookup_value_regex = "[0-9a-fA-F-]{32,36}"

    def get_queryset(self) -> QuerySet[DeviceCommand]:
        commands = tenant_commands(caller_tenant_id(self.request)).order_by("-created_at")
        if self.action == "list":
            filters = validated_query(CommandFilterSerializer, self.request)
            if "device" in filters:
                filters["device__device_id"] = filters.pop("device")
            return commands.filter(**filters)
        return commands.prefetch_related("transitions__by")

    def get_serializer_class(self) -> type[BaseSerializer[DeviceCommand]]:
        return CommandSerializer if self.action == "list" else CommandDetailSerializer

    def get_object(self) -> DeviceCommand:
        try:  # an id the router took that is still no UUID (too many dashes) is not found
            return super().get_object()
        except DjangoValidationError:
            raise NotFound from None

    @extend_schema(
        summary="Cancel a command still QUEUED",
        request=None,
        responses={
            200: CommandDetailSerializer,
            409: OpenApiResponse(description="The command is no longer QUEUED, or is being sent."),
        },
    )
    @action(detail=True, methods=["post"], permission_classes=[HasNocAccess, CanSendCommands])
    def cancel(self, request: Request, pk: str) -> Response:
        operator = request.user
        assert isinstance(operator, User)
        command = self.get_object()
        try:
            cancel_command(operator, tenant_commands(operator.tenant_id), command.pk)
        except CommandStateError as exc:
            raise CommandConflict(str(exc)) from None
        return Response(CommandDetailSerializer(self.get_object()).data)
