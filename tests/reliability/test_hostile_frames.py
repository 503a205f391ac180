"""Hostile WebSocket frames: whatever a client sends, it gets an error frame (or a
subscription), never a crashed socket, and the socket keeps working afterwards."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aether_django.consumers import EventsConsumer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _own_subjects(settings):
    """These tests are about frames, not volume: a subject prefix of their own keeps a
    superuser's ``*`` from ``all`` off every stream the rest of the suite has written
    (replaying all of them on a loaded machine outlasted the reply timeout)."""
    settings.AETHER = {**settings.AETHER, "SUBJECT_PREFIX": f"hf{uuid.uuid4().hex[:8]}.events"}


#: A field left out of a frame.
ABSENT = object()

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
#: For each field of a client frame, the kinds of value the protocol tells apart (valid
#: and invalid), so that every combination of kinds is reachable, not only random JSON.
NAMESPACES = ["orders", "a.orders", "a.*", "a.>", ">", "*", "ord*", "bad..x", "", "a.>.b"]
SEQUENCES = [1, 5, 2**63, 2**64 - 1, 2**64, 0, -1, 1.5, True, False]
FIELDS: dict[str, list[object]] = {
    "action": ["subscribe", "unsubscribe", "dance", None, 1],
    "id": ["s", "t", "x" * 100, "x" * 101, "", 7, None],
    "namespace": [*NAMESPACES, 3, None, ["orders"]],
    "event_types": [["OrderPlaced"], [], ["a"] * 101, ["", "x"], [[1]], [{"a": 1}], "x", None],
    "actor_pattern": ["order-7", "order-*", "eu.>", "a..b", "", 5, None],
    "from": ["new", "all", "yesterday", "", *SEQUENCES, None, {"orders": 1}],
}
FIELD_VALUES = st.one_of(JSON, st.sampled_from([*NAMESPACES, "new", "all"]))
FRAMES = st.one_of(
    st.text(min_size=1, max_size=200),
    JSON.map(json.dumps),
    st.fixed_dictionaries(
        {"action": st.sampled_from(FIELDS["action"])},
        optional={
            name: st.one_of(st.sampled_from(values), FIELD_VALUES)
            for name, values in FIELDS.items()
            if name != "action"
        },
    ).map(json.dumps),
)


async def superuser():
    from django.contrib.auth.models import User

    return await sync_to_async(User.objects.create_superuser)(
        f"u{uuid.uuid4().hex[:8]}", password="pw"
    )


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(frames=st.lists(FRAMES, min_size=1, max_size=5))
async def test_any_frames_get_answers_and_the_socket_survives(frames):
    communicator = WebsocketCommunicator(EventsConsumer.as_asgi(), "/ws/aether/")
    communicator.scope["user"] = await superuser()
    connected, _ = await communicator.connect()
    assert connected
    try:
        for text in frames:
            await communicator.send_to(text)
            reply = json.loads(await communicator.receive_from(5))
            assert reply["type"] in ("error", "subscribed", "unsubscribed"), reply
            if reply["type"] == "error":
                assert isinstance(reply["code"], str) and reply["code"] != "internal"
        # Still usable: an unknown unsubscribe is answered, not ignored.
        await communicator.send_to(json.dumps({"action": "unsubscribe", "id": "nothing-here"}))
        assert json.loads(await communicator.receive_from(5))["code"] == "unknown_id"
    finally:
        await communicator.disconnect()


#: Every pair of a kind of namespace and a kind of ``from`` (each also left out), which
#: is where the fields depend on each other (a pattern with a numeric ``from``, say);
#: ``event_types`` and ``actor_pattern`` take each of their kinds in turn along them.
SUBSCRIBE_FRAMES = [
    {
        "action": "subscribe",
        "id": "s",
        **{
            name: value
            for name, value in (
                ("namespace", namespace),
                ("from", start),
                ("event_types", (["OrderPlaced"], [[1]], ABSENT)[index % 3]),
                ("actor_pattern", ("order-*", "a..b", ABSENT)[index // 3 % 3]),
            )
            if value is not ABSENT
        },
    }
    for index, (namespace, start) in enumerate(
        itertools.product([*FIELDS["namespace"], ABSENT], [*FIELDS["from"], ABSENT])
    )
]


async def reader():
    from django.contrib.auth.models import User

    from aether_django.models import NamespaceGrant

    def create():
        user = User.objects.create_user(f"u{uuid.uuid4().hex[:8]}", password="pw")
        for pattern in ("orders", "a.>", "ord*"):
            NamespaceGrant.objects.create(user=user, pattern=pattern, can_read=True)
        return user

    return await sync_to_async(create)()


async def test_every_combination_of_subscribe_fields_gets_an_answer():
    communicator = WebsocketCommunicator(EventsConsumer.as_asgi(), "/ws/aether/")
    communicator.scope["user"] = await reader()
    connected, _ = await communicator.connect()
    assert connected
    try:
        for doc in SUBSCRIBE_FRAMES:
            await communicator.send_to(json.dumps(doc))
            output = await communicator.receive_output(5)
            assert output["type"] == "websocket.send", (doc, output)
            reply = json.loads(output["text"])
            assert reply["type"] in ("error", "subscribed"), (doc, reply)
            if reply["type"] == "error":
                assert reply["code"] not in ("internal", "unavailable"), (doc, reply)
            else:
                await communicator.send_to(json.dumps({"action": "unsubscribe", "id": "s"}))
                while reply["type"] != "unsubscribed":
                    reply = json.loads(await communicator.receive_from(5))
                    assert reply["type"] in ("event", "unsubscribed"), (doc, reply)
            # Stay under the frame rate limit: this is about contents, not floods.
            await asyncio.sleep(0.05)
    finally:
        await communicator.disconnect()
