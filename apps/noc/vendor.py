"""The third-party JavaScript and CSS the NOC pages use, pinned: one entry per npm package.

`scripts/vendor_assets.py` downloads each tarball from the npm registry, refuses it unless its
sha512 equals `integrity` (the registry's `dist.integrity` for that version), and extracts only
`files` (each package's LICENSE among them) into `apps/noc/static/noc/vendor/<name>-<version>/`,
which is committed: the pages never load anything from another host. To bump a version, change
`version` and `integrity` here, run the script, and commit the new directory (the old one is
removed). Stdlib only: the script imports this module without Django.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

VENDOR_STATIC_DIR = "noc/vendor"  # under apps/noc/static/
# What the script writes into each package's directory: the integrity and each file's sha256.
VENDOR_RECORD = "VENDORED.json"


@dataclass(frozen=True)
class VendoredPackage:
    name: str
    version: str
    integrity: str  # "sha512-<base64>", as the registry's metadata gives it
    files: tuple[str, ...]  # paths inside the tarball's package/ directory

    @property
    def directory(self) -> str:
        return f"{VENDOR_STATIC_DIR}/{self.name}-{self.version}"

    @property
    def tarball_url(self) -> str:
        return f"https://registry.npmjs.org/{self.name}/-/{self.name}-{self.version}.tgz"

    def static_path(self, file: str) -> str:
        """The path `{% static %}` takes for one of `files`."""
        if file not in self.files:
            raise KeyError(f"{file!r} is not vendored from {self.name} {self.version}")
        return f"{self.directory}/{file}"


UPLOT = VendoredPackage(
    name="uplot",
    version="1.6.32",
    integrity="sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==",
    files=("LICENSE", "dist/uPlot.iife.min.js", "dist/uPlot.min.css"),
)
LEAFLET = VendoredPackage(
    name="leaflet",
    version="1.9.4",
    integrity="sha512-nxS1ynzJOmOlHp+iL3FyWqK89GtNL8U8rvlMOsQdTTssxZwCXh8N2NB3GDQOL+YR3XnWyZAxwQixURb+FA74PA==",
    files=(
        "LICENSE",
        "dist/leaflet.js",
        "dist/leaflet.css",
        # leaflet.css refers to these (layer control, default marker).
        "dist/images/layers.png",
        "dist/images/layers-2x.png",
        "dist/images/marker-icon.png",
        "dist/images/marker-icon-2x.png",
        "dist/images/marker-shadow.png",
    ),
)
PACKAGES = (UPLOT, LEAFLET)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def vendored_problems(static_root: Path) -> list[str]:
    """How the vendored directories under `static_root` (apps/noc/static) differ from PACKAGES:
    a package missing or recorded with another integrity, a file missing, changed or extra, or a
    directory no package names (a version left behind by a bump). Empty when they agree."""
    problems: list[str] = []
    for package in PACKAGES:
        directory = static_root / package.directory
        record_path = directory / VENDOR_RECORD
        if not record_path.is_file():
            problems.append(f"{package.directory}/ is missing: run scripts/vendor_assets.py")
            continue
        record = json.loads(record_path.read_text())
        if record.get("integrity") != package.integrity:
            problems.append(f"{package.directory}/ was extracted from another tarball")
        if sorted(record.get("files", {})) != sorted(package.files):
            problems.append(f"{package.directory}/{VENDOR_RECORD} lists other files")
        for name, digest in record.get("files", {}).items():
            path = directory / name
            if not path.is_file() or file_sha256(path) != digest:
                problems.append(f"{package.directory}/{name} is missing or changed")
        present = {
            str(path.relative_to(directory))
            for path in directory.rglob("*")
            if path.is_file() and path.name != VENDOR_RECORD
        }
        problems.extend(
            f"{package.directory}/{extra} is no file of the package"
            for extra in sorted(present - set(package.files))
        )
    expected = {package.directory.rsplit("/", 1)[1] for package in PACKAGES}
    vendor_dir = static_root / VENDOR_STATIC_DIR
    if vendor_dir.is_dir():
        problems.extend(
            f"{VENDOR_STATIC_DIR}/{child.name}/ belongs to no package of apps/noc/vendor.py"
            for child in sorted(vendor_dir.iterdir())
            if child.name not in expected
        )
    return problems
