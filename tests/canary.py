"""The canary scan: no secret the suite used may appear in a log the suite produced.

Every secret of a test run is a canary (tests/environment.py `canary()`: the Redis password, the
Django, JWT and monitoring keys, the Fernet key, operators' passwords). At the end of the session
every log file under the scratch directory (services, workers, subscribers, Daphne, Mosquitto,
Redis, and the stacks and services tests start under tmp_path) and the output pytest captured for
each test are searched for each canary, plain, URL-encoded and base64; for this run's mark (part
of a secret); and for a JWT signed with a canary (every token the suite issued, in any process).
A hit fails the session, naming the file and line, never the secret. Loaded with
`-p tests.canary` (pyproject.toml), after tests.environment.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from tests import environment

# A compact JWS whose header and payload are JSON objects (`{"` is `eyJ` in base64).
JWT = re.compile(rb"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Leak:
    where: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.where}:{self.line}: {self.what}"


def _base64_cores(raw: bytes) -> Iterator[bytes]:
    """What base64 of a text containing `raw` contains, whatever `raw`'s offset in it: only the
    characters that depend on `raw` alone, for each of the three alignments and both alphabets."""
    for offset in range(3):
        start = -(-8 * offset // 6)  # first character past the bytes before `raw`
        end = 8 * (offset + len(raw)) // 6  # last character made of `raw` only
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            yield encode(b"\0" * offset + raw)[start:end]


def needles(canaries: Mapping[str, str], mark: str) -> dict[bytes, str]:
    """Each form a canary may take in a log, with what it is (never the secret itself)."""
    found = {mark.encode(): "this run's canary mark (part of a secret)"}
    for role, value in canaries.items():
        raw = value.encode()
        found.setdefault(raw, f"the {role} canary")
        found.setdefault(quote(value, safe="").encode(), f"the {role} canary, URL-encoded")
        for core in _base64_cores(raw):
            found.setdefault(core, f"the {role} canary, base64")
    return found


def _signed_by(token: bytes, keys: Mapping[str, str]) -> str | None:
    signing_input, _, signature = token.rpartition(b".")
    for role, key in keys.items():
        digest = hmac.new(key.encode(), signing_input, hashlib.sha256).digest()
        if hmac.compare_digest(base64.urlsafe_b64encode(digest).rstrip(b"="), signature):
            return role
    return None


def scan_text(where: str, data: bytes, canaries: Mapping[str, str], mark: str) -> Iterator[Leak]:
    forms = needles(canaries, mark)
    if not any(form in data for form in forms) and not JWT.search(data):
        return  # the common case, decided without splitting into lines
    for number, line in enumerate(data.split(b"\n"), start=1):
        found = {what for form, what in forms.items() if form in line}
        signers = {_signed_by(token, canaries) for token in JWT.findall(line)} - {None}
        found |= {f"a JWT signed with the {role} canary" for role in signers}
        if len(found) > 1:  # a whole canary also contains the mark: name the canary
            found.discard(forms[mark.encode()])
        yield from (Leak(where, number, what) for what in sorted(found))


def is_log(path: Path) -> bool:
    name = path.name
    return name == "log" or name.endswith(".log") or ".log." in name or path.parent.name == "log"


def log_files(roots: Iterable[Path]) -> Iterator[Path]:
    for root in roots:
        for path in sorted(root.rglob("*")):
            if is_log(path) and path.is_file() and not path.is_symlink():
                yield path


def scan_logs(roots: Iterable[Path], canaries: Mapping[str, str], mark: str) -> list[Leak]:
    leaks: list[Leak] = []
    for path in log_files(roots):
        try:
            data = path.read_bytes()
        except OSError:  # removed while we looked
            continue
        leaks.extend(scan_text(str(path), data, canaries, mark))
    return leaks


# --- pytest hooks --------------------------------------------------------------------------

_captured_leaks: list[Leak] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """What pytest captured of a test (its log records, stdout, stderr), failed or not."""
    for section, content in report.sections:
        if section.startswith("Captured"):
            where = f"{report.nodeid} [{section}]"
            _captured_leaks.extend(
                scan_text(where, content.encode(), environment.CANARIES, environment.CANARY_MARK)
            )


@pytest.hookimpl(trylast=True)  # after the session's fixtures stopped their services
def pytest_sessionfinish(session: pytest.Session) -> None:
    leaks = _captured_leaks + scan_logs(
        [environment.SCRATCH], environment.CANARIES, environment.CANARY_MARK
    )
    if not leaks:
        return
    environment.keep_scratch()
    lines = [str(leak) for leak in leaks[:50]]
    if len(leaks) > 50:
        lines.append(f"… and {len(leaks) - 50} more")
    lines.append(f"(the logs are kept in {environment.SCRATCH})")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        print("A secret of the test run is in a log:", *lines, sep="\n", file=sys.stderr)
    else:
        reporter.write_sep("=", "a secret of the test run is in a log", red=True)
        for line in lines:
            reporter.write_line(line)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
