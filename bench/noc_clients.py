"""Real NOC dashboards: one WebSocket client per tenant through Daphne, as an operator connects.

Each client authenticates as the NOC does (`Authorization: Bearer <JWT>` at the handshake; never
a token in the URL), waits for its snapshot, then records what its tenant's stream brings:
the messages each `telemetry_update` counts, and when each `critical_alert` arrived: the first
(the subscriber's provisional one, apps/mqtt/announce.py) and the stored one (with its id). It
acknowledges what it read about once a second (`{"type": "ack", "seq": n}`), well inside the
consumer's message-rate limit, so the flow control never cuts a reading client off. The clients
run in a thread with their own event loop; the counts are read from the bench's thread.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter, defaultdict
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

ACK_INTERVAL_SECONDS = 1.0


class NocClientError(RuntimeError):
    pass


class NocClients:
    def __init__(self, port: int, tokens: dict[int, str]) -> None:
        self.port = port
        self.tokens = tokens  # tenant id -> access token of one of its operators
        self._lock = threading.Lock()
        self._telemetry: Counter[int] = Counter()
        self._progress: list[tuple[float, int]] = []  # (arrival, messages counted so far)
        # source id -> monotonic arrival times of its critical_alert events, provisional or
        # stored; and of the stored ones alone (more than one: a duplicate effect)
        self.critical_alerts: dict[str, list[float]] = defaultdict(list)
        self.stored_alerts: dict[str, list[float]] = defaultdict(list)
        self.other_tenants_alerts: list[tuple[int, str]] = []
        self.closed: list[str] = []
        self._expected_sources: dict[int, set[str]] = {}
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="noc-clients", daemon=True)

    # --- read from the bench's thread -------------------------------------------------------

    def telemetry_messages(self) -> Counter[int]:
        """Messages counted by the `telemetry_update` events so far, by tenant (tests/ledger)."""
        with self._lock:
            return Counter(self._telemetry)

    def total_telemetry_messages(self) -> int:
        with self._lock:
            return sum(self._telemetry.values())

    def reached_at(self, count: int) -> float | None:
        """When the telemetry events had counted `count` messages in all (None: not yet)."""
        with self._lock:
            return next((at for at, total in self._progress if total >= count), None)

    def expect_alerts_from(self, tenant: int, sources: set[str]) -> None:
        """Sources whose alerts belong to `tenant`: one shown to another tenant is a leak."""
        self._expected_sources[tenant] = sources

    def alert_arrival(self, source: str) -> float | None:
        with self._lock:
            times = self.critical_alerts.get(source)
            return times[0] if times else None

    def stored_alert_arrival(self, source: str) -> float | None:
        with self._lock:
            times = self.stored_alerts.get(source)
            return times[0] if times else None

    def duplicate_alerts(self) -> int:
        with self._lock:
            return sum(len(times) - 1 for times in self.stored_alerts.values() if times)

    # --- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> NocClients:
        self._thread.start()
        if not self._ready.wait(60):
            raise NocClientError("the NOC clients did not get their snapshots within 60 s")
        if self._error is not None:
            raise NocClientError(f"a NOC client could not connect: {self._error}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        url = f"ws://127.0.0.1:{self.port}/ws/noc/dashboard/"
        sockets = []
        try:
            for tenant, token in self.tokens.items():
                ws = await connect(
                    url, additional_headers={"Authorization": f"Bearer {token}"}, max_size=None
                )
                sockets.append((tenant, ws))
                await self._until_snapshot(tenant, ws)
            self._ready.set()
            readers = [asyncio.create_task(self._read(t, ws)) for t, ws in sockets]
            await self._stop.wait()
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
        finally:
            for _tenant, ws in sockets:
                await ws.close()

    async def _until_snapshot(self, tenant: int, ws: ClientConnection) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
            except ConnectionClosed as closed:
                raise NocClientError(
                    f"tenant {tenant}'s NOC client was closed with {closed.rcvd}: "
                    "look in the Daphne log (var/log/daphne.log of the scratch dir)"
                ) from None
            if frame.get("type") == "snapshot":
                return
        raise NocClientError(f"tenant {tenant}'s NOC client got no snapshot within 30 s")

    async def _read(self, tenant: int, ws: ClientConnection) -> None:
        seq = acked = 0
        next_ack = time.monotonic() + ACK_INTERVAL_SECONDS
        try:
            while True:
                try:
                    raw = await asyncio.wait_for(ws.recv(), ACK_INTERVAL_SECONDS)
                except TimeoutError:
                    raw = None
                now = time.monotonic()
                if raw is not None:
                    frame = json.loads(raw)
                    seq = max(seq, int(frame.get("seq", 0)))
                    self._record(tenant, frame, now)
                if seq > acked and now >= next_ack:
                    await ws.send(json.dumps({"type": "ack", "seq": seq}))
                    acked, next_ack = seq, now + ACK_INTERVAL_SECONDS
        except ConnectionClosed as closed:
            self.closed.append(f"tenant {tenant}: closed with {closed.rcvd}")
        except Exception as exc:
            self.closed.append(f"tenant {tenant}: client failed: {exc!r}")

    def _record(self, tenant: int, frame: dict[str, Any], now: float) -> None:
        kind = frame.get("type")
        with self._lock:
            if kind == "telemetry_update":
                self._telemetry[tenant] += int(frame.get("messages", 0))
                total = self._progress[-1][1] if self._progress else 0
                self._progress.append((now, total + int(frame.get("messages", 0))))
            elif kind == "critical_alert":
                source = str(frame.get("source_id"))
                expected = self._expected_sources.get(tenant)
                if expected is not None and source not in expected:
                    self.other_tenants_alerts.append((tenant, source))
                self.critical_alerts[source].append(now)
                if not frame.get("provisional"):
                    self.stored_alerts[source].append(now)
