#!/usr/bin/env python3
"""Write `.env` for the local stack on first run: DEBUG on, fresh secrets, demo auto-registration.

Never overwrites an existing file; one written before Redis had a password gets one added to its
REDIS_URL (when that names a local Redis, the one `make run` starts). Production does not use
this: it sets real variables and refuses to start without its secrets.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.fernet import Fernet

from apps.core.network import is_loopback

TEMPLATE = """\
# Written by `make run` on first start for the local development stack; edit freely.
# Every variable is described in .env.example.
DJANGO_DEBUG=true
DJANGO_SECRET_KEY={secret_key}
CHANNELS_ENCRYPTION_KEY={channels_key}
# make run's Redis requires this password; every client reads it from here.
REDIS_URL={redis_url}
DEVICE_AUTO_REGISTER=true
DEVICE_AUTO_REGISTER_TENANT=demo
"""
DEFAULT_REDIS = "127.0.0.1:6379"
REDIS_URL_LINE = re.compile(r"^(?P<head>\s*(?:export\s+)?REDIS_URL\s*=\s*)(?P<value>.*)$", re.M)


def redis_url(netloc: str = DEFAULT_REDIS, scheme: str = "redis") -> str:
    return f"{scheme}://:{secrets.token_urlsafe(32)}@{netloc}"


def add_redis_password(text: str) -> str | None:
    """`text` (an existing .env) with a password in its REDIS_URL, or None when it needs none:
    it has one, or it names a Redis elsewhere, which `make run` does not configure."""
    found = list(REDIS_URL_LINE.finditer(text))
    if not found:
        added = f"# Added by `make run`: its Redis requires a password.\nREDIS_URL={redis_url()}\n"
        return text + ("" if text.endswith("\n") or not text else "\n") + added
    line = found[-1]  # the one dotenv keeps
    value = line["value"].strip().strip("'\"") or f"redis://{DEFAULT_REDIS}"
    parts = urlsplit(value)
    if "@" in parts.netloc or not is_loopback(parts.hostname or ""):
        return None
    new = redis_url(parts.netloc, parts.scheme)
    return text[: line.start()] + line["head"] + new + text[line.end() :]


def main() -> int:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".env")
    if target.exists():
        upgraded = add_redis_password(target.read_text())
        if upgraded is not None:
            target.write_text(upgraded)
            print(
                f"Added a Redis password to REDIS_URL in {target}: make run's Redis requires it "
                "from now on (every process reads it from REDIS_URL)."
            )
        return 0
    text = TEMPLATE.format(
        secret_key=secrets.token_urlsafe(50),
        channels_key=Fernet.generate_key().decode(),
        redis_url=redis_url(),
    )
    # Created private, then written: the secrets are never readable by others.
    with os.fdopen(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(text)
    print(f"Wrote {target} with generated development secrets (DEBUG on).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
