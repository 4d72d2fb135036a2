"""The access log masks what a client should never have put in a URL, and keeps the rest."""

import pytest

from apps.core.daphne_server import redact

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJ1c2VyX2lkIjoxfQ.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("GET /api/alerts/?token=abc", "GET /api/alerts/?token=***"),
        (
            "GET /api/alerts/?access_token=abc&status=open",
            "GET /api/alerts/?access_token=***&status=open",
        ),
        ("GET /x/?api%5Fkey=abc", "GET /x/?api%5Fkey=***"),
        ("GET /x/?password=hunter2&limit=5", "GET /x/?password=***&limit=5"),
        (
            "WSCONNECTING /ws/noc/dashboard/?session=abc",
            "WSCONNECTING /ws/noc/dashboard/?session=***",
        ),
        (f"GET /api/alerts/?t={JWT}", "GET /api/alerts/?t=***"),
        (f"GET /api/{JWT}/", "GET /api/***/"),
        (f"GET /x/?{JWT}", "GET /x/?***"),
    ],
)
def test_the_access_log_masks_secrets_in_the_request_line(line: str, expected: str):
    assert redact(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "GET /api/alerts/?status=open&severity=critical&limit=100",
        "GET /api/devices/panic-007/readings/?kind=telemetry",
        "GET /monitoring/health/",
        "WSCONNECT /ws/noc/dashboard/",
    ],
)
def test_the_access_log_keeps_ordinary_request_lines_whole(line: str):
    assert redact(line) == line
