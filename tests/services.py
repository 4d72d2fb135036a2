"""Real services for the tests: Redis, Mosquitto, Celery workers, the subscriber, the stack.

Each is a real process on a free port, started on demand and stopped (with its children) at the
end. Waits poll a condition until a deadline; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from tests.environment import REDIS_PASSWORD, free_port, redis_url

ROOT = Path(__file__).resolve().parent.parent
SBIN = "/usr/sbin:/usr/local/sbin:/sbin"


def executable(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=SBIN)
    if path is None:
        raise RuntimeError(f"{name} is not installed; `make test` installs it with apt-get")
    return path


def wait_for(
    condition: Callable[[], Any], *, timeout: float, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll `condition` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
        except Exception as exc:
            last_error = exc
        else:
            if result:
                return result
        time.sleep(interval)
    detail = f" (last error: {last_error!r})" if last_error else ""
    raise TimeoutError(f"timed out after {timeout} s waiting for {what or condition}{detail}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


class Service:
    """A child process with its log file; `stop()` ends it and every process it started."""

    def __init__(self, name: str, argv: list[str], log_path: Path, **popen: Any) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=ROOT,
            **popen,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            self.process.send_signal(signum)

    def stop(self, timeout: float = 15) -> None:
        stop_all([self], timeout)


def stop_all(services: Iterable[Service], timeout: float = 15) -> None:
    """SIGTERM to every service at once, then wait for each and every process it started (killed
    if still there after `timeout`): a session's five workers shut down together, not in turn."""
    stopping = []
    for service in services:
        try:
            root = psutil.Process(service.pid)
            family = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        service.signal(signal.SIGTERM)
        stopping.append((service, family))
    deadline = time.monotonic() + timeout
    for service, family in stopping:
        try:
            service.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.process.wait(5)
        _gone, alive = psutil.wait_procs(family, timeout=5)
        for process in alive:
            process.kill()
        service._log.close()


def start_redis(
    port: int,
    data_dir: Path,
    *,
    appendonly: bool = False,
    appendfsync: str = "everysec",
    password: str = REDIS_PASSWORD,
    bind: str = "127.0.0.1",
    on_host: Callable[[list[str]], list[str]] = list,
) -> Service:
    """A Redis on `port` that requires `password` (the run's canary: reach it with
    `environment.redis_url(port)`); with `appendonly`, its writes go to an append-only file,
    fsynced every second (as deploy/redis/ ships it) or, with `appendfsync="always"`, before
    each reply. `bind` and `on_host` (a wrapper of the command line, e.g. `netns.Host.argv`)
    put it on another host."""
    data_dir.mkdir(parents=True, exist_ok=True)
    # In a private file, not on the command line, where `ps` would show it.
    auth = data_dir / "auth.conf"
    auth.touch(mode=0o600)
    auth.write_text(f'requirepass "{password}"\n')
    argv = [
        executable("redis-server"),
        str(auth),
        "--port", str(port),
        "--bind", bind,
        "--dir", str(data_dir),
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", appendfsync,
        "--daemonize", "no",
    ]  # fmt: skip
    service = Service("redis", on_host(argv), data_dir / "redis.log")
    wait_for(lambda: port_open(port, bind), timeout=10, what=f"redis on {bind}:{port}")
    return service


def start_mosquitto(
    port: int,
    data_dir: Path,
    *,
    bind: str = "127.0.0.1",
    on_host: Callable[[list[str]], list[str]] = list,
) -> Service:
    """Mosquitto on `port` with persistent sessions; `bind`, `on_host` as for `start_redis`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    conf = data_dir / "mosquitto.conf"
    conf.write_text(
        "\n".join(
            [
                f"listener {port} {bind}",
                "allow_anonymous true",
                "persistence true",
                f"persistence_location {data_dir}/",
                "max_queued_messages 200000",
                "max_inflight_messages 1000",
                "message_size_limit 2097152",
                "log_dest stdout",
                f"user {getpass.getuser()}",
                "",
            ]
        )
    )
    argv = on_host([executable("mosquitto"), "-c", str(conf)])
    service = Service("mosquitto", argv, data_dir / "log")
    wait_for(lambda: port_open(port, bind), timeout=10, what=f"mosquitto on {bind}:{port}")
    return service


def python_service(
    name: str,
    args: list[str],
    log_path: Path,
    *,
    on_host: Callable[[list[str]], list[str]] = list,
    **popen: Any,
) -> Service:
    """This interpreter running `args`; `on_host` wraps the command line to run it elsewhere."""
    return Service(name, on_host([sys.executable, *args]), log_path, **popen)


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def mqtt_publish(
    port: int,
    messages: list[tuple[str, bytes | str]],
    *,
    qos: int = 1,
    retain: bool = False,
    timeout: float = 60,
    host: str = "127.0.0.1",
) -> None:
    """Publish with a real MQTT client and return once the broker has acknowledged every one."""
    import uuid

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"test-publisher-{uuid.uuid4().hex[:8]}"
    )
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(host, port)
    client.loop_start()
    try:
        infos = [
            client.publish(topic, payload, qos=qos, retain=retain) for topic, payload in messages
        ]
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
            if not info.is_published():
                raise TimeoutError(f"broker did not acknowledge message {info.mid}")
    finally:
        client.disconnect()
        client.loop_stop()


def mqtt_session_kept(port: int, client_id: str, *, host: str = "127.0.0.1") -> bool:
    """Whether the broker keeps a session for `client_id`. Asking takes it over (a connected
    client of that id is disconnected) and asks for no session, so it leaves none behind."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    present: list[bool] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_connect = lambda _c, _u, flags, _rc, _p: present.append(flags.session_present)
    client.connect(host, port, clean_start=False)
    try:
        wait_for(lambda: client.loop(0.1) or present, timeout=10, what=f"CONNACK to {client_id}")
    finally:
        client.disconnect()
    return present[0]


def publish_until_acknowledged(
    port: int, messages: list[tuple[str, str]], *, chunk: int = 500, timeout: float = 180
) -> int:
    """Publish QoS 1 as a device does: a chunk the broker did not acknowledge (it was down,
    restarting) is sent again, same messages, until it is. Returns how many chunks were resent."""
    deadline = time.monotonic() + timeout
    resent = 0
    for start in range(0, len(messages), chunk):
        while True:
            try:
                mqtt_publish(port, messages[start : start + chunk], timeout=30)
                break
            except (OSError, RuntimeError, ValueError):  # TimeoutError is an OSError
                if time.monotonic() > deadline:
                    raise
                resent += 1
                wait_for(lambda: port_open(port), timeout=60, what=f"the broker on port {port}")
    return resent


class DeviceClient:
    """A device: a real MQTT client subscribed to command/<id>/#, which answers on
    device/<id>/command_ack as the protocol says (docs/commands.md)."""

    def __init__(self, device_id: str, port: int, host: str = "127.0.0.1") -> None:
        self.device_id = device_id
        self.commands: list[tuple[str, dict[str, Any]]] = []
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{device_id}-test")
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.on_message = lambda c, u, m: self.commands.append(
            (m.topic, json.loads(m.payload))
        )
        self.client.connect(host, port)
        self.client.subscribe(f"command/{device_id}/#", qos=1)
        self.client.loop_start()
        assert subscribed.wait(10), "the device's subscription was not acknowledged"

    def received(self, count: int = 1) -> list[tuple[str, dict[str, Any]]]:
        wait_for(lambda: len(self.commands) >= count, timeout=20, what="a command on the device")
        return self.commands

    def answer(self, command_id: str, result: str, detail: str = "") -> None:
        body = json.dumps(
            {
                "command_id": command_id,
                "result": result,
                "detail": detail,
                "timestamp": datetime.now(tz=UTC).isoformat(),
            }
        )
        info = self.client.publish(f"device/{self.device_id}/command_ack", body, qos=1)
        info.wait_for_publish(timeout=10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# --- `make run`'s whole stack (manage.py runstack) -----------------------------------------


class Stack(Service):
    """`manage.py runstack` on free ports with its own VAR_DIR, as `make run` starts it."""

    def __init__(self, var_dir: Path, log_path: Path, **overrides: str) -> None:
        self.env = self.environment(var_dir, **overrides)
        super().__init__("stack", [sys.executable, "manage.py", "runstack"], log_path, env=self.env)

    @staticmethod
    def environment(var_dir: Path, **overrides: str) -> dict[str, str]:
        # As under `make run`, runstack picks the metrics directory (under VAR_DIR, emptied at
        # start) and hands it to each process; the test session's own must not leak in.
        inherited = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        return {
            **inherited,
            "VAR_DIR": str(var_dir),
            "HTTP_PORT": str(free_port()),
            "MQTT_PORT": str(free_port()),
            "REDIS_URL": redis_url(free_port()),
            "MQTT_CLIENT_ID": "stack-test-subscriber",
            "LOG_LEVEL": "INFO",
            **overrides,
        }

    @property
    def http_port(self) -> int:
        return int(self.env["HTTP_PORT"])

    def get(self, path: str) -> urllib.request.Request:
        """A request to the stack's Daphne, with the monitoring API key when it has one."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}")
        if self.env.get("MONITORING_API_KEY"):
            request.add_header("Authorization", f"Bearer {self.env['MONITORING_API_KEY']}")
        return request

    def health(self) -> tuple[int, dict[str, Any]]:
        try:
            request = self.get("/monitoring/health/")
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (http only)
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def failing(self) -> set[str]:
        """The names of the health checks that fail now."""
        return {name for name, check in self.health()[1]["checks"].items() if not check["ok"]}

    def wait_healthy(self, timeout: float = 120) -> None:
        try:
            wait_for(lambda: self.health()[0] == 200, timeout=timeout, interval=0.5, what="health")
        except TimeoutError:
            raise AssertionError(
                f"the stack never became healthy; its output:\n{self.log()}"
            ) from None

    def stackctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`manage.py stackctl`, as an operator runs it against this stack."""
        return subprocess.run(
            [sys.executable, "manage.py", "stackctl", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        supervisorctl = str(Path(sys.executable).parent / "supervisorctl")
        conf = str(Path(self.env["VAR_DIR"]) / "supervisord.conf")
        return subprocess.run(
            [supervisorctl, "-c", conf, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )


def queued_task_args(raw: bytes | str) -> list[Any]:
    """The arguments of a task message as it waits in a Redis queue: kombu's envelope, its body
    in base64, compressed when its headers say so (a batch, core/task_json.py)."""
    import base64

    from kombu.compression import decompress

    message = json.loads(raw)
    body = base64.b64decode(message["body"])
    if compression := message["headers"].get("compression"):
        body = decompress(body, compression)
    args, _kwargs, _embed = json.loads(body)
    return list(args)


def metric(name: str, **labels: str) -> float:
    """A metric summed over every process of the test run (prometheus multiprocess files), as
    a scrape reads them (apps/core/metric_files.py), without folding any."""
    from apps.core.metric_files import recorded

    for family in recorded(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def worker_answers(node: str) -> bool:
    """Whether the Celery worker node (e.g. `general@host`) answers a ping."""
    from intelliwiz_config.celery import app

    replies = app.control.ping(destination=[node], timeout=0.5)
    return any(node in reply for reply in replies)


def stalled_websocket(
    port: int, token: str, *, timeout: float = 5, after_snapshot: bool = False
) -> socket.socket:
    """A NOC client that completes the WebSocket handshake and then never reads again: its
    receive window stays small, so what Daphne sends it piles up (tests and `bench.scale`).

    `after_snapshot`: it reads up to its snapshot first, which the consumer sends once it
    joined its feeds, so every event broadcast after this returns is one it is sent (the 101
    alone comes before the consumer joins: a busy machine let it miss the first events)."""
    import base64

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws/noc/dashboard/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Key: {key}\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += sock.recv(1)  # the response head only: not one byte of the stream after it
    if not head.startswith(b"HTTP/1.1 101"):
        sock.close()
        raise RuntimeError(f"the stalled client was not let in: {head!r}")
    while after_snapshot and not _server_frame(sock).startswith(b'{"type": "snapshot"'):
        pass
    return sock


def _server_frame(sock: socket.socket) -> bytes:
    """The payload of the next frame a server sends (unmasked, whole; no extension agreed)."""

    def exactly(count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError("the server closed the connection")
            data += chunk
        return data

    length = exactly(2)[1] & 0x7F
    if length >= 126:
        length = int.from_bytes(exactly(2 if length == 126 else 8), "big")
    return exactly(length)
