"""Hostile WebSocket frames: whatever a client sends, it gets an error frame (or a
subscription), never a crashed socket, and the socket keeps working afterwards."""

from __future__ import annotations

import json
import uuid

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aether_django.consumers import EventsConsumer

pytestmark = pytest.mark.django_db(transaction=True)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
FIELD_VALUES = st.one_of(JSON, st.sampled_from(["orders", "a.*", ">", "bad..x", "", "new", "all"]))
FRAMES = st.one_of(
    st.text(min_size=1, max_size=200),
    JSON.map(json.dumps),
    st.fixed_dictionaries(
        {"action": st.sampled_from(["subscribe", "unsubscribe", "dance", None])},
        optional={
            "id": FIELD_VALUES,
            "namespace": FIELD_VALUES,
            "event_types": FIELD_VALUES,
            "actor_pattern": FIELD_VALUES,
            "from": FIELD_VALUES,
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
