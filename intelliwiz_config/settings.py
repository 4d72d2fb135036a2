"""Django settings: the only module that reads the environment.

Every variable is documented in `.env.example`. Values are parsed by the small typed helpers
below, which fail loudly (naming the variable) on a bad value instead of guessing.
"""

from __future__ import annotations

import ipaddress
import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import unquote, urlsplit

import dj_database_url
import django_stubs_ext
from django.core.exceptions import ImproperlyConfigured
from dotenv import load_dotenv

from apps.core.logging import configure_logging, mask_url
from apps.core.tasks import celery_settings

django_stubs_ext.monkeypatch()  # lets Django's generic classes be subscripted (ModelAdmin[T])

BASE_DIR = Path(__file__).resolve().parent.parent

# An optional env file (default `.env` at the project root) fills in what the real environment
# does not set; the real environment always wins. ENV_FILE="" disables it (the tests do).
_env_file = os.environ.get("ENV_FILE", str(BASE_DIR / ".env"))
_environment_before_env_file = set(os.environ)
if _env_file:
    load_dotenv(_env_file, override=False)
# What came from the file, not from the real environment: `make run` keeps these out of the
# environment of the services it starts, so each re-reads the file (an edit applies on restart).
ENV_FILE_VARIABLES = frozenset(set(os.environ) - _environment_before_env_file)


def env_str(name: str, default: str | None = None) -> str:
    value = os.environ.get(name)
    if value is None or value == "":
        if default is None:
            raise ImproperlyConfigured(f"{name} must be set (see .env.example)")
        return default
    return value


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value == "":
        return default
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean; use true or false")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a whole number") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be at least {minimum}")
    return value


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from None


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_int_map(name: str, default: dict[str, int], *, minimum: int) -> dict[str, int]:
    """`name=number,name=number`: a whole number per name, each at least `minimum`."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    values: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        key, sep, number = (text.strip() for text in item.partition("="))
        if not sep or not key or not number.isdigit():
            raise ImproperlyConfigured(f"{name}: {item!r} is not `name=whole number`")
        if int(number) < minimum:
            raise ImproperlyConfigured(f"{name}: {key}={number} must be at least {minimum}")
        values[key] = int(number)
    return values


# --- Core -----------------------------------------------------------------------------------

DEBUG = env_bool("DJANGO_DEBUG", False)
VAR_DIR = Path(env_str("VAR_DIR", str(BASE_DIR / "var"))).resolve()

if DEBUG:
    SECRET_KEY = env_str("DJANGO_SECRET_KEY", "insecure-development-key-only-for-debug")
else:
    SECRET_KEY = env_str("DJANGO_SECRET_KEY")

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "intelliwiz_config.apps.AdminConfig",  # django.contrib.admin, for superusers only
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "rest_framework_simplejwt",
    "rest_framework_simplejwt.token_blacklist",  # refresh tokens are good once (SIMPLE_JWT)
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and ReDoc served from static files, no CDN
    "axes",  # failed logins, per account and per client address
    # Layered: each app imports only those listed above it (docs/architecture.md, "Layers").
    "apps.core",
    "apps.tenants",
    "apps.devices",
    "apps.alerts",
    "apps.notifications",
    "apps.anomaly",
    "apps.mqtt",
    "apps.noc",
    "apps.monitoring",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "intelliwiz_config.admin_site.AdminGateMiddleware",  # /admin/ is a 404 unless allowed
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last, as django-axes requires
]

ROOT_URLCONF = "intelliwiz_config.urls"
ASGI_APPLICATION = "intelliwiz_config.asgi.application"
AUTH_USER_MODEL = "tenants.User"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/noc/"

# --- Database: SQLite under VAR_DIR by default, anything dj-database-url reads otherwise ------

_sqlite_path = VAR_DIR / "db.sqlite3"
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{_sqlite_path}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
# FULL: a committed batch survives a power cut (its MQTT messages are already acknowledged);
# NORMAL may lose the last commits then, for faster writes (docs/reliability.md measures it).
SQLITE_SYNCHRONOUS = env_str("SQLITE_SYNCHRONOUS", "FULL").upper()
if SQLITE_SYNCHRONOUS not in {"FULL", "NORMAL"}:
    raise ImproperlyConfigured(f"SQLITE_SYNCHRONOUS={SQLITE_SYNCHRONOUS!r} must be FULL or NORMAL")
# Pages the write-ahead log may hold before a commit copies them into the database (SQLite's
# wal_autocheckpoint; its own default is 1,000). A page rewritten between two checkpoints is
# copied once: at 8,000 (32 MB) the general worker wrote a quarter less and spent 9 % less CPU
# per message at 150,000 readings than at 1,000 (docs/performance.md). Critical transactions
# never run one (apps/core/write_priority.py).
SQLITE_WAL_AUTOCHECKPOINT = env_int("SQLITE_WAL_AUTOCHECKPOINT", 8000, minimum=1)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several processes (Daphne, workers, subscriber) write to one file: WAL lets readers run
    # beside a writer, IMMEDIATE transactions and a busy timeout make writers queue, not fail.
    # Connections persist (CONN_MAX_AGE, 60 s) like PostgreSQL's: opening one per task (connect,
    # PRAGMAs, Django's SQL functions) cost about 2.5 ms of CPU each time, a critical alert's
    # whole budget (docs/performance.md). Django's ASGI views still open one per request (each
    # runs in a thread of its own). Replacing the file under running services needs a restart.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": (
            f"PRAGMA journal_mode=WAL; PRAGMA synchronous={SQLITE_SYNCHRONOUS}; "
            f"PRAGMA wal_autocheckpoint={SQLITE_WAL_AUTOCHECKPOINT};"
        ),
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    DATABASES["default"]["TEST"] = {
        "NAME": env_str("TEST_SQLITE_PATH", str(VAR_DIR / "test.sqlite3"))
    }
else:
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # As SQLite's synchronous=FULL: a commit returns once it is on disk, whatever the server
        # defaults to, since the batch's MQTT messages are acknowledged after it.
        _options = DATABASES["default"].setdefault("OPTIONS", {})  # ?options=… in the URL kept
        _options["options"] = f"{_options.get('options', '')} -c synchronous_commit=on".strip()
    if TEST_DATABASE_NAME := env_str("TEST_DATABASE_NAME", ""):
        # The suite's workers and subscribers connect to the database the test runner creates.
        DATABASES["default"]["TEST"] = {"NAME": TEST_DATABASE_NAME}

# --- Redis: one server, one database per role --------------------------------------------

# The password travels in the URL, percent-encoded: redis://:<password>@host:port, or with an
# ACL user redis://<user>:<password>@host:port. Every client (broker, cache, channel layer, bus
# state, the health script) reads it from here; logs and errors show REDIS_URL_SHOWN only.
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
REDIS_URL_SHOWN = mask_url(REDIS_URL)
_redis = urlsplit(REDIS_URL)
if _redis.scheme not in {"redis", "rediss"} or not _redis.hostname:
    raise ImproperlyConfigured(
        f"REDIS_URL={REDIS_URL_SHOWN!r} must look like redis://:<password>@host:port"
    )
if _redis.path not in {"", "/"}:
    raise ImproperlyConfigured(
        f"REDIS_URL={REDIS_URL_SHOWN!r} must not name a database; each role picks its own"
    )
REDIS_HOST = _redis.hostname
REDIS_PORT = _redis.port or 6379
REDIS_USERNAME = unquote(_redis.username or "")
REDIS_PASSWORD = unquote(_redis.password or "")
# Outside DEBUG a Redis without a password is refused, unless this says it is on purpose.
REDIS_ALLOW_NO_PASSWORD = env_bool("REDIS_ALLOW_NO_PASSWORD", False)
if not (DEBUG or REDIS_PASSWORD or REDIS_ALLOW_NO_PASSWORD):
    raise ImproperlyConfigured(
        f"REDIS_URL={REDIS_URL_SHOWN!r} has no password: outside DEBUG, Redis must require one "
        "(requirepass, deploy/redis/redis.conf) and REDIS_URL must carry it, "
        "redis://:<password>@host:port; set REDIS_ALLOW_NO_PASSWORD=true only if nobody else "
        "can reach this Redis"
    )
CELERY_BROKER_URL = f"{REDIS_URL}/0"
CACHE_REDIS_URL = f"{REDIS_URL}/1"
CHANNELS_REDIS_URL = f"{REDIS_URL}/2"

# A Redis that stops answering must fail a call within seconds, never hang it (one value for
# the broker, the cache, the bus state and the channel layer).
REDIS_SOCKET_TIMEOUT_SECONDS = celery_settings.REDIS_SOCKET_TIMEOUT_SECONDS
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": CACHE_REDIS_URL,
        "KEY_PREFIX": "cache",
        "OPTIONS": {
            "socket_timeout": REDIS_SOCKET_TIMEOUT_SECONDS,
            "socket_connect_timeout": REDIS_SOCKET_TIMEOUT_SECONDS,
        },
    }
}

# --- Channels: Redis DB 2, encrypted outside DEBUG ----------------------------------------

CHANNELS_ENCRYPTION_KEY = os.environ.get("CHANNELS_ENCRYPTION_KEY", "")
_FERNET_HINT = (
    "generate one with python -c 'from cryptography.fernet import Fernet; "
    "print(Fernet.generate_key().decode())'"
)
if CHANNELS_ENCRYPTION_KEY:
    from cryptography.fernet import Fernet

    try:
        Fernet(CHANNELS_ENCRYPTION_KEY)
    except ValueError:
        raise ImproperlyConfigured(
            f"CHANNELS_ENCRYPTION_KEY is not a valid Fernet key; {_FERNET_HINT}"
        ) from None
elif not DEBUG:
    raise ImproperlyConfigured(f"CHANNELS_ENCRYPTION_KEY must be set outside DEBUG; {_FERNET_HINT}")

# A group membership lapses after this many seconds unless renewed; NOC connections renew theirs.
CHANNELS_GROUP_EXPIRY = env_int("CHANNELS_GROUP_EXPIRY", 86400, minimum=2)
# Events that may wait for one Daphne process (shared by all its clients) before new ones are
# dropped: 100, channels_redis's default, is lost in one burst of alerts to a busy NOC.
CHANNELS_CAPACITY = env_int("CHANNELS_CAPACITY", 5000, minimum=100)
_channel_layer_config: dict[str, object] = {
    # The read timeout outlasts the layer's own 5 s blocking receive (channels_redis).
    "hosts": [
        {
            "address": CHANNELS_REDIS_URL,
            "socket_connect_timeout": REDIS_SOCKET_TIMEOUT_SECONDS,
            "socket_timeout": 3 * REDIS_SOCKET_TIMEOUT_SECONDS,
        }
    ],
    "group_expiry": CHANNELS_GROUP_EXPIRY,
    # Messages waiting for one Daphne process (all its clients share one Redis list) or one
    # receiver; beyond this, group messages are dropped and counted (noc_events_dropped_total).
    "capacity": CHANNELS_CAPACITY,
}
if CHANNELS_ENCRYPTION_KEY:
    _channel_layer_config["symmetric_encryption_keys"] = [CHANNELS_ENCRYPTION_KEY]
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "apps.core.channel_layer.BatchingRedisChannelLayer",
        "CONFIG": _channel_layer_config,
    }
}

# --- API and tokens (REST and the NOC WebSocket share them) ----------------------------------

# HS256 with a key of its own when set (so rotating it does not log out the admin), else the
# Django secret key. The algorithm is pinned: `alg=none` or any other is refused.
# Keys that sign or guard something must not be guessable: when set, at least this long.
MIN_SECRET_LENGTH = 32


def _strong(name: str, value: str) -> str:
    if value and len(value) < MIN_SECRET_LENGTH:
        raise ImproperlyConfigured(
            f"{name} is {len(value)} characters; use at least {MIN_SECRET_LENGTH}, e.g. "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return value


JWT_SIGNING_KEY = _strong("JWT_SIGNING_KEY", os.environ.get("JWT_SIGNING_KEY", "")) or SECRET_KEY
JWT_ACCESS_MINUTES = env_int("JWT_ACCESS_MINUTES", 15, minimum=1)
# Each refresh returns a new refresh token and blacklists the one used, so this is how long an
# unused one stays good (a client in use refreshes every JWT_ACCESS_MINUTES): one 8-hour shift.
JWT_REFRESH_HOURS = env_int("JWT_REFRESH_HOURS", 8, minimum=1)
JWT_AUDIENCE = env_str("JWT_AUDIENCE", "intelliwiz-noc")
JWT_ISSUER = env_str("JWT_ISSUER", "intelliwiz")
SIMPLE_JWT = {
    "ALGORITHM": "HS256",
    "SIGNING_KEY": JWT_SIGNING_KEY,
    "AUDIENCE": JWT_AUDIENCE,
    "ISSUER": JWT_ISSUER,
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=JWT_ACCESS_MINUTES),
    "REFRESH_TOKEN_LIFETIME": timedelta(hours=JWT_REFRESH_HOURS),
    "AUTH_HEADER_TYPES": ("Bearer",),
    "UPDATE_LAST_LOGIN": True,
    "TOKEN_OBTAIN_SERIALIZER": "apps.noc.auth.TenantTokenObtainPairSerializer",
    "TOKEN_REFRESH_SERIALIZER": "apps.noc.auth.TenantTokenRefreshSerializer",
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
}
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # The WebSocket's checks (tenant, nbf, required claims), not simplejwt's stock class.
        "apps.noc.api.authentication.TenantJWTAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON or a plain form: nothing uploads files, and a malformed multipart body gets a bare
    # 400 from Daphne before the API can answer it.
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
    ],
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    "DEFAULT_SCHEMA_CLASS": "apps.noc.api.schema.ApiSchema",
    "DEFAULT_PAGINATION_CLASS": "apps.noc.api.pagination.CappedLimitOffsetPagination",
    "PAGE_SIZE": 100,
    "DEFAULT_THROTTLE_RATES": {"token": env_str("API_TOKEN_RATE", "20/min")},
}
SPECTACULAR_SETTINGS = {
    "TITLE": "IntelliWiz message bus API",
    "DESCRIPTION": "Alerts, devices and readings of the caller's tenant.",
    "VERSION": "1",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Alerts and devices both have a `status` field; each choice set gets a name of its own.
    "ENUM_NAME_OVERRIDES": {
        "AlertStatusEnum": "apps.alerts.models.AlertStatus",
        "DeviceStatusEnum": "apps.devices.models.Device.Status",
        # Rules list severities and types: the same choice sets as an alert's one value.
        "SeverityEnum": "apps.alerts.models.Severity",
        "AlertTypeEnum": "apps.alerts.models.AlertType",
        "NotificationKindEnum": "apps.notifications.models.Kind",
        "DeviceKindEnum": "apps.devices.models.Device.Kind",
        "CommandStatusEnum": "apps.devices.models.CommandStatus",
    },
}

# --- NOC WebSocket ----------------------------------------------------------------------------

# Browsers' Origin must name one of DJANGO_ALLOWED_HOSTS (Channels' origin validator).
NOC_MAX_MESSAGES_PER_MINUTE = env_int("NOC_MAX_MESSAGES_PER_MINUTE", 100, minimum=1)
# Per user, across every Daphne process: open NOC WebSockets (4430 beyond) and connects a minute
# (4429 beyond). Each connect costs a snapshot of up to 500 alerts and 2,000 devices.
NOC_MAX_SOCKETS_PER_USER = env_int("NOC_MAX_SOCKETS_PER_USER", 10, minimum=1)
NOC_MAX_CONNECTS_PER_MINUTE = env_int("NOC_MAX_CONNECTS_PER_MINUTE", 30, minimum=1)
NOC_MAX_FRAME_BYTES = env_int("NOC_MAX_FRAME_BYTES", 64 * 1024, minimum=1024)
# Telemetry updates per client are conflated to at most one per this many milliseconds.
NOC_TELEMETRY_MIN_INTERVAL_MS = env_int("NOC_TELEMETRY_MIN_INTERVAL_MS", 250, minimum=0)
# Daphne never blocks a send: a client that stops reading would make it hold every event in
# memory. One whose unacknowledged events (after its snapshot) exceed this is cut off (4408).
NOC_MAX_UNACKED_BYTES = env_int("NOC_MAX_UNACKED_BYTES", 4 * 1024 * 1024, minimum=64 * 1024)
# Each connection re-checks its user, session or token this often, and closes once refused
# (logout, deactivation, permission lost); changes made through Django close it at once.
NOC_REAUTH_SECONDS = env_int("NOC_REAUTH_SECONDS", 60, minimum=1)
# The device page's map: tiles from this server (a URL with {z}, {x} and {y}, the operator's own
# tile server or a provider whose terms allow it) with this credit line. Empty (the default): no
# tiles, positions and geofences on a plain background, so the page needs no outside host.
NOC_MAP_TILE_URL = env_str("NOC_MAP_TILE_URL", "")
NOC_MAP_ATTRIBUTION = env_str("NOC_MAP_ATTRIBUTION", "")
if NOC_MAP_TILE_URL and not (
    NOC_MAP_TILE_URL.startswith(("https://", "http://", "/"))
    and all(part in NOC_MAP_TILE_URL for part in ("{z}", "{x}", "{y}"))
):
    raise ImproperlyConfigured(
        f"NOC_MAP_TILE_URL={NOC_MAP_TILE_URL!r} must be an http(s):// or /path URL with "
        "{z}, {x} and {y} in it, or empty for no tiles"
    )

# --- Celery (queues and routes live in apps/core/tasks/celery_settings.py) -----------------

CELERY_RESULT_BACKEND = None
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# --- MQTT ---------------------------------------------------------------------------------

MQTT_HOST = env_str("MQTT_HOST", "127.0.0.1")
MQTT_PORT = env_int("MQTT_PORT", 1883, minimum=1)
MQTT_USERNAME = os.environ.get("MQTT_USERNAME", "")
MQTT_PASSWORD = os.environ.get("MQTT_PASSWORD", "")
MQTT_CLIENT_ID = env_str("MQTT_CLIENT_ID", "intelliwiz-subscriber")
MQTT_SESSION_EXPIRY = env_int("MQTT_SESSION_EXPIRY", 86400, minimum=1)
MQTT_KEEPALIVE = env_int("MQTT_KEEPALIVE", 30, minimum=5)
MQTT_SHARED_GROUP = os.environ.get("MQTT_SHARED_GROUP", "")
# A member of the shared group silent this long (no heartbeat in Redis; it beats every 5 s) has
# its session adopted by a surviving member, drained and ended (apps/mqtt/adoption.py); 0: never.
# Subscriber processes (sessions: two a host with lanes) health expects connected; fewer fail it.
MQTT_SUBSCRIBERS_EXPECTED = env_int("MQTT_SUBSCRIBERS_EXPECTED", 1, minimum=1)
MQTT_SHARED_ADOPT_AFTER = env_int("MQTT_SHARED_ADOPT_AFTER", 60, minimum=0)
if 0 < MQTT_SHARED_ADOPT_AFTER < 10:
    raise ImproperlyConfigured(
        f"MQTT_SHARED_ADOPT_AFTER={MQTT_SHARED_ADOPT_AFTER}: at least 10 s (two heartbeats), "
        "or a member that is merely slow would lose its session; 0 turns adoption off"
    )
MQTT_RECONNECT_MAX_DELAY = env_int("MQTT_RECONNECT_MAX_DELAY", 60, minimum=1)
# Flow control: QoS 1 messages the broker may have in flight to the subscriber, unacknowledged.
MQTT_RECEIVE_MAXIMUM = env_int("MQTT_RECEIVE_MAXIMUM", 1000, minimum=1)
# Where `manage.py sync_mqtt_credentials` writes the broker's password file and ACL.
MQTT_PASSWORD_FILE = Path(env_str("MQTT_PASSWORD_FILE", "/etc/mosquitto/passwd"))
MQTT_ACL_FILE = Path(env_str("MQTT_ACL_FILE", "/etc/mosquitto/acl"))
# Client ids of the application's other MQTT clients (the subscribers of a shared group).
MQTT_RESERVED_CLIENT_IDS = env_list("MQTT_RESERVED_CLIENT_IDS", [])
# The urgent subscriber (`mqtt_subscriber --lane urgent`: alerts on a session of their own) takes
# its subscriber's client id with this suffix; not a setting, so every host derives the same.
MQTT_URGENT_CLIENT_ID_SUFFIX = "-urgent"
# Ids no device may be registered under: the broker's device listener makes a device's client id
# its user name, i.e. its device id, so a device named like a subscriber would take its session.
DEVICE_RESERVED_IDS = frozenset(
    {MQTT_USERNAME}
    | {
        client_id + suffix
        for client_id in (MQTT_CLIENT_ID, *MQTT_RESERVED_CLIENT_IDS)
        for suffix in ("", MQTT_URGENT_CLIENT_ID_SUFFIX)
    }
) - {"", MQTT_URGENT_CLIENT_ID_SUFFIX}

# --- Intake: validation, batching -------------------------------------------------------------

MQTT_MAX_PAYLOAD_BYTES = env_int("MQTT_MAX_PAYLOAD_BYTES", 1024 * 1024, minimum=1)
# 300 by measurement (docs/performance.md, "Batch size"): against 100, 14 % more stored msg/s on
# the make-run stack on one machine, no worse on another; within the broker's window, or a batch
# could never fill.
MQTT_BATCH_SIZE = env_int("MQTT_BATCH_SIZE", min(300, MQTT_RECEIVE_MAXIMUM), minimum=1)
MQTT_BATCH_INTERVAL_MS = env_int("MQTT_BATCH_INTERVAL_MS", 50, minimum=1)
# While a kind's queue is backed up, its batches grow up to this many messages (fewer, larger
# transactions: the workers catch up sooner). MQTT_BATCH_SIZE turns this off.
MQTT_BATCH_MAX_SIZE = env_int(
    "MQTT_BATCH_MAX_SIZE", max(MQTT_BATCH_SIZE, min(500, MQTT_RECEIVE_MAXIMUM)), minimum=1
)
if not MQTT_BATCH_SIZE <= MQTT_BATCH_MAX_SIZE <= max(MQTT_BATCH_SIZE, MQTT_RECEIVE_MAXIMUM):
    raise ImproperlyConfigured(
        f"MQTT_BATCH_MAX_SIZE={MQTT_BATCH_MAX_SIZE} must lie between MQTT_BATCH_SIZE "
        f"({MQTT_BATCH_SIZE}) and MQTT_RECEIVE_MAXIMUM ({MQTT_RECEIVE_MAXIMUM}): a batch larger "
        "than the broker's window could never fill"
    )
# What the subscriber may hold while it cannot hand messages on (Redis or the database down).
# Past either bound it lets go of everything and leaves the broker until both answer again: the
# broker keeps QoS 1 messages in the session; QoS 0 ones are dropped (counted).
MQTT_HOLD_MAX_MESSAGES = env_int("MQTT_HOLD_MAX_MESSAGES", 10_000, minimum=1)
MQTT_HOLD_MAX_BYTES = env_int("MQTT_HOLD_MAX_BYTES", 64 * 1024 * 1024, minimum=1024)
MAX_CLOCK_SKEW_SECONDS = env_int("MAX_CLOCK_SKEW_SECONDS", 300, minimum=0)
# Older device timestamps are refused (a clock reset to 1970 would sort its alerts last).
MAX_MESSAGE_AGE_DAYS = env_int("MAX_MESSAGE_AGE_DAYS", 7, minimum=1)
DEVICE_AUTO_REGISTER = env_bool("DEVICE_AUTO_REGISTER", False)
DEVICE_AUTO_REGISTER_TENANT = os.environ.get("DEVICE_AUTO_REGISTER_TENANT", "")
if DEVICE_AUTO_REGISTER and not DEVICE_AUTO_REGISTER_TENANT:
    raise ImproperlyConfigured(
        "DEVICE_AUTO_REGISTER is on but DEVICE_AUTO_REGISTER_TENANT is empty; "
        "name the tenant that auto-registered devices join"
    )

# --- Processing ---------------------------------------------------------------------------

# Offline detection (apps/mqtt/presence.py): how often each kind of device is expected to report,
# in seconds; a kind not named, every DEVICE_OFFLINE_AFTER. A device's own interval wins.
DEVICE_OFFLINE_AFTER = env_int("DEVICE_OFFLINE_AFTER", 300, minimum=10)
DEVICE_REPORT_INTERVALS = env_int_map("DEVICE_REPORT_INTERVALS", {}, minimum=10)
# Kinds that send only events (a press, an alarm, a position on patrol): their silence is normal,
# so they are judged by their interval only once they have sent a heartbeat. Both are checked
# against the device kinds when the devices app loads.
DEVICE_EVENT_ONLY_KINDS = frozenset(
    env_list("DEVICE_EVENT_ONLY_KINDS", ["panic_button", "smoke", "door", "gps_tracker"])
)
# A device command's time to live when the operator names none (apps/devices/commands.py).
DEVICE_COMMAND_TTL_SECONDS = env_int("DEVICE_COMMAND_TTL_SECONDS", 300, minimum=1)
if DEVICE_COMMAND_TTL_SECONDS > 86400:
    raise ImproperlyConfigured(
        f"DEVICE_COMMAND_TTL_SECONDS={DEVICE_COMMAND_TTL_SECONDS} must be at most 86400 (a day)"
    )
LOW_BATTERY_PERCENT = env_float("LOW_BATTERY_PERCENT", 20.0)
SYSTEM_RESOURCE_ALERT_PERCENT = env_float("SYSTEM_RESOURCE_ALERT_PERCENT", 90.0)
SMOKE_ALARM_THRESHOLD = env_float("SMOKE_ALARM_THRESHOLD", 100.0)
TASK_MAX_RETRIES = env_int("TASK_MAX_RETRIES", 5, minimum=0)
# Deliveries of one batch that may kill their worker (a crash, the hard time limit) before it is
# split into single messages, and a single one dead-lettered (reason poison).
TASK_MAX_DELIVERIES = env_int("TASK_MAX_DELIVERIES", 3, minimum=1)
# NOC events whose sending was never confirmed (the process died after its commit, or the channel
# layer failed) are resent by beat once they are this old (apps/core/outbox.py).
BROADCAST_RESEND_AFTER_SECONDS = env_int("BROADCAST_RESEND_AFTER_SECONDS", 30, minimum=1)
# How long a processed message's idempotency key is kept: a redelivery older than this would be
# processed again, so it must outlast the broker session (MQTT_SESSION_EXPIRY) by far.
IDEMPOTENCY_RETENTION_DAYS = env_int("IDEMPOTENCY_RETENTION_DAYS", 7, minimum=1)
if IDEMPOTENCY_RETENTION_DAYS * 86400 <= MQTT_SESSION_EXPIRY:
    raise ImproperlyConfigured(
        f"IDEMPOTENCY_RETENTION_DAYS={IDEMPOTENCY_RETENTION_DAYS} must outlast "
        f"MQTT_SESSION_EXPIRY={MQTT_SESSION_EXPIRY} s, or redelivered messages count twice"
    )
if MAX_MESSAGE_AGE_DAYS > IDEMPOTENCY_RETENTION_DAYS:
    # A message is refused as too old before its key could be forgotten, so a late redelivery
    # can never be processed a second time.
    raise ImproperlyConfigured(
        f"MAX_MESSAGE_AGE_DAYS={MAX_MESSAGE_AGE_DAYS} must not exceed "
        f"IDEMPOTENCY_RETENTION_DAYS={IDEMPOTENCY_RETENTION_DAYS}"
    )
# What is forgotten, hourly, by beat: readings (by when received), dead letters, and alerts
# closed this long ago (with their history). Active alerts are kept however old.
READING_RETENTION_DAYS = env_int("READING_RETENTION_DAYS", 90, minimum=1)
DEAD_LETTER_RETENTION_DAYS = env_int("DEAD_LETTER_RETENTION_DAYS", 30, minimum=1)
ALERT_RETENTION_DAYS = env_int("ALERT_RETENTION_DAYS", 365, minimum=1)
CIRCUIT_BREAKER_FAILURE_THRESHOLD = env_int("CIRCUIT_BREAKER_FAILURE_THRESHOLD", 5, minimum=1)
CIRCUIT_BREAKER_RESET_SECONDS = env_int("CIRCUIT_BREAKER_RESET_SECONDS", 300, minimum=1)

# --- Notifications of alerts (apps/notifications, docs/notifications.md) ----------------------

# A webhook receiver that has not answered within this many seconds has failed this attempt.
NOTIFICATION_WEBHOOK_TIMEOUT_SECONDS = env_float("NOTIFICATION_WEBHOOK_TIMEOUT_SECONDS", 5.0)
# Attempts per delivery (webhook or e-mail), the retries spaced by capped, jittered backoff.
NOTIFICATION_MAX_ATTEMPTS = env_int("NOTIFICATION_MAX_ATTEMPTS", 5, minimum=1)
NOTIFICATION_RETRY_BASE_SECONDS = env_float("NOTIFICATION_RETRY_BASE_SECONDS", 5.0)
NOTIFICATION_RETRY_MAX_SECONDS = env_float("NOTIFICATION_RETRY_MAX_SECONDS", 300.0)
if not 0 < NOTIFICATION_RETRY_MAX_SECONDS < celery_settings.VISIBILITY_TIMEOUT_SECONDS:
    # A retry waits in its worker's memory until due; one held past the visibility timeout is
    # handed to another worker as well, and would be delivered twice.
    raise ImproperlyConfigured(
        f"NOTIFICATION_RETRY_MAX_SECONDS={NOTIFICATION_RETRY_MAX_SECONDS} must be above 0 and "
        f"below the broker's visibility timeout ({celery_settings.VISIBILITY_TIMEOUT_SECONDS} s)"
    )
# Storm control: at most this many notifications per recipient (webhook URL or e-mail address)
# per window; the rest of the window's are sent as one digest when it ends.
NOTIFICATION_MAX_PER_WINDOW = env_int("NOTIFICATION_MAX_PER_WINDOW", 10, minimum=1)
NOTIFICATION_WINDOW_SECONDS = env_int("NOTIFICATION_WINDOW_SECONDS", 300, minimum=1)
# E-mail goes through Django's backend: SMTP by default; the console or file backends for trials.
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("EMAIL_USE_TLS and EMAIL_USE_SSL are exclusive; set one")
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10, minimum=1)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "intelliwiz@localhost")
# Where the file backend (django.core.mail.backends.filebased.EmailBackend) writes messages.
EMAIL_FILE_PATH = Path(env_str("EMAIL_FILE_PATH", str(VAR_DIR / "mail")))
# --- Anomaly detection (apps/anomaly, docs/anomaly.md) ---------------------------------------

# A model per tenant and device kind learns from the telemetry received in this many days.
ANOMALY_TRAINING_DAYS = env_int("ANOMALY_TRAINING_DAYS", 28, minimum=1)
# Fewer complete readings than this keep the previous model; at most this many (the newest) are
# read: memory and time grow with it (ml_training's 4-hour limit).
ANOMALY_MIN_SAMPLES = env_int("ANOMALY_MIN_SAMPLES", 500, minimum=10)
ANOMALY_MAX_SAMPLES = env_int("ANOMALY_MAX_SAMPLES", 200_000, minimum=100)
if ANOMALY_MAX_SAMPLES < ANOMALY_MIN_SAMPLES:
    raise ImproperlyConfigured(
        f"ANOMALY_MAX_SAMPLES={ANOMALY_MAX_SAMPLES} is below "
        f"ANOMALY_MIN_SAMPLES={ANOMALY_MIN_SAMPLES}: no model could ever be trained"
    )
# Share of readings lacking a feature beyond which the data is refused as unfit.
ANOMALY_MAX_INCOMPLETE_SHARE = env_float("ANOMALY_MAX_INCOMPLETE_SHARE", 0.5)
# Share of training readings scoring at or above the threshold: set it to at least the share of
# anomalies expected in the training data (below it, the weaker anomalies pass unflagged); on
# clean data it is about the false positive rate.
ANOMALY_CONTAMINATION = env_float("ANOMALY_CONTAMINATION", 0.02)
for _name, _share in (
    ("ANOMALY_MAX_INCOMPLETE_SHARE", ANOMALY_MAX_INCOMPLETE_SHARE),
    ("ANOMALY_CONTAMINATION", ANOMALY_CONTAMINATION),
):
    if not 0 < _share < 1:
        raise ImproperlyConfigured(f"{_name}={_share:g} must be between 0 and 1")
# Each worker looks for a newly trained model at most this often (one Redis GET).
ANOMALY_MODEL_CHECK_SECONDS = env_float("ANOMALY_MODEL_CHECK_SECONDS", 5.0)

# --- HTTP / the local stack (make run) ---------------------------------------------------------

HTTP_HOST = env_str("HTTP_HOST", "127.0.0.1")
HTTP_PORT = env_int("HTTP_PORT", 8000, minimum=1)
HEALTH_CHECK_TIMEOUT = env_float("HEALTH_CHECK_TIMEOUT", 1.5)
# Required (as `Authorization: Bearer <key>`) by /monitoring/health/ and /metrics/export/ when set.
MONITORING_API_KEY = _strong("MONITORING_API_KEY", os.environ.get("MONITORING_API_KEY", ""))
# Every process writes its metrics here (prometheus_client multiprocess mode); /metrics/export/
# sums them. Each process needs it in its environment before it imports prometheus_client:
# `make run` and the systemd units set it.
PROMETHEUS_MULTIPROC_DIR = Path(
    env_str("PROMETHEUS_MULTIPROC_DIR", str(VAR_DIR / "prometheus"))
).resolve()
# prometheus_client reads the variable itself; make sure every process that loads these
# settings writes where /metrics/export/ reads, even when started by hand without it.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(PROMETHEUS_MULTIPROC_DIR)
DEMO_TENANT = env_str("DEMO_TENANT", "demo")
DEMO_OPERATOR = env_str("DEMO_OPERATOR", "operator")

# --- Client addresses, logins and the admin (issue 10) ----------------------------------------


def env_networks(name: str, default: list[str]) -> list[str]:
    """Comma-separated IP addresses or networks (`10.0.0.5`, `10.0.0.0/24`, `::1`)."""
    result = []
    for item in env_list(name, default):
        try:
            result.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ImproperlyConfigured(
                f"{name}: {item!r} is not an IP address or network (e.g. 10.0.0.5 or 10.0.0.0/24)"
            ) from None
    return result


# The client address (apps/core/client_address.py) is the peer's, unless the peer is one of these
# proxies: then the right-most X-Forwarded-For entry that is not one of them. Empty: no proxy is
# trusted and forwarding headers are ignored. Behind nginx on this host, set 127.0.0.1.
TRUSTED_PROXIES = env_networks("TRUSTED_PROXIES", [])

# Password guessing (django-axes): this many failed logins for one account (from any address),
# or from one address (for any accounts), lock that account or address out of every login path
# for LOGIN_COOLOFF_MINUTES after the last failure that counted (429 with Retry-After).
LOGIN_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 10, minimum=1)
LOGIN_COOLOFF_MINUTES = env_int("LOGIN_COOLOFF_MINUTES", 15, minimum=1)
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # refuses a locked-out login before its password
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(minutes=LOGIN_COOLOFF_MINUTES)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_CLIENT_IP_CALLABLE = "apps.core.client_address.client_address"
AXES_LOCKOUT_CALLABLE = "apps.noc.logins.lockout_response"
# Attempts while locked out are refused without being counted: the lockout ends on time, and a
# flood of them writes nothing. A success does not reset the counts (it would reset the address's
# count for every account, a free pass for an insider guessing colleagues' passwords).
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_RESET_ON_SUCCESS = False
# No row per successful login (nothing would prune them), no banner in every process's log.
AXES_DISABLE_ACCESS_LOG = True
AXES_VERBOSE = False

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 12},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# The Django admin sees every tenant's data: it is served only when enabled, only to superusers,
# and only to clients in ADMIN_ALLOWED_NETWORKS; anything else gets a 404.
ADMIN_ENABLED = env_bool("ADMIN_ENABLED", DEBUG)
ADMIN_ALLOWED_NETWORKS = env_networks("ADMIN_ALLOWED_NETWORKS", ["127.0.0.0/8", "::1"])

# --- Logging ------------------------------------------------------------------------------

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
LOG_FORMAT = env_str("LOG_FORMAT", "console")
if LOG_FORMAT not in {"console", "json"}:
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r} must be console or json")
LOGGING_CONFIG = None
configure_logging(level=LOG_LEVEL, fmt=LOG_FORMAT)

# --- Production: what must be set, and cookies for HTTPS behind a proxy ------------------------

if not DEBUG:
    _missing = [
        name
        for name, value in [
            ("MQTT_USERNAME", MQTT_USERNAME),
            ("MQTT_PASSWORD", MQTT_PASSWORD),
            ("MONITORING_API_KEY", MONITORING_API_KEY),
        ]
        if not value
    ]
    if _missing:
        raise ImproperlyConfigured(
            f"{', '.join(_missing)} must be set outside DEBUG: the broker refuses anonymous "
            "clients, and health and metrics must not be public (see .env.example)"
        )
    SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
    # Behind a TLS-terminating proxy, HTTPS is known from its X-Forwarded-Proto, believed only
    # when it is one of TRUSTED_PROXIES (apps/core/client_address.py sets the request's scheme).
