#!/usr/bin/env python3
"""Write `.env` for the local stack on first run: DEBUG on, fresh secrets, demo auto-registration.

Never overwrites an existing file. Production does not use this: it sets real variables and
refuses to start without DJANGO_SECRET_KEY and CHANNELS_ENCRYPTION_KEY.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

from cryptography.fernet import Fernet

TEMPLATE = """\
# Written by `make run` on first start for the local development stack; edit freely.
# Every variable is described in .env.example.
DJANGO_DEBUG=true
DJANGO_SECRET_KEY={secret_key}
CHANNELS_ENCRYPTION_KEY={channels_key}
DEVICE_AUTO_REGISTER=true
DEVICE_AUTO_REGISTER_TENANT=demo
"""


def main() -> int:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".env")
    if target.exists():
        return 0
    target.write_text(
        TEMPLATE.format(
            secret_key=secrets.token_urlsafe(50),
            channels_key=Fernet.generate_key().decode(),
        )
    )
    target.chmod(0o600)
    print(f"Wrote {target} with generated development secrets (DEBUG on).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
