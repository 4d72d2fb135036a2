"""A dead member's share of a shared subscription (apps/mqtt/adoption.py), on the real broker.

Mosquitto 2.0 keeps assigning a disconnected member its share, queued in its session: these
tests leave such a session behind (a member that subscribed, then went away) and hold the
survivors to draining it and ending it, or to leaving it to the member when it comes back.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import replace

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from apps.core import intake_status
from apps.core.redis_client import state_redis
from apps.devices.models import TelemetryReading
from apps.mqtt.adoption import Adopter
from apps.mqtt.subscriber import Lane, Subscriber, SubscriberConfig
from tests import environment
from tests.factories import create_tenant_with_devices, telemetry
from tests.services import Service, mqtt_publish, mqtt_session_kept, wait_for

PORT = environment.MQTT_PORT


class Member:
    """A group member as the broker sees it: a persistent session subscribed to the group's
    telemetry, connected or gone."""

    def __init__(self, client_id: str, group: str) -> None:
        self.client_id, self.group = client_id, group
        self.disconnects: list[str] = []
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.on_disconnect = lambda _c, _u, _f, code, _p: self.disconnects.append(str(code))

    def connect(self) -> None:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", PORT, clean_start=False, properties=properties)
        self.client.loop_start()
        wait_for(self.client.is_connected, timeout=10, what=f"{self.client_id} to connect")

    def join(self) -> None:
        """Connect and subscribe to the group, then leave: the session stays, subscribed."""
        self.connect()
        _info, mid = self.client.subscribe(f"$share/{self.group}/device/#", qos=1)
        acknowledged: list[int] = []
        self.client.on_subscribe = lambda _c, _u, m, _r, _p: acknowledged.append(m)
        wait_for(lambda: mid in acknowledged, timeout=10, what="SUBACK")
        self.leave()

    def leave(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def silence(group: str, client_id: str, seconds: float = 600) -> None:
    """Make `client_id` a member of `group` whose last beat was `seconds` ago (Redis's clock)."""
    client = state_redis()
    now, _micros = client.time()
    client.hset(intake_status.MEMBERS_KEY_PREFIX + group, client_id, repr(now - seconds))


@pytest.fixture
def group() -> str:
    return f"adopt-{secrets.token_hex(4)}"


@pytest.fixture
def gone_member(group: str, mosquitto_broker: Service) -> Iterator[Member]:
    member = Member(f"gone-{secrets.token_hex(4)}", group)
    member.join()
    yield member
    member.client.loop_stop()
    mqtt_session_kept(PORT, member.client_id)  # ends the session if a test left it


def test_a_survivor_drains_a_silent_members_queued_share_and_ends_its_session(
    redis_client: object,
    all_queue_workers: list[Service],
    start_subscriber: Callable[..., Service],
    transactional_db: None,
    group: str,
    gone_member: Member,
):
    create_tenant_with_devices("acme", "sensor-001")
    survivor = start_subscriber(MQTT_SHARED_GROUP=group, MQTT_SHARED_ADOPT_AFTER="10")
    published = [("device/sensor-001/telemetry", telemetry(msg_id=f"a{n}")) for n in range(40)]
    mqtt_publish(PORT, published)
    # Half of them are assigned to the member that is gone, and wait in its session.
    wait_for(lambda: TelemetryReading.objects.count() >= 10, timeout=60, what="the live share")
    assert TelemetryReading.objects.count() < 40, "nothing was queued for the gone member"

    silence(f"{group}/{Lane.ALL.value}", gone_member.client_id)
    wait_for(lambda: TelemetryReading.objects.count() == 40, timeout=60, what="all 40 stored")
    wait_for(
        lambda: "adopted session drained and ended" in survivor.log(),
        timeout=30,
        what="the adopter to end the session",
    )
    assert not mqtt_session_kept(PORT, gone_member.client_id)
    assert gone_member.client_id not in intake_status.members(state_redis(), f"{group}/all")
    # Nothing new is assigned to it: the next messages all reach the survivor.
    mqtt_publish(
        PORT, [("device/sensor-001/telemetry", telemetry(msg_id=f"b{n}")) for n in range(10)]
    )
    wait_for(lambda: TelemetryReading.objects.count() == 50, timeout=30, what="10 more stored")


def test_a_member_that_returns_takes_its_session_back_and_the_adopter_leaves_it_be(
    redis_client: object, transactional_db: None, group: str, gone_member: Member
):
    members = f"{group}/{Lane.ALL.value}"
    config = replace(SubscriberConfig.from_settings(), shared_group=group, adopt_after=10)
    adopter = Adopter(
        members,
        "survivor",
        10,
        lambda member: Subscriber(replace(config, client_id=member), adopted=True),
    )
    silence(members, gone_member.client_id)

    def adopted_and_released() -> bool:
        adopter.step()
        return adopter.current is not None and adopter.current.session.released_at is not None

    wait_for(adopted_and_released, timeout=30, what="the adopter to hold the session")
    session = adopter.current.session  # type: ignore[union-attr]

    # The member comes back; connecting, it beats, as every subscriber does.
    gone_member.connect()
    gone_member.disconnects.clear()  # its leaving earlier
    intake_status.beat_member(state_redis(), members, gone_member.client_id)
    wait_for(
        lambda: adopter.step() or adopter.current is None, timeout=30, what="the adopter to stop"
    )
    assert session.ended is not None

    adopter.next_look_at = 0.0  # look again now: the member beats, so it is not adopted again
    adopter.step()
    assert adopter.current is None
    assert gone_member.client.is_connected()
    assert gone_member.disconnects == []
    gone_member.leave()


def test_only_one_survivor_may_adopt_a_member_until_it_lets_go(redis_client: object):
    client = state_redis()
    assert intake_status.claim_adoption(client, "gone", "b", ttl=60)
    assert not intake_status.claim_adoption(client, "gone", "c", ttl=60)
    assert intake_status.claim_adoption(client, "gone", "b", ttl=60)  # renewing its own
    intake_status.release_adoption(client, "gone", "c")  # not c's to release
    assert not intake_status.claim_adoption(client, "gone", "c", ttl=60)
    intake_status.release_adoption(client, "gone", "b")
    assert intake_status.claim_adoption(client, "gone", "c", ttl=60)
