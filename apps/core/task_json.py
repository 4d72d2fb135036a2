"""Task messages' JSON, read and written with msgspec: the same bytes, a tenth of the CPU.

Kombu's JSON codec spends more on a batch of 100 envelopes than the subscriber spends
validating them (bench/profile_worker.py: ~13 µs per message to write, ~20 µs to read). This
codec writes the same standard JSON under the same content type, `application/json`, so a
worker of an earlier release reads what it writes, and it reads every JSON message: one that
carries kombu's own tagged values (`{"__type__": "datetime", ...}`, written for arguments JSON
has no type for) is read by kombu's codec, as before. Never pickle.

A batch's body is compressed (`compression_for`): its envelopes repeat the same field names and
topics, so zlib makes 110 KB of 300 messages about 19 KB, which every later copy of it up to
the worker handles instead (Redis's queue, the worker's fetch, its copy in the `unacked` hash;
the worker's main process decompresses it before handing it to a pool process). At zlib's
level 1: level 6, kombu's default, took the subscriber 4 µs a message and saved only 3 KB
more. Any kombu reads it: the content type is zlib's own.
"""

from __future__ import annotations

import functools
import zlib
from typing import Any

import msgspec
from kombu import compression
from kombu.serialization import register
from kombu.utils import json as kombu_json

SERIALIZER = "msgspec_json"  # send_task(..., serializer=SERIALIZER)
CONTENT_TYPE = "application/json"
COMPRESSION = "zlib"  # send_task(..., compression=compression_for(n))
# A batch this large or larger is compressed; a smaller one (an alert, a quiet fleet's batch)
# gains little and would pay the time on its way to the NOC.
COMPRESS_FROM_MESSAGES = 50

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def dumps(value: Any) -> bytes:
    return _encoder.encode(value)


def loads(data: bytes | str) -> Any:
    tagged = b"__type__" in data if isinstance(data, bytes) else "__type__" in data
    if tagged:  # possibly a value kombu's codec tagged: let it revive it
        return kombu_json.loads(data)
    return _decoder.decode(data)


def compression_for(messages: int) -> str | None:
    """The compression of a task message carrying `messages` envelopes, if any."""
    return COMPRESSION if messages >= COMPRESS_FROM_MESSAGES else None


def register_codec() -> None:
    """Write with SERIALIZER and read every `application/json` task message with `loads`;
    compress with zlib at level 1 (read as any zlib stream is)."""
    # The stubs say an encoder returns str; kombu takes bytes too (its msgpack codec does).
    register(SERIALIZER, dumps, loads, content_type=CONTENT_TYPE, content_encoding="utf-8")  # type: ignore[arg-type]
    compression.register(
        functools.partial(zlib.compress, level=1),
        zlib.decompress,
        "application/x-gzip",  # zlib's, as kombu registers it
        aliases=["gzip", COMPRESSION],
    )
