"""The committed third-party assets are exactly what apps/noc/vendor.py pins (no network)."""

import shutil
from pathlib import Path

from apps.noc.vendor import PACKAGES, VENDOR_STATIC_DIR, vendored_problems
from tests.services import ROOT

STATIC_ROOT = ROOT / "apps" / "noc" / "static"


def test_the_vendored_files_agree_with_the_pinned_manifest():
    assert vendored_problems(STATIC_ROOT) == []
    for package in PACKAGES:
        assert "LICENSE" in package.files
        assert package.integrity.startswith("sha512-")


def test_a_changed_extra_or_left_behind_vendored_file_is_reported(tmp_path: Path):
    shutil.copytree(STATIC_ROOT / VENDOR_STATIC_DIR, tmp_path / VENDOR_STATIC_DIR)
    package = PACKAGES[0]
    changed = tmp_path / package.static_path(package.files[-1])
    changed.write_text(changed.read_text() + "/* edited by hand */")
    (tmp_path / package.directory / "extra.js").write_text("")
    (tmp_path / VENDOR_STATIC_DIR / f"{package.name}-0.0.1").mkdir()

    problems = vendored_problems(tmp_path)

    assert problems == [
        f"{package.directory}/{package.files[-1]} is missing or changed",
        f"{package.directory}/extra.js is no file of the package",
        f"{VENDOR_STATIC_DIR}/{package.name}-0.0.1/ belongs to no package of apps/noc/vendor.py",
    ]
