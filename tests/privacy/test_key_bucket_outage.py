"""The key bucket's server goes away and comes back while keys are read and made.

A 3-server cluster with the key bucket on one replica: while the server holding it is
down, no server answers the bucket's requests (a direct get finds no responder, a
STREAM.INFO is answered "offline" or not at all). Every key bucket request is retried
within ``TIMEOUT``, one short attempt after another, like the store's requests
(``store.jetstream.retry``): a read or a new key made while the server restarts waits
for it instead of failing at the first unanswered request.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import nats
import pytest
from django.conf import settings
from django.test import override_settings

from aether_django import privacy
from aether_django.conf import aether_settings
from aether_django.errors import StoreUnavailableError
from aether_django.nats.api import kv_stream
from aether_django.privacy import FORGOTTEN
from aether_django.privacy.keys import get_key_ring, reset_key_ring
from aether_django.runtime import get_runtime
from aether_django.testing import NatsCluster, NatsServer

from .conftest import new_id
from .domain import Order
from .test_privacy import ALICE, place

pytestmark = pytest.mark.slow

T = TypeVar("T")

#: How long the bucket's server stays down: well within the test's TIMEOUT.
DOWN_SECONDS = 1.0


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[NatsCluster]:
    """A 3-server cluster the app uses, every stream and bucket on one replica, and a
    TIMEOUT that leaves a restart plenty of room."""
    with NatsCluster(3) as started:
        monkeypatch.setenv("AETHER_NATS_URL", started.url)
        with override_settings(AETHER={**settings.AETHER, "REPLICAS": 1, "TIMEOUT": 20.0}):
            yield started


def bucket_host(cluster: NatsCluster) -> NatsServer:
    """The server that holds the key bucket's only replica."""

    async def leader() -> str:
        nc = await nats.connect(cluster.url.split(","))
        try:
            info = await nc.jetstream().stream_info(kv_stream(aether_settings.PRIVACY_BUCKET))
            assert info.cluster is not None and info.cluster.leader
            return info.cluster.leader
        finally:
            await nc.close()

    return cluster.server_named(asyncio.run(leader()))


def while_restarting(server: NatsServer, action: Callable[[], T]) -> T:
    """Kill ``server``, run ``action`` at once, and start the server again
    DOWN_SECONDS later, whatever ``action`` is doing by then."""
    server.kill()
    restart = threading.Timer(DOWN_SECONDS, server.restart)
    restart.start()
    try:
        return action()
    finally:
        restart.join()


def test_keys_are_read_and_made_while_the_key_bucket_server_restarts(
    cluster: NatsCluster,
) -> None:
    alice = new_id("customer")
    place(alice, ALICE, 1)  # makes the bucket and alice's key
    hit = get_key_ring()._entry(alice)
    assert hit is not None
    kid, alice_key = hit[1], hit[2]
    host = bucket_host(cluster)
    run = get_runtime().run

    # A fresh key ring: the bucket is looked up (STREAM.INFO), its verifier read and
    # alice's key read, all while the bucket's server is down.
    reset_key_ring()
    assert while_restarting(host, lambda: run(get_key_ring().key_for_read(alice, kid))) == (
        alice_key
    )

    # A new subject's key is looked up and made while the server restarts.
    bob = new_id("customer")
    bob_kid, bob_key = while_restarting(host, lambda: run(get_key_ring().key_for_write(bob)))

    # What was made is what the bucket holds.
    reset_key_ring()
    assert run(get_key_ring().key_for_read(bob, bob_kid)) == bob_key
    assert run(get_key_ring().key_for_read(alice, kid)) == alice_key


def test_a_key_bucket_that_stays_away_gives_a_clear_error_within_the_timeout(
    cluster: NatsCluster,
) -> None:
    alice = new_id("customer")
    order = place(alice, ALICE, 1)
    host = bucket_host(cluster)
    host.kill()
    try:
        reset_key_ring()
        with override_settings(AETHER={**settings.AETHER, "REPLICAS": 1, "TIMEOUT": 2.0}):
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="key bucket 'aether_privacy_keys'"):
                get_runtime().run(get_key_ring().key_for_write(alice))
            # Given up at TIMEOUT (give or take an attempt and the machine's load),
            # not after one TIMEOUT per request the operation makes.
            assert time.monotonic() - started < 2 * 2.0
            with pytest.raises(StoreUnavailableError, match="key bucket 'aether_privacy_keys'"):
                privacy.forget(alice)
    finally:
        host.restart()
    # Nothing was made meanwhile: alice keeps her key, and her order reads.
    reset_key_ring()
    assert Order.objects.get(order.actor_id).email == ALICE[1]
    # The forget that raised is run again, and finishes.
    privacy.forget(alice)
    reset_key_ring()
    assert Order.objects.get(order.actor_id).email == FORGOTTEN
