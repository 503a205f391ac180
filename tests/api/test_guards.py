"""What the API refuses so that no single request can harm what others rely on: a
version step that would freeze an actor, a snapshot that would replace an aggregate's
state without an event."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.test import override_settings

from aether_django import aggregates
from aether_django.events import Event
from aether_django.store import get_event_store

API = "/api/aether"
TOP = 2**63 - 1


def aether(**values):
    """override_settings for a few AETHER keys, the others as the test settings have them."""
    return override_settings(AETHER={**settings.AETHER, **values})


def events_url(ns, actor="acct-1"):
    return f"{API}/namespaces/{ns}/actors/{actor}/events/"


def snapshot_url(ns, actor="acct-1"):
    return f"{API}/namespaces/{ns}/actors/{actor}/snapshot/"


# --- versions ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", [TOP, 1_000_002])
def test_an_append_too_far_above_the_current_version_is_refused(root, ns, version):
    first = root.post(events_url(ns), {"event_type": "A", "version": 1}, format="json")
    assert first.status_code == 201
    response = root.post(events_url(ns), {"event_type": "A", "version": version}, format="json")
    assert response.status_code == 400, response.data
    assert response.json()["code"] == "invalid"
    assert "1000000" in str(response.data["version"])
    assert get_event_store(ns).get_latest_version("acct-1") == 1, "nothing stored"
    # The actor still moves on, up to the largest step.
    step = root.post(events_url(ns), {"event_type": "A", "version": 1_000_001}, format="json")
    assert step.status_code == 201, step.data


def test_a_batch_too_far_above_the_current_version_is_refused(root, ns):
    body = {"expected_version": TOP - 1000, "events": [{"event_type": "A"}]}
    response = root.post(events_url(ns), body, format="json")
    assert response.status_code == 400, response.data
    assert "expected_version" in response.data
    assert get_event_store(ns).get_latest_version("acct-1") == 0
    with aether(API_MAX_VERSION_GAP=10):
        near = {"expected_version": 9, "events": [{"event_type": "A"}]}
        assert root.post(events_url(ns), near, format="json").status_code == 201
        far = {"expected_version": 20, "events": [{"event_type": "A"}]}
        assert root.post(events_url(ns), far, format="json").status_code == 400
    assert get_event_store(ns).get_latest_version("acct-1") == 10


# --- snapshots ---------------------------------------------------------------------------


@pytest.fixture
def account(ns):
    """An aggregate class on the test's namespace that loads from snapshots."""

    class Account(aggregates.Aggregate):
        balance: int = 0

        class Meta:
            namespace = ns
            snapshot_every = 2

        def deposit(self, amount: int) -> None:
            self.record("Deposited", {"amount": amount})

        @aggregates.apply("Deposited")
        def _deposited(self, event: Event) -> None:
            self.balance += event.data["amount"]

    yield Account
    aggregates._registry.pop(Account._meta.label, None)


def forged(account, version):
    """A snapshot body that the aggregate would load: its label and schema match."""
    return {
        "version": version,
        "state": {
            "aggregate": account._meta.label,
            "snapshot_version": 1,
            "state": {"balance": 10**9},
            "sequence": 0,
            "recent_commands": [],
        },
    }


def test_snapshot_writes_through_the_api_are_refused_by_default(callers, ns, account):
    writer, root = callers["write_grant"], callers["superuser"]
    one = account.objects.create("acct-1")
    one.deposit(5)
    one.save()
    for client in (writer, root):
        response = client.put(snapshot_url(ns), forged(account, 1), format="json")
        assert response.status_code == 403, response.data
        assert response.json()["code"] == "permission_denied"
        assert "API_SNAPSHOT_WRITES" in response.json()["detail"]
    assert get_event_store(ns).get_latest_snapshot("acct-1") is None
    assert account.objects.get("acct-1").balance == 5
    # Reading snapshots stays open to readers.
    assert callers["read_grant"].get(snapshot_url(ns)).status_code == 404


def test_an_enabled_snapshot_write_above_the_stored_version_is_refused(root, ns, account):
    one = account.objects.create("acct-1")
    one.deposit(5)
    one.save()
    with aether(API_SNAPSHOT_WRITES=True):
        response = root.put(snapshot_url(ns), forged(account, 1000), format="json")
        assert response.status_code == 400, response.data
        assert "above the actor's version 1" in str(response.data["version"])
        assert get_event_store(ns).get_latest_snapshot("acct-1") is None
        unknown = root.put(snapshot_url(ns, "nobody"), forged(account, 1), format="json")
        assert unknown.status_code == 400
        at_head = root.put(snapshot_url(ns), {"version": 1, "state": {"x": 1}}, format="json")
        assert at_head.status_code == 200, at_head.data
    assert get_event_store(ns).get_latest_snapshot("acct-1").version == 1


def test_an_aggregate_ignores_a_snapshot_above_its_stored_version(ns, account):
    """The snapshot is written straight to the store (as a NATS client with access to the
    bucket could): the aggregate must still not trust it."""
    from aether_django.events import ActorSnapshot

    one = account.objects.create("acct-1")
    one.deposit(5)
    one.save()
    body = forged(account, 1000)
    store = get_event_store(ns)
    store.save_snapshot(ActorSnapshot(actor_id="acct-1", version=1000, state=body["state"]))
    loaded = account.objects.get("acct-1")
    assert (loaded.version, loaded.balance) == (1, 5)
    loaded_async = async_to_sync(account.objects.aget)("acct-1")
    assert (loaded_async.version, loaded_async.balance) == (1, 5)
    loaded.deposit(1)
    loaded.save()
    assert store.get_latest_version("acct-1") == 2
    assert [e.version for e in store.get_events("acct-1")] == [1, 2]
    # A snapshot it made itself (at version 2, snapshot_every=2) is used again.
    assert store.get_latest_snapshot("acct-1").version == 2
    assert account.objects.get("acct-1").balance == 6
