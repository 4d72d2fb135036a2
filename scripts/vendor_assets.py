#!/usr/bin/env python3
"""Vendor the NOC pages' JavaScript and CSS (apps/noc/vendor.py pins them) from the npm registry.

    .venv/bin/python scripts/vendor_assets.py          # download, verify, extract
    .venv/bin/python scripts/vendor_assets.py --check  # no network: do the files agree?

Each tarball must match its pinned sha512 before anything is extracted; only the listed files
(LICENSE among them) land in apps/noc/static/noc/vendor/<name>-<version>/, with a VENDORED.json
recording the integrity and each file's sha256. A directory no package names any more (the old
version after a bump) is removed. Stdlib only.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path

from apps.noc.vendor import (
    PACKAGES,
    VENDOR_RECORD,
    VENDOR_STATIC_DIR,
    VendoredPackage,
    file_sha256,
    vendored_problems,
)

STATIC_ROOT = Path(__file__).resolve().parent.parent / "apps" / "noc" / "static"
MAX_TARBALL_BYTES = 20 * 1024 * 1024


def download(url: str) -> bytes:
    if not url.startswith("https://registry.npmjs.org/"):
        raise SystemExit(f"refusing to download from {url}: only the npm registry")
    with urllib.request.urlopen(url, timeout=60) as answer:  # noqa: S310  (https, checked above)
        body: bytes = answer.read(MAX_TARBALL_BYTES + 1)
    if len(body) > MAX_TARBALL_BYTES:
        raise SystemExit(f"{url} is larger than {MAX_TARBALL_BYTES} bytes")
    return body


def verify(package: VendoredPackage, tarball: bytes) -> None:
    algorithm, _, expected = package.integrity.partition("-")
    if algorithm != "sha512":
        raise SystemExit(f"{package.name}: pin a sha512 integrity, not {algorithm}")
    actual = base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    if actual != expected:
        raise SystemExit(
            f"{package.name} {package.version}: the tarball's sha512 is {actual}, "
            f"not the pinned {expected}; nothing was extracted"
        )


def extract(package: VendoredPackage, tarball: bytes) -> None:
    target = STATIC_ROOT / package.directory
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    digests: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        for name in package.files:
            member = archive.getmember(f"package/{name}")  # KeyError: a file the version lacks
            source = archive.extractfile(member) if member.isfile() else None
            if source is None:
                raise SystemExit(f"{package.name}: package/{name} is not a regular file")
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(source.read())
            digests[name] = file_sha256(path)
    record = {
        "name": package.name,
        "version": package.version,
        "integrity": package.integrity,
        "files": dict(sorted(digests.items())),
    }
    (staging / VENDOR_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def remove_stale() -> None:
    wanted = {package.directory.rsplit("/", 1)[1] for package in PACKAGES}
    for child in (STATIC_ROOT / VENDOR_STATIC_DIR).iterdir():
        if child.is_dir() and child.name not in wanted:
            print(f"removing {child.relative_to(STATIC_ROOT)}/ (no package names it)")
            shutil.rmtree(child)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare only; no network")
    if not parser.parse_args().check:
        for package in PACKAGES:
            print(f"{package.name} {package.version}: {package.tarball_url}")
            tarball = download(package.tarball_url)
            verify(package, tarball)
            extract(package, tarball)
        remove_stale()
    problems = vendored_problems(STATIC_ROOT)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"{len(PACKAGES)} packages vendored in {STATIC_ROOT / VENDOR_STATIC_DIR}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
