"""Intake rules, message by message (the end-to-end path is in test_ingest.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apps.core.envelope import Envelope
from apps.devices.models import Device
from apps.mqtt.intake import Intake, Reason, Rejection, idempotency_key
from tests.factories import create_tenant_with_devices, now_iso, panic, payload, telemetry

pytestmark = pytest.mark.django_db


@pytest.fixture
def intake() -> Intake:
    create_tenant_with_devices("acme", "sensor-001", "panic-007", "guard-1", "gw-1")
    return Intake()


def test_the_runbooks_own_test_message_is_accepted_when_auto_registration_is_on(settings):
    settings.DEVICE_AUTO_REGISTER = True
    settings.DEVICE_AUTO_REGISTER_TENANT = "demo"
    body = '{"battery": 100, "signal": 95, "timestamp": "' + now_iso() + '"}'
    outcome = Intake().check("device/test/telemetry", body.encode())
    assert isinstance(outcome, Envelope)
    device = Device.objects.get(device_id="test")
    assert (device.tenant.name, device.auto_registered) == ("demo", True)


def test_unknown_devices_are_refused_while_auto_registration_is_off(intake):
    outcome = intake.check("device/nobody/telemetry", telemetry().encode())
    assert isinstance(outcome, Rejection)
    assert outcome.reason is Reason.UNKNOWN_DEVICE
    assert "register_device" in outcome.detail


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("device/sensor-001", Reason.TOPIC),
        ("device/sensor-001/telemetry/extra", Reason.TOPIC),
        ("device/sensor-001/status", Reason.TOPIC),
        ("device/bad id!/telemetry", Reason.TOPIC),
        ("custom/sensor-001/telemetry", Reason.TOPIC),
    ],
)
def test_topics_outside_the_grammar_are_refused(intake, topic, reason):
    outcome = intake.check(topic, telemetry().encode())
    assert isinstance(outcome, Rejection)
    assert outcome.reason is reason


def test_a_timestamp_without_a_zone_is_a_schema_error(intake):
    body = telemetry(timestamp="2026-11-27T10:00:00")
    outcome = intake.check("device/sensor-001/telemetry", body.encode())
    assert isinstance(outcome, Rejection)
    assert outcome.reason is Reason.SCHEMA
    assert "timestamp" in outcome.detail


def test_a_timestamp_within_the_allowed_skew_is_accepted(intake):
    outcome = intake.check(
        "device/sensor-001/telemetry", telemetry(timestamp=now_iso(200)).encode()
    )
    assert isinstance(outcome, Envelope)


def test_severity_and_alert_type_are_case_insensitive(intake):
    outcome = intake.check("alert/panic-007/panic", panic(severity="Critical").encode())
    assert isinstance(outcome, Envelope)
    assert outcome.payload["severity"] == "CRITICAL"
    assert outcome.payload["alert_type"] == "PANIC"


def test_an_unknown_alert_type_is_a_schema_error(intake):
    outcome = intake.check("alert/panic-007/panic", panic(alert_type="boredom").encode())
    assert isinstance(outcome, Rejection)
    assert outcome.reason is Reason.SCHEMA


def test_gps_payload_must_name_the_same_guard_as_the_topic(intake):
    body = payload(lat=1.0, lon=2.0, guard_id="guard-2")
    outcome = intake.check("guard/guard-1/gps", body.encode())
    assert isinstance(outcome, Rejection)
    assert outcome.reason is Reason.ID_MISMATCH


def test_the_idempotency_key_is_the_msg_id_and_device_time_when_present_else_a_hash():
    from datetime import UTC, datetime, timedelta

    at = datetime(2026, 11, 27, 10, 0, 0, 123456, tzinfo=UTC)
    key = idempotency_key("device/dev/telemetry", "42", at, b"{}")
    assert key == "20261127T100000.123456Z|device/dev/telemetry#42"
    # A device counting per topic: the same id on another topic is another message.
    assert idempotency_key("alert/dev/panic", "42", at, b"{}") != key
    # A counter that restarts after a reboot: the same id later is another message.
    assert idempotency_key("device/dev/telemetry", "42", at + timedelta(hours=3), b"{}") != key
    first = idempotency_key("device/dev/telemetry", None, at, b'{"a": 1}')
    assert first == idempotency_key("device/dev/telemetry", None, at, b'{"a": 1}')
    assert first != idempotency_key("device/dev/telemetry", None, at, b'{"a": 2}')
    assert first != idempotency_key("device/other/telemetry", None, at, b'{"a": 1}')


@given(
    at=st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
    )
)
def test_the_device_time_in_a_key_is_written_as_strftime_writes_it_for_every_year(at):
    # Keys already in the ledger must stay the keys of their redeliveries, whatever the year.
    expected = f"{at.astimezone(UTC):%Y%m%dT%H%M%S.%fZ}|device/dev/telemetry#7"
    assert idempotency_key("device/dev/telemetry", "7", at, b"{}") == expected


def test_a_redelivered_message_keeps_its_key_and_a_rebooted_counter_does_not_collide(intake):
    body = telemetry(msg_id="1", timestamp=now_iso(-60)).encode()
    first = intake.check("device/sensor-001/telemetry", body)
    again = intake.check("device/sensor-001/telemetry", body)
    after_reboot = intake.check(
        "device/sensor-001/telemetry", telemetry(msg_id="1", timestamp=now_iso()).encode()
    )
    assert isinstance(first, Envelope)
    assert isinstance(again, Envelope)
    assert isinstance(after_reboot, Envelope)
    assert first.key == again.key
    assert after_reboot.key != first.key


@pytest.mark.parametrize(
    ("body", "reason", "detail"),
    [
        ('{"battery": NaN, "timestamp": "%s"}', Reason.NON_FINITE, "NaN is not a number"),
        ('{"temperature": -Infinity, "timestamp": "%s"}', Reason.NON_FINITE, "-Infinity"),
        ('{"temperature": 1e400, "timestamp": "%s"}', Reason.NON_FINITE, "payload.temperature"),
        ('{"note": ["a", "b\\u0000c"], "timestamp": "%s"}', Reason.NUL, "payload.note[1]"),
        ('{"x\\u0000": 1, "timestamp": "%s"}', Reason.NUL, "payload key"),
        ('{"uptime": 9223372036854775808, "timestamp": "%s"}', Reason.OUT_OF_RANGE, "64 bits"),
    ],
    ids=["nan", "infinity", "overflowing-float", "nul-in-value", "nul-in-key", "huge-int"],
)
def test_values_no_store_can_hold_are_refused_with_their_own_reason(intake, body, reason, detail):
    topic = "system/gw-1/health" if "uptime" in body else "device/sensor-001/telemetry"
    outcome = intake.check(topic, (body % now_iso()).encode())
    assert isinstance(outcome, Rejection)
    assert outcome.reason is reason
    assert detail in outcome.detail


def test_the_largest_64_bit_integer_is_still_accepted(intake):
    body = payload(uptime=2**63 - 1)
    assert isinstance(intake.check("system/gw-1/health", body.encode()), Envelope)


def test_a_timestamp_older_than_the_allowed_age_is_refused(intake, settings):
    eight_days = 8 * 86400
    outcome = intake.check(
        "device/sensor-001/telemetry", telemetry(timestamp=now_iso(-eight_days)).encode()
    )
    assert isinstance(outcome, Rejection)
    assert outcome.reason is Reason.STALE_TIMESTAMP
    assert "MAX_MESSAGE_AGE_DAYS" in outcome.detail
    six_days = 6 * 86400
    accepted = intake.check(
        "device/sensor-001/telemetry", telemetry(timestamp=now_iso(-six_days)).encode()
    )
    assert isinstance(accepted, Envelope)


def test_the_subscriber_the_acl_and_the_routes_follow_the_topic_table():
    from apps.core.tasks.celery_settings import TASK_QUEUES
    from apps.mqtt.credentials import render_acl
    from apps.mqtt.subscriber import ALLOWED_TOPIC_PREFIXES
    from apps.mqtt.topics import TOPIC_KINDS

    assert list(ALLOWED_TOPIC_PREFIXES) == list(dict.fromkeys(kind.prefix for kind in TOPIC_KINDS))
    acl = render_acl("app-account", [(f"dev-{kind}", kind) for kind in Device.Kind])
    for kind in TOPIC_KINDS:
        assert kind.task in TASK_QUEUES, f"{kind.name}'s task has no queue in celery_settings"
        for device_kind in Device.Kind:
            rule = f"topic write {kind.prefix}dev-{device_kind}/#"
            assert (rule in acl) == (device_kind in kind.published_by), rule
        # A device auto-registered where it was first heard may go on publishing there.
        assert kind.registers_as in kind.published_by


def test_an_alert_type_the_system_raises_cannot_be_sent_by_a_device(intake):
    outcome = intake.check("alert/panic-007/panic", panic(alert_type="offline").encode())
    assert isinstance(outcome, Rejection)
    assert outcome.reason is Reason.SCHEMA
    allowed = "'PANIC', 'SOS', 'INTRUSION', 'FIRE', 'MEDICAL' or 'EQUIPMENT_FAILURE'"
    assert outcome.detail == f"alert_type: Input should be {allowed}; see docs/messages.md#alert"


def test_device_timestamps_are_kept_in_utc(intake):
    from datetime import UTC, datetime, timedelta, timezone

    utc = datetime.now(tz=UTC).replace(microsecond=0) - timedelta(hours=1)
    local = utc.astimezone(timezone(timedelta(hours=5, minutes=30)))
    outcome = intake.check(
        "device/sensor-001/telemetry", telemetry(timestamp=local.isoformat()).encode()
    )
    assert isinstance(outcome, Envelope)
    assert outcome.payload["timestamp"] == utc.isoformat().replace("+00:00", "Z")


def test_every_id_a_payload_gives_must_match_the_topic(intake):
    body = payload(lat=1.0, lon=2.0, guard_id="guard-1", device_id="someone-else")
    outcome = intake.check("guard/guard-1/gps", body.encode())
    assert isinstance(outcome, Rejection)
    assert outcome.reason is Reason.ID_MISMATCH
    assert "device_id='someone-else'" in outcome.detail


# Found by tests/security/test_intake_fuzz.py: each was a crash, an envelope no store or
# consumer takes, or a reason that could not be stored. `{now}` is a valid timestamp.
FUZZ_FINDINGS = [
    ("device/sensor-001/telemetry", '{"x": ' + "[" * 5000 + "]" * 5000 + "}", "json"),
    ("device/sensor-001/telemetry", '{"timestamp": "0001-01-01T00:00:00+01:00"}', "schema"),
    ("device/sensor-001/telemetry", '{"timestamp": "9999-12-31T23:59:59-01:00"}', "schema"),
    ("device/sensor-001/telemetry", '{"connectivity": "4G\\ud800"}', "encoding"),
    ("device/sensor-001/telemetry", '{"msg_id": "\\udfff"}', "encoding"),
    ("device/sensor-001/telemetry", '{"k\\u0000\\ud800": [1e999]}', "nul_character"),
    ("device/sensor-001/telemetry", '{"k\\u0001\\u0085": [1e999]}', "non_finite_number"),
    ("device/sensor-001/telemetry", '{"connectivity": "' + "ß" * 32 + '"}', "schema"),
    ("sensor/sensor-001/status", '{"type": "' + "İ" * 32 + '"}', "schema"),
    ("sensor/sensor-001/status", '{"type": "smoke", "value": "Infinity"}', "schema"),
    ("sensor/sensor-001/status", '{"type": "smoke", "state": "' + "ﬃ" * 20 + '"}', "schema"),
    ("system/gw-1/health", '{"uptime": "99999999999999999999"}', "schema"),
    ("alert/panic-007/fire\n", '{"alert_type": "fire"}', "topic"),
    ("alert/panic-007/fi\x00re", '{"alert_type": "fire"}', "topic"),
    ("alert/panic-007/\ud800", '{"alert_type": "fire"}', "topic"),
]


@pytest.mark.parametrize(("topic", "body", "reason"), FUZZ_FINDINGS)
def test_what_the_fuzzer_found_is_refused_with_a_printable_reason(intake, topic, body, reason):
    document = body[:-1] + f', "timestamp": "{now_iso()}"}}' if "timestamp" not in body else body
    outcome = intake.check(topic, document.encode())
    assert isinstance(outcome, Rejection), outcome
    assert outcome.reason.value == reason, outcome.detail
    # One printable line: no NUL or lone surrogate (no database stores them), nor a newline
    # that would forge a log line.
    assert outcome.detail.isprintable(), outcome.detail


def test_the_cache_of_refused_ids_forgets_the_oldest_beyond_its_bound(
    intake, monkeypatch, django_assert_num_queries
):
    from apps.mqtt import directory

    monkeypatch.setattr(directory, "UNKNOWN_MAX_ENTRIES", 10)
    body = telemetry().encode()
    for n in range(11):
        intake.check(f"device/stranger-{n}/telemetry", body)
    with django_assert_num_queries(0):
        intake.check("device/stranger-10/telemetry", body)  # refused lately: remembered
    with django_assert_num_queries(1):
        intake.check("device/stranger-0/telemetry", body)  # the oldest: forgotten, asked again


def test_a_devices_answer_to_a_command_passes_intake_like_every_message(intake):
    import uuid

    def check(topic: str, **fields: object) -> Envelope | Rejection:
        body = {"command_id": str(uuid.uuid4()), "result": "SUCCESS", **fields}
        return intake.check(topic, payload(**body).encode())

    accepted = check("device/sensor-001/command_ack", detail="done")
    assert isinstance(accepted, Envelope)
    assert accepted.kind == "command_ack"
    assert accepted.payload["result"] == "success"
    refusals = {
        "command_id": check("device/sensor-001/command_ack", command_id="42"),
        "result": check("device/sensor-001/command_ack", result="maybe"),
        "detail": check("device/sensor-001/command_ack", detail="x" * 1001),
        "device_id": check("device/sensor-001/command_ack", device_id="panic-007"),
        "ghost": check("device/ghost-1/command_ack"),
        "segment": check("device/sensor-001/command_acks"),
    }
    reasons = {
        name: (r.reason, r.detail) for name, r in refusals.items() if isinstance(r, Rejection)
    }
    assert {name: reason for name, (reason, _) in reasons.items()} == {
        "command_id": Reason.SCHEMA,
        "result": Reason.SCHEMA,
        "detail": Reason.SCHEMA,
        "device_id": Reason.ID_MISMATCH,
        "ghost": Reason.UNKNOWN_DEVICE,
        "segment": Reason.TOPIC,
    }
    assert "use command_ack or telemetry" in reasons["segment"][1]
