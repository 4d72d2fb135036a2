"""Logging for every process: structlog on top of the standard library.

`structlog.get_logger(__name__).info("event", key=value)` is how the code logs. Output is one
line per event, human-readable (`LOG_FORMAT=console`) or JSON for log shippers.
"""

from __future__ import annotations

import logging
import logging.config
import re

import structlog

_SHARED_PROCESSORS: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)[^/\s]+@", re.IGNORECASE)


def mask_url(text: str) -> str:
    """`text` with the credentials of every URL in it shown as `***`, as the health script
    shows them: `redis://:secret@host:6379` becomes `redis://***@host:6379`."""
    return _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)


class CountChannelLayerDrops(logging.Filter):
    """channels_redis drops a group message for each channel already holding its capacity
    (CHANNELS_CAPACITY) and says so only at INFO: count each drop
    (`noc_events_dropped_total{reason="channel_full"}`) and log it as a warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "channels over capacity" in record.msg:
            from apps.core import metrics  # the metrics read the settings, not yet loaded here

            args = record.args if isinstance(record.args, tuple) else ()
            dropped = int(str(args[0])) if args and str(args[0]).isdigit() else 1
            metrics.NOC_EVENTS_DROPPED.labels(reason="channel_full").inc(dropped)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def configure_logging(*, level: str, fmt: str) -> None:
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {
                "structured": {
                    "()": structlog.stdlib.ProcessorFormatter,
                    "processors": [
                        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        structlog.processors.format_exc_info,
                        renderer,
                    ],
                    "foreign_pre_chain": _SHARED_PROCESSORS,
                }
            },
            "filters": {"channel_layer_drops": {"()": CountChannelLayerDrops}},
            "handlers": {
                "console": {"class": "logging.StreamHandler", "formatter": "structured"},
            },
            "root": {"handlers": ["console"], "level": level},
            "loggers": {
                # Quiet libraries that log every connection at INFO.
                "daphne": {"level": "WARNING"},
                "django.channels.server": {"level": "WARNING"},
                # Its one word on dropped NOC events is at INFO: counted and raised to WARNING.
                "channels_redis.core": {"level": "INFO", "filters": ["channel_layer_drops"]},
            },
        }
    )
    structlog.configure(
        processors=[
            *_SHARED_PROCESSORS,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
