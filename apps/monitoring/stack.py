"""The single-machine stack behind `make run`: configs under VAR_DIR, supervisor runs the rest.

Supervisor (`supervisord -n`) starts the services in the runbook's order, restarts one that
crashes, stops them in reverse order, and lets an operator stop, start or restart one at a time:

    .venv/bin/python manage.py stackctl restart celery:general     (or celery@general)
"""

from __future__ import annotations

import errno
import getpass
import os
import resource
import secrets
import shutil
import socket
import string
import sys
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from apps.core.network import is_loopback
from apps.core.tasks.celery_settings import QUEUES, beat_argv

DEPLOY_DIR = Path(settings.BASE_DIR) / "deploy"
# Debian installs mosquitto in sbin, which is not on a normal user's PATH.
_EXTRA_PATH = ("/usr/sbin", "/usr/local/sbin", "/sbin")


# Mosquitto holds a socket per connected device and Daphne one per NOC screen; neither raises its
# own soft limit (often 1,024), so supervisord raises its own and they inherit it. 10,000 devices,
# some thousands of screens and the stack's own files, with room to spare.
FILE_DESCRIPTORS = 65536


def file_descriptor_limit() -> int:
    """The soft RLIMIT_NOFILE supervisord gives every service: FILE_DESCRIPTORS, or the hard
    limit if that is lower (only root may raise it: `ulimit -Hn`, limits.conf)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return FILE_DESCRIPTORS if hard == resource.RLIM_INFINITY else min(FILE_DESCRIPTORS, hard)


class StackError(Exception):
    """A problem the operator can fix; the message says how."""


@dataclass(frozen=True)
class Program:
    name: str
    command: list[str]
    priority: int
    log_name: str
    stop_wait_seconds: int = 10
    group: str | None = None
    # Other names `stackctl` accepts for it: its production systemd unit, as the runbooks write
    # it (`celery@general`, `mqtt-subscriber`), so an operator's habit works here too.
    aliases: tuple[str, ...] = ()

    @property
    def supervisor_name(self) -> str:
        return f"{self.group}:{self.name}" if self.group else self.name


@dataclass(frozen=True)
class StackPaths:
    var_dir: Path

    @property
    def log_dir(self) -> Path:
        return self.var_dir / "log"

    @property
    def run_dir(self) -> Path:
        return self.var_dir / "run"

    @property
    def supervisor_conf(self) -> Path:
        return self.var_dir / "supervisord.conf"

    @property
    def supervisor_pidfile(self) -> Path:
        return self.run_dir / "supervisord.pid"

    @property
    def operator_password_file(self) -> Path:
        return self.var_dir / "operator_password"


def find_executable(name: str, install_hint: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(_EXTRA_PATH))
    if path is None:
        raise StackError(f"{name} is not installed: {install_hint}")
    return path


def venv_executable(name: str) -> str:
    """A console script installed next to this interpreter (the project's .venv)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    return find_executable(name, "run `make run`, which installs the project into .venv")


def ensure_port_free(host: str, port: int, service: str, variable: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise StackError(
                    f"port {port} for {service} on {host} is already in use; "
                    f"stop what holds it (`ss -ltnp 'sport = :{port}'` shows it) "
                    f"or set {variable} to use another port"
                ) from None
            raise


def supervisor_running(paths: StackPaths) -> int | None:
    """The pid of a supervisord still running from this VAR_DIR, if any."""
    try:
        pid = int(paths.supervisor_pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def render(template: Path, target: Path, **values: object) -> None:
    """Write `target` from `template`, readable by its owner only (it may hold a password)."""
    text = string.Template(template.read_text()).substitute(
        {key: str(value) for key, value in values.items()}
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # an earlier file keeps its mode through O_TRUNC
    with os.fdopen(descriptor, "w") as out:
        out.write(text)


def manages_redis() -> bool:
    return is_loopback(settings.REDIS_HOST)


def redis_auth() -> str:
    """The local Redis's `requirepass`: the password REDIS_URL carries (none when it has none)."""
    if settings.REDIS_USERNAME not in {"", "default"}:
        raise StackError(
            f"REDIS_URL names the ACL user {settings.REDIS_USERNAME!r}, but make run's own Redis "
            "has a password only: use REDIS_URL=redis://:<password>@host:port"
        )
    if not settings.REDIS_PASSWORD:
        return "# REDIS_URL has no password: any local client may connect."
    quoted = settings.REDIS_PASSWORD.replace("\\", "\\\\").replace('"', '\\"')
    return f'requirepass "{quoted}"'


def manages_mosquitto() -> bool:
    return is_loopback(settings.MQTT_HOST)


def preflight(paths: StackPaths) -> None:
    """Fail early, by name, on everything an operator can fix before anything starts."""
    pid = supervisor_running(paths)
    if pid is not None:
        raise StackError(
            f"the stack is already running from {paths.var_dir} (supervisord pid {pid}); "
            "use `make status`, or `make stop` to stop it"
        )
    checks = [(settings.HTTP_HOST, settings.HTTP_PORT, "Daphne (HTTP/WebSocket)", "HTTP_PORT")]
    if manages_redis():
        checks.append((settings.REDIS_HOST, settings.REDIS_PORT, "Redis", "REDIS_URL"))
    if manages_mosquitto():
        checks.append((settings.MQTT_HOST, settings.MQTT_PORT, "Mosquitto (MQTT)", "MQTT_PORT"))
    for host, port, service, variable in checks:
        ensure_port_free(host, port, service, variable)


def write_service_configs(paths: StackPaths) -> None:
    user = getpass.getuser()
    if manages_redis():
        data_dir = paths.var_dir / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        render(
            DEPLOY_DIR / "redis" / "redis-local.conf.template",
            data_dir / "redis.conf",
            var_dir=paths.var_dir,
            host=settings.REDIS_HOST,
            port=settings.REDIS_PORT,
            data_dir=data_dir,
            auth=redis_auth(),
        )
    if manages_mosquitto():
        data_dir = paths.var_dir / "mosquitto"
        data_dir.mkdir(parents=True, exist_ok=True)
        render(
            DEPLOY_DIR / "mosquitto" / "mosquitto-local.conf.template",
            data_dir / "mosquitto.conf",
            var_dir=paths.var_dir,
            host=settings.MQTT_HOST,
            port=settings.MQTT_PORT,
            data_dir=data_dir,
            user=user,
        )


def daphne_argv(host: str, port: int) -> list[str]:
    """Daphne as the stack and the tests run it. No --proxy-headers: it would take the client's
    own left-most X-Forwarded-For entry as its address; the application resolves the address
    itself, from TRUSTED_PROXIES (apps/core/client_address.py). Daphne's own command line, with
    an access log that masks secrets a client put in a URL (apps/core/daphne_server.py)."""
    return [
        sys.executable,
        "-m",
        "apps.core.daphne_server",
        "--bind",
        host,
        "--port",
        str(port),
        "intelliwiz_config.asgi:application",
    ]


def programs(paths: StackPaths) -> list[Program]:
    """Every process of the stack, in the runbook's start order (priority ascending)."""
    python = sys.executable
    manage = str(Path(settings.BASE_DIR) / "manage.py")
    result: list[Program] = []
    if manages_redis():
        redis_server = find_executable(
            "redis-server", "install it with `sudo apt-get install redis-server`"
        )
        result.append(
            Program(
                "redis",
                [redis_server, str(paths.var_dir / "redis" / "redis.conf")],
                10,
                "redis",
                aliases=("redis-server",),
            )
        )
    if manages_mosquitto():
        mosquitto = find_executable(
            "mosquitto", "install it with `sudo apt-get install mosquitto mosquitto-clients`"
        )
        conf = str(paths.var_dir / "mosquitto" / "mosquitto.conf")
        result.append(Program("mosquitto", [mosquitto, "-c", conf], 20, "mosquitto"))
    daphne = daphne_argv(settings.HTTP_HOST, settings.HTTP_PORT)
    result.append(Program("daphne", daphne, 30, "daphne"))
    for queue in QUEUES:
        command = [python, "-m", "apps.core.worker", queue.name]
        result.append(
            Program(
                queue.name,
                command,
                40,
                f"celery-{queue.name}",
                group="celery",
                aliases=(f"celery@{queue.name}",),
            )
        )
    beat = beat_argv(str(paths.var_dir / "celerybeat-schedule"), loglevel=settings.LOG_LEVEL)
    beat_command = [venv_executable("celery"), *beat[1:]]
    result.append(Program("celerybeat", beat_command, 50, "celerybeat", aliases=("celery-beat",)))
    # Two sessions, so an alert never queues behind telemetry (apps/mqtt/subscriber.py, Lane).
    for name, lane in (("mqtt_subscriber_urgent", "urgent"), ("mqtt_subscriber", "routine")):
        command = [python, manage, "mqtt_subscriber", "--lane", lane]
        result.append(Program(name, command, 60, name, aliases=(name.replace("_", "-"),)))
    return result


def control_names(stack: list[Program]) -> dict[str, list[str]]:
    """What `stackctl` accepts, by supervisor's name: each program (`celery:general`) and each
    group (`celery:*`, every worker), with the aliases that also name it (`celery@general`,
    `celery@*`: systemd's template instances)."""
    names: dict[str, list[str]] = {}
    for program in stack:
        names[program.supervisor_name] = list(program.aliases)
    for group in dict.fromkeys(program.group for program in stack if program.group):
        names[f"{group}:*"] = [f"{group}@*"]
    return names


def supervisor_config(paths: StackPaths, stack: list[Program]) -> str:
    base_dir = settings.BASE_DIR
    secret = secrets.token_urlsafe(16)
    lines = [
        "; Written by `manage.py runstack` on every start; edit apps/monitoring/stack.py instead.",
        "[unix_http_server]",
        f"file={paths.run_dir / 'supervisor.sock'}",
        "chmod=0700",
        # A fresh secret per start; the socket is private (0700) anyway.
        f"username=stack\npassword={secret}",
        "",
        "[supervisord]",
        "nodaemon=true",
        f"logfile={paths.log_dir / 'supervisord.log'}",
        f"pidfile={paths.supervisor_pidfile}",
        f"childlogdir={paths.log_dir}",
        "loglevel=info",
        f"minfds={file_descriptor_limit()}",
        *(["user=root"] if os.geteuid() == 0 else []),
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{paths.run_dir / 'supervisor.sock'}",
        f"username=stack\npassword={secret}",
        "",
    ]
    groups: dict[str, list[Program]] = {}
    for program in stack:
        if program.group:
            groups.setdefault(program.group, []).append(program)
        lines += [
            f"[program:{program.name}]",
            "command=" + " ".join(_quote(part) for part in program.command),
            f"directory={base_dir}",
            f"priority={program.priority}",
            "autostart=true",
            "autorestart=true",
            "startsecs=2",
            "startretries=10",
            "stopsignal=TERM",
            f"stopwaitsecs={program.stop_wait_seconds}",
            # Children (Celery's pool processes) die with their parent if it must be killed.
            "killasgroup=true",
            f"stdout_logfile={paths.log_dir / (program.log_name + '.log')}",
            "stdout_logfile_maxbytes=50MB",
            "stdout_logfile_backups=3",
            "redirect_stderr=true",
            # Every process writes its metrics where /metrics/export/ reads them; it must be
            # in the environment before the process imports prometheus_client.
            'environment=PYTHONUNBUFFERED="1",PROMETHEUS_MULTIPROC_DIR='
            + _quote_value(str(settings.PROMETHEUS_MULTIPROC_DIR)),
            "",
        ]
    for group, members in groups.items():
        lines += [
            f"[group:{group}]",
            "programs=" + ",".join(program.name for program in members),
            f"priority={members[0].priority}",
            "",
        ]
    return "\n".join(lines)


def _quote(part: str) -> str:
    # supervisor splits command= with shlex; `%` must be doubled for its own expansion.
    escaped = part.replace("%", "%%")
    return f'"{escaped}"' if any(ch.isspace() for ch in escaped) else escaped


def _quote_value(value: str) -> str:
    escaped = value.replace("%", "%%").replace('"', '\\"')
    return f'"{escaped}"'


def reset_metrics_dir() -> None:
    """Start the metrics from zero: an earlier run's files and archives would be summed in."""
    directory: Path = settings.PROMETHEUS_MULTIPROC_DIR
    directory.mkdir(parents=True, exist_ok=True)
    # Every file: a merge the last run left unfinished (core/metric_files.py) must not resume.
    for stale in directory.iterdir():
        if stale.is_file():
            stale.unlink()


def prepare(paths: StackPaths) -> list[Program]:
    for directory in (paths.var_dir, paths.log_dir, paths.run_dir):
        directory.mkdir(parents=True, exist_ok=True)
    preflight(paths)
    reset_metrics_dir()
    write_service_configs(paths)
    stack = programs(paths)
    paths.supervisor_conf.write_text(supervisor_config(paths, stack))
    paths.supervisor_conf.chmod(0o600)  # holds the control socket's password
    return stack
