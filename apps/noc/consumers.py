"""`/ws/noc/dashboard/`: one tenant's live stream of alerts, device states and telemetry.

Authentication happens before anything is sent or any group joined: a JWT in the
`Authorization: Bearer` header, or the session of a logged-in dashboard user whose browser
sent an allowed Origin. Refusals close with 4401 (who are you?) or 4403 (not for you); the
handshake completes only to carry that code. There is one handler per apps.core.events.EventType,
named after it. A connection has no channel-layer channel of its own: the process's feed of its
tenant's group and of its user's (feeds.py) call its `deliver`.

Access is not granted for the life of the connection: it closes when its token expires (4401),
when a re-check every NOC_REAUTH_SECONDS would refuse it now (4401/4403: the session ended, the
user was deactivated, moved tenant or lost the permission), and at once when its user's access
changes (4410, apps/noc/revocation.py, through the user's group). The re-check, like the renewal
of the connection's count in Redis and the telemetry flush, is done for all of a process's
connections at once (rounds.py): one task and one database call, not one per connection.

Flow control: Daphne's send never blocks, so a client that stops reading (asleep, a dead link)
would have it buffer every event in memory. The client acknowledges what it has handled
(`{"type": "ack", "seq": n}`); once more than NOC_MAX_UNACKED_BYTES sent after the snapshot are
unacknowledged, the client is cut off: it is counted (`noc_clients_cut_off_total`), what is
left for it is dropped and counted (`noc_events_dropped_total{reason="client_behind"}`) and it
is closed with 4408, to reconnect for a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from array import array
from bisect import bisect_right
from typing import Any

import msgspec
import structlog
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import transaction
from django.http.cookie import parse_cookie
from pydantic import ValidationError

from apps.alerts.models import ACTIVE_STATUSES, Alert, AlertStatus
from apps.alerts.services import TransitionError, serialize_alert, transition
from apps.core import metrics
from apps.core.events import EventType, tenant_group
from apps.core.outbox import broadcast_on_commit
from apps.devices.commands import CommandRefused, CommandStateError
from apps.devices.models import Device, DeviceCommand
from apps.devices.services import device_state
from apps.noc import auth, feeds, limits, rounds
from apps.noc.commands import cancel_command, send_command, tenant_commands
from apps.noc.messages import (
    Ack,
    AcknowledgeAlert,
    CancelCommand,
    Filters,
    Heartbeat,
    ResolveAlert,
    SendCommand,
    Subscribe,
    Unsubscribe,
    client_message,
)
from apps.noc.revocation import REVOKED, user_group
from apps.tenants.models import User

log = structlog.get_logger(__name__)

CLOSE_TOO_MANY_MESSAGES = 4429  # also: more connects a minute than NOC_MAX_CONNECTS_PER_MINUTE
CLOSE_TOO_MANY_SOCKETS = 4430  # the user holds NOC_MAX_SOCKETS_PER_USER connections already
CLOSE_CLIENT_BEHIND = 4408
CLOSE_SERVER_ERROR = 4500
# Application codes: Daphne (autobahn) may only send 1000 or 3000-4999.
CLOSE_MESSAGE_TOO_BIG = 4009
SNAPSHOT_ALERTS = 500
SNAPSHOT_DEVICES = 2000


def _bearer_token(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            return auth.bearer_token(value.decode("latin-1"))
    return None


def _has_origin(scope: dict[str, Any]) -> bool:
    return any(name.lower() == b"origin" for name, _ in scope.get("headers", []))


class Unacknowledged:
    """The messages sent to a client that it has not acknowledged yet: their seq and size.

    Kept in arrays of 8-byte integers: every client holds one, and an empty deque alone is
    760 bytes.
    """

    __slots__ = ("bytes", "seqs", "sizes")

    def __init__(self) -> None:
        self.seqs = array("q")  # ascending
        self.sizes = array("q")
        self.bytes = 0

    def add(self, seq: int, size: int) -> None:
        self.seqs.append(seq)
        self.sizes.append(size)
        self.bytes += size

    def acknowledge(self, seq: int) -> None:
        done = bisect_right(self.seqs, seq)
        if done:
            self.bytes -= sum(self.sizes[:done])
            del self.seqs[:done], self.sizes[:done]


class MessageRate:
    """Whether a client sent more than `limit` messages in the last `window` seconds.

    A ring of the times of its last limit + 1 messages, made at its first message: over the
    limit when the oldest of them is within the window.
    """

    __slots__ = ("count", "times")

    def __init__(self) -> None:
        self.times: array[float] | None = None
        self.count = 0

    def over(self, now: float, limit: int, window: float = 60.0) -> bool:
        if self.times is None or len(self.times) != limit + 1:
            self.times = array("d", [-math.inf]) * (limit + 1)
        self.times[self.count % len(self.times)] = now
        self.count += 1
        return now - self.times[self.count % len(self.times)] <= window


def _session_key(scope: dict[str, Any]) -> str | None:
    """The dashboard's session cookie, read from the handshake as channels' CookieMiddleware
    does; the session itself is read with the user (auth.admit_to_noc), not kept per socket."""
    for name, value in scope.get("headers", []):
        if name.lower() == b"cookie":
            return parse_cookie(value.decode("latin-1")).get(settings.SESSION_COOKIE_NAME) or None
    return None


def _credentials(scope: dict[str, Any]) -> auth.Credentials:
    """What the client presented; raises auth.TokenRefusedError for what is never accepted."""
    if b"token=" in scope.get("query_string", b"") or b"jwt=" in scope.get("query_string", b""):
        raise auth.TokenRefusedError("tokens are not accepted in the URL; use the header")
    raw = _bearer_token(scope)
    if raw is not None:
        return auth.Credentials(token=raw)
    session_key = _session_key(scope)
    if session_key is not None and not _has_origin(scope):
        raise auth.TokenRefusedError("a session needs the browser's Origin header")
    return auth.Credentials(session_key=session_key)


@database_sync_to_async
def _admit(
    credentials: list[auth.Credentials],
) -> dict[auth.Credentials, auth.Admission | auth.TokenRefusedError]:
    """Read afresh from the database each time (at connect and at each re-check), never from what
    the connection cached: the user, their permissions, the session."""
    return auth.admit_to_noc(credentials)


# Every frame's JSON, here encoded by msgspec, not `json.dumps`: a telemetry event's devices,
# each encoded on its own, were a seventh of Daphne's time under the bench's pipeline
# (py-spy). Compact UTF-8 JSON, a float NaN or infinity as null.
_encoder = msgspec.json.Encoder()


def _json(value: Any) -> str:
    return _encoder.encode(value).decode()


def _event_json(event: dict[str, Any]) -> str:
    """The event's data as JSON, encoded once for all the clients of this process (the feed
    hands each the same message)."""
    encoded = event.get("_json")
    if encoded is None:
        encoded = event["_json"] = _json(event["data"])
    return str(encoded)


def _status_devices(event: dict[str, Any]) -> list[dict[str, Any]]:
    """The devices of a device_status event; one, if a release before they were grouped per
    tenant sent it (an outbox resend across an upgrade)."""
    data = event["data"]
    devices: list[dict[str, Any]] = data.get("devices", [data])
    return devices


def _devices_json(event: dict[str, Any], devices: list[dict[str, Any]]) -> list[str]:
    """Each of the event's `devices` as JSON, encoded once for all the clients."""
    encoded = event.get("_devices_json")
    if encoded is None:
        encoded = event["_devices_json"] = [_json(d) for d in devices]
    return list(encoded)


def _frame(message_type: str, seq: int, data_json: str) -> str:
    """`{"type": …, "seq": …, **data}` from data already encoded."""
    head = f'{{"type": "{message_type}", "seq": {seq}'
    return f"{head}}}" if data_json == "{}" else f"{head}, {data_json[1:]}"


EVERYTHING = Filters()  # frozen: one for every client that has not narrowed its stream
# What the feeds bring: the tenant's events, the user's revocation.
FEED_MESSAGES = frozenset({*EventType, REVOKED})


async def _recheck_access(clients: list[NocDashboardConsumer]) -> None:
    """Close each client a connect with its credentials would now refuse (NOC_REAUTH_SECONDS).

    Catches what no revocation message reported: a change made past Django's signals, or one
    whose message was lost (Redis down, another host).
    """
    try:
        verdicts = await _admit([client.credentials for client in clients])
    except Exception as exc:  # the database is unreachable: keep serving, ask again
        log.warning("NOC access not re-checked", connections=len(clients), error=str(exc))
        return
    for client in clients:
        verdict = verdicts[client.credentials]
        if isinstance(verdict, auth.Admission) and (
            verdict.user.pk != client.user.pk or verdict.user.tenant_id != client.tenant_id
        ):
            verdict = auth.TokenRefusedError("the user's tenant changed", auth.CLOSE_FORBIDDEN)
        if isinstance(verdict, auth.TokenRefusedError) and client.joined:
            try:
                await client.close_revoked(str(verdict), verdict.close_code)
            except Exception:  # the others refused in this round are closed all the same
                log.exception("could not close a NOC connection whose access ended")


async def _renew_sockets(clients: list[NocDashboardConsumer]) -> None:
    """Keep these connections counted against their users' limits while they are open."""
    await asyncio.to_thread(limits.renew, [(c.user.pk, c.socket_id) for c in clients])


async def _flush_telemetry(clients: list[NocDashboardConsumer]) -> None:
    for client in clients:
        try:
            await client.flush_telemetry()
        except Exception:
            log.exception("a NOC client's telemetry flush failed")


access_checks: rounds.Round[NocDashboardConsumer] = rounds.Round(
    "access re-check", lambda: settings.NOC_REAUTH_SECONDS, _recheck_access
)
socket_renewals: rounds.Round[NocDashboardConsumer] = rounds.Round(
    "socket renewal", lambda: limits.SOCKET_RENEW_SECONDS, _renew_sockets
)
telemetry_flushes: rounds.Batch[NocDashboardConsumer] = rounds.Batch(
    "telemetry flush", lambda: settings.NOC_TELEMETRY_MIN_INTERVAL_MS / 1000, _flush_telemetry
)


class NocDashboardConsumer(AsyncWebsocketConsumer):
    # No channel of its own: its channel-layer messages come through the feeds of this process
    # (apps/noc/feeds.py), one per group for all the clients in it.
    channel_layer_alias = None
    user: User
    tenant_id: int
    credentials: auth.Credentials

    async def dispatch(self, message: dict[str, Any]) -> None:
        """channels' dispatch, less its close_old_connections before every message (a thread
        hop per message): every database access here goes through database_sync_to_async,
        which does it itself."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def deliver(self, message: dict[str, Any]) -> None:
        """A message of the user's or the tenant's group, from this process's feed of it."""
        if self.backlog is not None:  # the snapshot is not sent yet
            self.backlog.append(message)
        else:
            await self._handle(message)

    async def _handle(self, message: dict[str, Any]) -> None:
        if message["type"] not in FEED_MESSAGES:
            raise ValueError(f"not a NOC message: {message['type']!r}")
        await getattr(self, get_handler_name(message))(message)

    async def feed_lost(self) -> None:
        """A feed of this client went deaf: better a reconnect (and a fresh snapshot)."""
        await self.close(code=CLOSE_SERVER_ERROR)

    async def connect(self) -> None:
        self.seq = 0
        self.unacknowledged = Unacknowledged()
        self.cut_off = False
        self.filters: Filters | None = EVERYTHING
        self.rate = MessageRate()
        self.expiry: asyncio.TimerHandle | None = None
        self.closing: asyncio.Task[None] | None = None
        self.pending_telemetry: dict[str, str] = {}  # device id -> its latest state, as JSON
        self.pending_messages = 0
        self.joined = False
        self.admitted = False
        self.backlog: list[dict[str, Any]] | None = []  # events that came before the snapshot
        self.socket_id = uuid.uuid4().hex  # this connection, in the per-user limits
        try:
            self.credentials = _credentials(self.scope)
            admission = (await _admit([self.credentials]))[self.credentials]
            if isinstance(admission, auth.TokenRefusedError):
                raise admission
            self.user, expires_at = admission.user, admission.expires_at
        except auth.TokenRefusedError as refusal:
            log.info("NOC connection refused", reason=str(refusal), code=refusal.close_code)
            await self.accept()
            await self.close(code=refusal.close_code)
            return
        assert self.user.tenant_id is not None
        over = await asyncio.to_thread(limits.admit, self.user.pk, self.socket_id)
        if over is not None:
            code = CLOSE_TOO_MANY_SOCKETS if over == "sockets_per_user" else CLOSE_TOO_MANY_MESSAGES
            log.warning(
                "NOC connection refused: over a per-user limit",
                user=self.user.username,
                limit=over,
                code=code,
                hint="NOC_MAX_SOCKETS_PER_USER, NOC_MAX_CONNECTS_PER_MINUTE",
            )
            await self.accept()
            await self.close(code=code)
            return
        self.admitted = True
        self.tenant_id = self.user.tenant_id
        # The user's group carries revocations (apps/noc/revocation.py), the tenant's the events.
        self.feed_groups = [user_group(self.user.pk), tenant_group(self.tenant_id)]
        await self.accept()
        metrics.WEBSOCKET_CONNECTIONS.inc()
        self.joined = True
        await self.send(text_data=_json({"type": "connected", "tenant_id": self.tenant_id}))
        for group in self.feed_groups:
            await feeds.join(group, self)
        socket_renewals.add(self)
        access_checks.add(self)
        if expires_at is not None:
            self.expiry = asyncio.get_running_loop().call_later(
                max(0.0, expires_at - time.time()), self._expired
            )
        await self._send_event("snapshot", await self._snapshot(), flow_controlled=False)
        while self.backlog:  # what came meanwhile, in order; None only once it is empty
            await self._handle(self.backlog.pop(0))
        self.backlog = None
        log.info("NOC client connected", user=self.user.username, tenant_id=self.tenant_id)

    async def disconnect(self, code: int) -> None:
        socket_renewals.discard(self)
        access_checks.discard(self)
        telemetry_flushes.discard(self)
        if self.expiry is not None:
            self.expiry.cancel()
        if self.closing is not None:
            self.closing.cancel()
        if self.admitted:
            self.admitted = False
            await asyncio.to_thread(limits.release, self.user.pk, self.socket_id)
        if self.joined:
            self.joined = False
            metrics.WEBSOCKET_CONNECTIONS.dec()
            for group in self.feed_groups:
                await feeds.leave(group, self)

    # --- access -----------------------------------------------------------------------------

    def _expired(self) -> None:
        self.closing = asyncio.create_task(self._close_expired())

    async def _close_expired(self) -> None:
        log.info("NOC token expired; closing", user=self.user.username)
        await self._send_event("error", {"error": "token expired; reconnect with a new one"})
        await self.close(code=auth.CLOSE_UNAUTHENTICATED)

    async def access_revoked(self, event: dict[str, Any]) -> None:
        """The user's access changed (apps/noc/revocation.py): reconnect to be checked again."""
        await self.close_revoked(event["reason"], auth.CLOSE_REVOKED)

    async def close_revoked(self, reason: str, code: int) -> None:
        access_checks.discard(self)
        log.info("NOC access withdrawn; closing", user=self.user.username, reason=reason, code=code)
        await self._send_event("error", {"error": f"access withdrawn: {reason}"})
        await self.close(code=code)

    # --- client → server --------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        size = len(text_data.encode()) if text_data is not None else len(bytes_data or b"")
        if size > settings.NOC_MAX_FRAME_BYTES:
            await self.close(code=CLOSE_MESSAGE_TOO_BIG)
            return
        now = time.monotonic()
        if self.rate.over(now, settings.NOC_MAX_MESSAGES_PER_MINUTE):
            log.warning("NOC client over its message rate; closing", user=self.user.username)
            await self.close(code=CLOSE_TOO_MANY_MESSAGES)
            return
        if text_data is None:
            await self._send_event("error", {"error": "send JSON text frames"})
            return
        try:
            message = client_message.validate_json(text_data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "message"
            await self._send_event("error", {"error": f"{where}: {first['msg']}"})
            return
        if isinstance(message, Ack):
            self.unacknowledged.acknowledge(message.seq)
        elif isinstance(message, Heartbeat):
            await self._send_event("heartbeat_ack", {"server_time": time.time()})
        elif isinstance(message, Subscribe):
            self.filters = message.filters
            await self._send_event(
                "subscribed", {"filters": message.filters.model_dump(mode="json")}
            )
        elif isinstance(message, Unsubscribe):
            self.filters = None
            await self._send_event("unsubscribed", {})
        elif isinstance(message, AcknowledgeAlert | ResolveAlert):
            await self._act_on_alert(message)
        elif isinstance(message, SendCommand | CancelCommand):
            await self._act_on_command(message)

    async def _act_on_alert(self, message: AcknowledgeAlert | ResolveAlert) -> None:
        target = (
            AlertStatus.ACKNOWLEDGED
            if isinstance(message, AcknowledgeAlert)
            else AlertStatus.RESOLVED
        )
        error = await self._transition(message.alert_id, target, message.note)
        if error:
            await self._send_event("error", {"error": error, "alert_id": message.alert_id})
        else:
            await self._send_event(
                "action_done", {"action": message.type, "alert_id": message.alert_id}
            )

    @database_sync_to_async
    def _transition(self, alert_id: int, target: str, note: str) -> str | None:
        if not self.user.has_perm(auth.ALERT_ACTION_PERMISSION):
            return f"you lack {auth.ALERT_ACTION_PERMISSION}"
        with transaction.atomic():
            alert = (
                # Only the alert's row: its device is an outer join, which PostgreSQL cannot lock.
                Alert.objects.select_for_update(of=("self",))
                .select_related("device")
                .filter(pk=alert_id, tenant_id=self.tenant_id)
                .first()
            )
            if alert is None:
                return "no such alert"
            try:
                event = transition(alert, target, by=self.user, note=note)
            except TransitionError as exc:
                return str(exc)
            broadcast_on_commit([event])
        return None

    async def _act_on_command(self, message: SendCommand | CancelCommand) -> None:
        """Its states then come as command_updated events, to every dashboard of the tenant."""
        outcome = await self._command(message)
        if isinstance(outcome, str):
            await self._send_event("error", {"error": outcome, "action": message.type})
        else:
            done = {"action": message.type, "command_id": str(outcome.pk)}
            await self._send_event("action_done", done)

    @database_sync_to_async
    def _command(self, message: SendCommand | CancelCommand) -> DeviceCommand | str:
        if not self.user.has_perm(auth.COMMAND_PERMISSION):
            return f"you lack {auth.COMMAND_PERMISSION}"
        try:
            if isinstance(message, CancelCommand):
                commands = tenant_commands(self.tenant_id)
                return cancel_command(self.user, commands, message.command_id)
            device = Device.objects.filter(
                tenant_id=self.tenant_id, device_id=message.device_id
            ).first()
            if device is None:
                return "no such device"
            return send_command(
                self.user, device, message.command, message.params, message.ttl_seconds
            )
        except DeviceCommand.DoesNotExist:
            return "no such command"
        except (CommandRefused, CommandStateError) as exc:
            return str(exc)

    # --- server → client: handlers named after the event types ---------------------------------

    async def critical_alert(self, event: dict[str, Any]) -> None:
        if self._alert_wanted(event["data"]):
            await self._send_frame("critical_alert", _event_json(event))

    async def alert_updated(self, event: dict[str, Any]) -> None:
        if self._alert_wanted(event["data"]):
            await self._send_frame("alert_updated", _event_json(event))

    async def device_status(self, event: dict[str, Any]) -> None:
        """The devices of a tenant whose status changed in one batch, those the client wants."""
        devices = _status_devices(event)
        wanted = [
            device_json
            for device, device_json in zip(devices, _devices_json(event, devices), strict=True)
            if self._device_wanted(device)
        ]
        if wanted:
            await self._send_frame("device_status", f'{{"devices": [{", ".join(wanted)}]}}')

    async def anomaly_detected(self, event: dict[str, Any]) -> None:
        if self._alert_wanted(event["data"]):
            await self._send_frame("anomaly_detected", _event_json(event))

    async def command_updated(self, event: dict[str, Any]) -> None:
        if self._device_wanted(event["data"]):
            await self._send_frame("command_updated", _event_json(event))

    async def task_progress(self, event: dict[str, Any]) -> None:
        if self.filters is not None:
            await self._send_frame("task_progress", _event_json(event))

    async def telemetry_update(self, event: dict[str, Any]) -> None:
        """Conflated per device: a client gets the latest values at most every N ms."""
        devices = event["data"].get("devices", [])
        wanted = 0
        for device, device_json in zip(devices, _devices_json(event, devices), strict=True):
            if self._device_wanted(device):
                self.pending_telemetry[device["device_id"]] = device_json
                wanted += 1
        if wanted:
            self.pending_messages += int(event["data"].get("messages", wanted))
        if self.pending_telemetry:
            telemetry_flushes.add(self)  # this process's one timer sends it (rounds.Batch)

    async def flush_telemetry(self) -> None:
        devices, self.pending_telemetry = list(self.pending_telemetry.values()), {}
        messages, self.pending_messages = self.pending_messages, 0
        if devices and self.joined:
            data_json = f'{{"devices": [{", ".join(devices)}], "messages": {messages}}}'
            await self._send_frame("telemetry_update", data_json)

    # --- helpers ----------------------------------------------------------------------------

    def _alert_wanted(self, alert: dict[str, Any]) -> bool:
        if self.filters is None:
            return False
        filters = self.filters
        return (
            (filters.site is None or alert.get("site") == filters.site)
            and (filters.severity is None or alert.get("severity") in filters.severity)
            and (filters.device is None or alert.get("source_id") == filters.device)
        )

    def _device_wanted(self, device: dict[str, Any]) -> bool:
        if self.filters is None:
            return False
        filters = self.filters
        return (filters.site is None or device.get("site") == filters.site) and (
            filters.device is None or device.get("device_id") == filters.device
        )

    async def _send_event(
        self, message_type: str, data: dict[str, Any], *, flow_controlled: bool = True
    ) -> None:
        await self._send_frame(message_type, _json(data), flow_controlled=flow_controlled)

    async def _send_frame(
        self, message_type: str, data_json: str, *, flow_controlled: bool = True
    ) -> None:
        """Number and send one message; the snapshot alone is exempt from the flow control."""
        if not self.cut_off and self.unacknowledged.bytes > settings.NOC_MAX_UNACKED_BYTES:
            await self._cut_off()
        if self.cut_off:
            metrics.NOC_EVENTS_DROPPED.labels(reason="client_behind").inc()
            return
        self.seq += 1
        frame = _frame(message_type, self.seq, data_json)
        if flow_controlled:
            # Bytes on the wire: a frame is sent as UTF-8, and most are ASCII.
            size = len(frame) if frame.isascii() else len(frame.encode())
            self.unacknowledged.add(self.seq, size)
        with contextlib.suppress(Exception):  # the client may be gone already
            await self.send(text_data=frame)

    async def _cut_off(self) -> None:
        self.cut_off = True
        metrics.NOC_CLIENTS_CUT_OFF.inc()
        log.warning(
            "NOC client behind; closing it",
            user=self.user.username,
            client=self.scope.get("client"),
            unacknowledged_bytes=self.unacknowledged.bytes,
            hint="it did not acknowledge (ack) what it was sent: asleep, a dead or slow link; "
            "the limit is NOC_MAX_UNACKED_BYTES",
        )
        await self.close(code=CLOSE_CLIENT_BEHIND)

    @database_sync_to_async
    def _snapshot(self) -> dict[str, Any]:
        alerts = (
            Alert.objects.filter(tenant_id=self.tenant_id, status__in=ACTIVE_STATUSES)
            .select_related("device")
            .order_by("-last_seen")[:SNAPSHOT_ALERTS]
        )
        devices = Device.objects.filter(tenant_id=self.tenant_id)[:SNAPSHOT_DEVICES]
        return {
            "alerts": [serialize_alert(alert) for alert in alerts],
            "devices": [device_state(device) for device in devices],
        }
