"""The admin pages: grants are editable, history and cluster are read-only, all staff only."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import User
from django.test import Client

from aether_django.cluster.coordinator import ClusterConfig, Coordinator
from aether_django.models import NamespaceGrant
from aether_django.runtime import Runtime
from aether_django.store import get_event_store
from aether_django.testing.contract import ev

ADMIN = "/admin/aether_django"


@pytest.fixture
def staff(db):
    user = User.objects.create_user("staffer", password="pw", is_staff=True)
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def ns():
    namespace = f"adm-{uuid.uuid4().hex[:8]}"
    store = get_event_store(namespace)
    store.save_events([ev("order-1", 1, "Placed", total=5), ev("order-1", 2, "Paid")])
    store.save_event(ev("order 2", 1))
    return namespace


def test_the_namespaces_page_shows_live_figures(staff, ns):
    response = staff.get(f"{ADMIN}/streaminspection/")
    assert response.status_code == 200
    assert ns in response.content.decode() and f"{ns}_events" in response.content.decode()


def test_the_actors_of_a_namespace_are_searchable(staff, ns):
    page = staff.get(f"{ADMIN}/streaminspection/{ns}/").content.decode()
    assert "order-1" in page and "order 2" in page
    found = staff.get(f"{ADMIN}/streaminspection/{ns}/", {"q": "order-"}).content.decode()
    assert "order-1" in found and "order 2" not in found
    assert staff.get(f"{ADMIN}/streaminspection/{ns}-missing/").status_code == 404


def test_an_actors_timeline_snapshot_and_state(staff, ns):
    get_event_store(ns).save_snapshot(
        __import__("aether_django.events", fromlist=["ActorSnapshot"]).ActorSnapshot(
            actor_id="order-1", version=2, state={"paid": True}
        )
    )
    page = staff.get(f"{ADMIN}/streaminspection/{ns}/order-1/").content.decode()
    assert "Placed" in page and "Paid" in page and "&#x27;total&#x27;: 5" in page
    assert "Version 2" in page and "paid" in page
    assert "No aggregate class is registered" in page
    assert staff.get(f"{ADMIN}/streaminspection/{ns}/order 2/").status_code == 200
    assert staff.get(f"{ADMIN}/streaminspection/{ns}/nobody/").status_code == 404


def test_the_state_of_a_registered_aggregate_is_shown(staff):
    from ..aggregates.domain import Order

    actor = f"order-{uuid.uuid4().hex[:6]}"
    Order.objects.update(actor, lambda o: o.place("ann"), create=True)
    page = staff.get(f"{ADMIN}/streaminspection/test-orders/{actor}/").content.decode()
    assert "Current state" in page and "&#x27;customer&#x27;: &#x27;ann&#x27;" in page


def test_nodes_and_shard_map(staff, nats_url):
    runtime = Runtime(nats_url)
    try:
        node = Coordinator(runtime, "node-x", ClusterConfig(num_shards=100))
        runtime.run(node.tick())
        nodes = staff.get(f"{ADMIN}/clusterinspection/").content.decode()
        assert "node-x" in nodes and "alive" in nodes
        shards = staff.get(f"{ADMIN}/clusterinspection/shards/").content.decode()
        assert "node-x" in shards and "100 shards" in shards
    finally:
        runtime.run(node.leave())
        runtime.close()


def test_history_cannot_be_changed_and_grants_can(staff, ns, db):
    assert staff.get(f"{ADMIN}/streaminspection/add/").status_code in (403, 404)
    assert staff.post(f"{ADMIN}/streaminspection/{ns}/order-1/", {}).status_code in (200, 405)
    assert len(get_event_store(ns).get_events("order-1")) == 2
    root = Client()
    root.force_login(User.objects.create_superuser("root", password="pw"))
    user = User.objects.create_user("reader", password="pw")
    response = root.post(
        "/admin/aether_django/namespacegrant/add/",
        {"user": user.pk, "pattern": "orders.*", "can_read": "on"},
    )
    assert response.status_code == 302
    assert NamespaceGrant.objects.get(user=user).pattern == "orders.*"
    bad = root.post(
        "/admin/aether_django/namespacegrant/add/", {"user": user.pk, "pattern": "bad..pattern"}
    )
    assert bad.status_code == 200 and NamespaceGrant.objects.count() == 1


def test_non_staff_and_anonymous_users_are_kept_out(db, ns):
    plain = Client()
    plain.force_login(User.objects.create_user("plain", password="pw"))
    for client in (plain, Client()):
        for url in (
            f"{ADMIN}/streaminspection/",
            f"{ADMIN}/streaminspection/{ns}/",
            f"{ADMIN}/clusterinspection/shards/",
        ):
            response = client.get(url)
            assert response.status_code == 302 and "/login/" in response["Location"]
