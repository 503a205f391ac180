"""The admin pages: what they show, grants on namespace pages, and URLs named like Django's.

Who gets which status on every page (anonymous, non-staff users with and without
grants, staff without grants, superusers; read-only history) is the admin table of
tests/reliability/test_access_matrix.py. These tests cover what the pages hold, staff
with grants (user, group, write-only), and namespaces and actors whose names look like
Django's add, change, delete and history URLs.
"""

from __future__ import annotations

import functools
import re
import uuid
from datetime import UTC, datetime

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.template.defaultfilters import filesizeformat
from django.test import Client, override_settings

from aether_django.cluster import shard_of
from aether_django.cluster.coordinator import ClusterConfig, Coordinator
from aether_django.events import ActorSnapshot, Event
from aether_django.models import NamespaceGrant
from aether_django.runtime import Runtime
from aether_django.store import get_event_store
from aether_django.testing.contract import ev

from ..cluster.nodes import wait_until

ADMIN = "/admin/aether_django"
STREAMS = f"{ADMIN}/streaminspection"


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def staff_user(*patterns: str) -> User:
    """A staff user (no model permissions) with a read grant on each pattern."""
    user = User.objects.create_user(f"staff-{uuid.uuid4().hex[:6]}", is_staff=True)
    for pattern in patterns:
        NamespaceGrant.objects.create(user=user, pattern=pattern, can_read=True)
    return user


@pytest.fixture
def staff(db) -> Client:
    """Staff granted the adm-* namespaces of ``ns`` and the test-orders aggregate's."""
    return logged_in(staff_user("adm-*", "test-orders"))


@pytest.fixture
def root(db) -> Client:
    return logged_in(User.objects.create_superuser(f"root-{uuid.uuid4().hex[:6]}"))


@pytest.fixture
def ns() -> str:
    namespace = f"adm-{uuid.uuid4().hex[:8]}"
    store = get_event_store(namespace)
    store.save_events([ev("order-1", 1, "Placed", total=5), ev("order-1", 2, "Paid")])
    store.save_event(ev("order 2", 1))
    return namespace


@pytest.fixture
def other() -> str:
    """A namespace that the ``staff`` fixture's grants do not match."""
    namespace = f"oth-{uuid.uuid4().hex[:8]}"
    get_event_store(namespace).save_event(ev("order-1", 1, "Placed", note="not yours"))
    return namespace


def cells(page: str, first_cell: str) -> list[str]:
    """The text of each cell of the table row that starts with ``first_cell``."""
    row = re.search(r"<tr><td>" + re.escape(first_cell) + r"(.*?)</tr>", page, re.S)
    assert row is not None, first_cell
    return [
        re.sub(r"<[^>]+>", "", cell).strip()
        for cell in re.findall(r"<td[^>]*>(.*?)</td>", row[1], re.S)
    ]


def test_the_namespaces_page_shows_each_figure_live(staff, ns):
    """Events, actors, bytes, first and last sequence and replicas, read again on each
    request: one more save shows on the next load."""
    store = get_event_store(ns)
    row_start = f'<a href="{STREAMS}/ns/{ns}/">{ns}</a></td>'
    response = staff.get(f"{STREAMS}/")
    assert response.status_code == 200
    info = store.get_info()
    assert info is not None and info.bytes > 0
    assert cells(response.content.decode(), row_start) == [
        f"{ns}_events",
        "3",  # events
        "2",  # actors
        filesizeformat(info.bytes),
        "1",  # first sequence
        "3",  # last sequence
        "1",  # replicas
    ]

    store.save_event(ev("order-3", 1, "Placed", total=7))
    again = cells(staff.get(f"{STREAMS}/").content.decode(), row_start)
    grown = store.get_info()
    assert grown is not None and grown.bytes > info.bytes
    assert again[1:3] == ["4", "3"] and again[4:6] == ["1", "4"]
    assert again[3] == filesizeformat(grown.bytes)


def test_the_actors_page_shows_each_actors_version_and_shard_live(staff, ns):
    page = staff.get(f"{STREAMS}/ns/{ns}/").content.decode()
    link = f'<a href="{STREAMS}/ns/{ns}/order-1/">order-1</a></td>'
    assert cells(page, link) == ["2", str(shard_of("order-1"))]
    assert "2 of 2 actors" in page
    get_event_store(ns).save_event(ev("order-1", 3, "Shipped"))
    page = staff.get(f"{STREAMS}/ns/{ns}/").content.decode()
    assert cells(page, link) == ["3", str(shard_of("order-1"))]
    assert "<th>Events</th><td>4</td>" in page and "<td>1 \u2013 4</td>" in page


def test_the_actors_page_shows_100_actors_a_page(staff):
    namespace = f"adm-{uuid.uuid4().hex[:8]}"
    store = get_event_store(namespace)
    for i in range(101):
        store.save_event(ev(f"a-{i:03d}", 1))
    first = staff.get(f"{STREAMS}/ns/{namespace}/").content.decode()
    assert first.count(f'href="{STREAMS}/ns/{namespace}/a-') == 100
    assert "100 of 101 actors" in first and "a-099" in first and "a-100" not in first
    next_link = re.search(r'<a href="\?(after=[^"]+)">next</a>', first)
    assert next_link is not None
    second = staff.get(f"{STREAMS}/ns/{namespace}/?" + next_link[1].replace("&amp;", "&"))
    page = second.content.decode()
    assert page.count(f'href="{STREAMS}/ns/{namespace}/a-') == 1 and "a-100" in page
    assert ">next</a>" not in page and "first page" in page
    assert staff.get(f"{STREAMS}/ns/{namespace}/", {"at": "x"}).status_code == 404


def test_the_actors_of_a_namespace_are_searchable(staff, ns):
    page = staff.get(f"{STREAMS}/ns/{ns}/").content.decode()
    assert "order-1" in page and "order 2" in page
    found = staff.get(f"{STREAMS}/ns/{ns}/", {"q": "order-"}).content.decode()
    assert "order-1" in found and "order 2" not in found
    assert staff.get(f"{STREAMS}/ns/{ns}-missing/").status_code == 404


def test_an_actors_timeline_snapshot_and_state(staff, ns):
    get_event_store(ns).save_snapshot(
        ActorSnapshot(actor_id="order-1", version=2, state={"paid": True})
    )
    page = staff.get(f"{STREAMS}/ns/{ns}/order-1/").content.decode()
    assert "Placed" in page and "Paid" in page and "&#x27;total&#x27;: 5" in page
    assert "Version 2" in page and "paid" in page
    assert "No aggregate class is registered" in page
    assert staff.get(f"{STREAMS}/ns/{ns}/order 2/").status_code == 200
    assert staff.get(f"{STREAMS}/ns/{ns}/nobody/").status_code == 404


def test_the_timeline_shows_each_events_metadata_and_command_id(staff, ns):
    command_id = f"cmd-{uuid.uuid4().hex[:8]}"
    get_event_store(ns).save_event(
        Event(
            event_type="Shipped",
            actor_id="order-1",
            version=3,
            data={"carrier": "post"},
            metadata={"user": "ann", "reason": "paid"},
            command_id=command_id,
        )
    )
    page = staff.get(f"{STREAMS}/ns/{ns}/order-1/").content.decode()
    shipped = page[page.index("<td>Shipped</td>") :].split("</tr>")[0]
    assert "&#x27;user&#x27;: &#x27;ann&#x27;" in shipped
    assert "&#x27;reason&#x27;: &#x27;paid&#x27;" in shipped
    assert f"command {command_id}" in shipped
    # Events saved without them show neither.
    placed = page[page.index("<td>Placed</td>") :].split("</tr>")[0]
    assert "command " not in placed and "user" not in placed


def test_the_state_of_a_registered_aggregate_is_shown(staff):
    from ..aggregates.domain import Order

    actor = f"order-{uuid.uuid4().hex[:6]}"
    Order.objects.update(actor, lambda o: o.place("ann"), create=True)
    page = staff.get(f"{STREAMS}/ns/test-orders/{actor}/").content.decode()
    assert "Current state" in page and "&#x27;customer&#x27;: &#x27;ann&#x27;" in page


def test_staff_see_only_namespaces_they_may_read_and_superusers_see_all(staff, root, ns, other):
    listed = staff.get(f"{STREAMS}/").content.decode()
    assert ns in listed and other not in listed
    assert "Only the namespaces your grants let you read are listed." in listed

    # A namespace the user may not read answers exactly as one that does not exist
    # (ns-missing matches the user's grant "adm-*" but holds nothing).
    hidden = staff.get(f"{STREAMS}/ns/{other}/")
    missing = staff.get(f"{STREAMS}/ns/{ns}-missing/")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.content == missing.content and other.encode() not in hidden.content
    hidden_actor = staff.get(f"{STREAMS}/ns/{other}/order-1/")
    missing_actor = staff.get(f"{STREAMS}/ns/{ns}/nobody/")
    assert hidden_actor.status_code == missing_actor.status_code == 404
    assert hidden_actor.content == missing_actor.content

    everything = root.get(f"{STREAMS}/").content.decode()
    assert ns in everything and other in everything and "grants let you" not in everything
    assert "not yours" in root.get(f"{STREAMS}/ns/{other}/order-1/").content.decode()


def test_admin_grants_are_the_apis_group_grants_count_write_only_grants_do_not(db, ns):
    user = staff_user()
    client = logged_in(user)
    NamespaceGrant.objects.create(user=user, pattern=ns, can_read=False, can_write=True)
    assert client.get(f"{STREAMS}/ns/{ns}/").status_code == 404
    assert ns not in client.get(f"{STREAMS}/").content.decode()

    group = Group.objects.create(name=f"readers-{uuid.uuid4().hex[:6]}")
    group.user_set.add(user)
    NamespaceGrant.objects.create(group=group, pattern="adm-*", can_read=True)
    assert client.get(f"{STREAMS}/ns/{ns}/").status_code == 200
    assert client.get(f"{STREAMS}/ns/{ns}/order-1/").status_code == 200


def test_a_namespace_and_actors_named_like_admin_urls_have_their_pages(db):
    """Namespace pages are under ns/, so "add" is a namespace there and Django's add URL
    outside; actor ids may hold slashes, so "x/delete" is an actor."""
    store = get_event_store("add")
    actors = ("change", "x/delete", "history")
    for actor_id in actors:
        store.save_event(ev(actor_id, store.get_latest_version(actor_id) + 1, "Named"))
    client = logged_in(staff_user("add"))

    assert f'href="{STREAMS}/ns/add/"' in client.get(f"{STREAMS}/").content.decode()
    page = client.get(f"{STREAMS}/ns/add/").content.decode()
    for actor_id in actors:
        assert f'href="{STREAMS}/ns/add/{actor_id}/"' in page
        actor_page = client.get(f"{STREAMS}/ns/add/{actor_id}/")
        assert actor_page.status_code == 200 and "Named" in actor_page.content.decode()
    # Django's own URLs of the model are refused, whatever follows them.
    for url in ("add/", "add/change/", "add/delete/", "add/history/"):
        assert client.get(f"{STREAMS}/{url}").status_code == 403, url


def test_inspection_pages_answer_get_and_head_only(staff, ns):
    for url in (
        f"{STREAMS}/",
        f"{STREAMS}/ns/{ns}/",
        f"{STREAMS}/ns/{ns}/order-1/",
        f"{ADMIN}/clusterinspection/",
        f"{ADMIN}/clusterinspection/shards/",
    ):
        assert staff.head(url).status_code == 200, url
        for method in ("put", "patch", "delete", "options"):
            response = getattr(staff, method)(url)
            assert response.status_code == 405, (method, url)
            assert response["Allow"] == "GET, HEAD"
    assert len(get_event_store(ns).get_events("order-1")) == 2


@pytest.fixture
def cluster_bucket():
    """A cluster bucket of this test's own, which the admin pages read."""
    bucket = f"adm_{uuid.uuid4().hex[:8]}"
    with override_settings(AETHER={**settings.AETHER, "CLUSTER_BUCKET": bucket}):
        yield bucket


@pytest.fixture
def coordinators(aether_nats_url, cluster_bucket):
    """Make coordinators on the test's bucket; each leaves and closes at the end."""
    made: list[tuple[Runtime, Coordinator]] = []

    def make(node_id: str) -> Coordinator:
        runtime = Runtime(aether_nats_url)
        node = Coordinator(runtime, node_id, ClusterConfig(bucket=cluster_bucket, num_shards=100))
        made.append((runtime, node))
        return node

    yield make
    for runtime, node in made:
        runtime.run(node.leave())
        runtime.close()


def test_the_shard_map_shows_how_many_shards_the_last_rebalance_moved(staff, coordinators):
    a, b = coordinators("node-a"), coordinators("node-b")
    a.runtime.run(a.tick())  # a leads alone: every shard moves to it
    page = staff.get(f"{ADMIN}/clusterinspection/shards/").content.decode()
    assert "the last rebalance moved 100 shards." in page
    assert cells(page, "node-a")[0] == "100"

    b.runtime.run(b.heartbeat())
    plan = a.runtime.run(a.rebalance())
    assert plan is not None and plan.moved_count == 50
    page = staff.get(f"{ADMIN}/clusterinspection/shards/").content.decode()
    assert f"written by the leader of term {a.lease.term};" in page
    assert "the last rebalance moved 50 shards." in page
    assert cells(page, "node-a")[0] == cells(page, "node-b")[0] == "50"
    shards_of_b = re.findall(r"<span>(\d+)</span>", page.split("<td>node-b</td>")[1])
    assert sorted(map(int, shards_of_b)) == sorted(plan.moved)


def test_the_nodes_page_shows_leader_term_heartbeats_and_a_failed_node(staff, coordinators):
    a, b = coordinators("node-a"), coordinators("node-b")
    a.runtime.run(a.tick())
    b.runtime.run(b.tick())
    lease = a.runtime.run(a.tick())  # a's second beat names itself as leader
    b.runtime.run(b.tick())  # and b's second beat names the leader it saw: a
    infos = b.runtime.run(b.nodes())
    page = staff.get(f"{ADMIN}/clusterinspection/").content.decode()
    assert f"Leader: <strong>node-a</strong> (term {lease.term})." in page
    assert [info.node_id for info in infos] == ["node-a", "node-b"]
    for info in infos:
        row = cells(page, info.node_id)
        assert row[0] == "alive"
        when = datetime.fromtimestamp(info.last_heartbeat, UTC).strftime("%Y-%m-%d %H:%M:%S")
        assert re.fullmatch(re.escape(when) + r" UTC \([\d.]+ s ago\)", row[1]), row[1]
    assert cells(page, "node-a")[3] == cells(page, "node-b")[3] == "node-a"

    b.runtime.run(b.leave())  # b's heartbeat is gone at once; it is remembered as failed
    page = staff.get(f"{ADMIN}/clusterinspection/").content.decode()
    assert cells(page, "node-a")[0] == "alive" and cells(page, "node-b")[0] == "failed"
    assert '<td class="aether-bad">failed</td>' in page


def test_the_pages_say_nats_is_unavailable_with_503_while_the_server_is_stopped(
    staff, aether_nats_server_factory, monkeypatch
):
    server = aether_nats_server_factory(name="aether-admin-down")
    monkeypatch.setenv("AETHER_NATS_URL", server.url)
    namespace = f"adm-{uuid.uuid4().hex[:8]}"
    pages = [
        f"{STREAMS}/",
        f"{STREAMS}/ns/{namespace}/",
        f"{STREAMS}/ns/{namespace}/order-1/",
        f"{ADMIN}/clusterinspection/",
        f"{ADMIN}/clusterinspection/shards/",
    ]
    with override_settings(AETHER={**settings.AETHER, "TIMEOUT": 1.0}):
        get_event_store(namespace).save_event(ev("order-1", 1, "Placed"))
        for url in pages:
            assert staff.get(url).status_code == 200, url
        server.stop()
        for url in pages:
            response = staff.get(url)
            assert response.status_code == 503, url
            page = response.content.decode()
            assert "<title>Unavailable" in page and "NATS did not answer" in page, url
        # Back on its port with its data: the pages answer again, with no restart of ours.
        server.restart()
        for url in pages:
            wait_until(functools.partial(_answers, staff, url), timeout=15)


def _answers(client: Client, url: str) -> bool:
    return bool(client.get(url).status_code == 200)


def test_nodes_and_shard_map(staff, aether_nats_url):
    runtime = Runtime(aether_nats_url)
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


def test_grants_are_edited_in_the_admin_and_checked(root):
    user = User.objects.create_user("reader", password="pw")
    response = root.post(
        f"{ADMIN}/namespacegrant/add/",
        {"user": user.pk, "pattern": "orders.*", "can_read": "on"},
    )
    assert response.status_code == 302
    assert NamespaceGrant.objects.get(user=user).pattern == "orders.*"
    bad = root.post(f"{ADMIN}/namespacegrant/add/", {"user": user.pk, "pattern": "bad..pattern"})
    assert bad.status_code == 200 and NamespaceGrant.objects.count() == 1


# --- NATS lost in the middle of a page, and project code that raises ------------------------


@pytest.fixture
def dropping(staff, aether_nats_server_factory, monkeypatch):
    """A namespace on a server of its own, and ``drop_before(name)``: stop that server
    just before the store's method ``name`` runs, so NATS goes away in the middle of a
    page, after the page's first reads answered."""
    server = aether_nats_server_factory(name="aether-admin-drop")
    monkeypatch.setenv("AETHER_NATS_URL", server.url)
    namespace = f"adm-{uuid.uuid4().hex[:8]}"
    with override_settings(AETHER={**settings.AETHER, "TIMEOUT": 1.0}):
        store = get_event_store(namespace)
        store.save_events([ev("order-1", 1, "Placed"), ev("order-1", 2, "Paid")])

        def drop_before(name):
            original = getattr(store, name)

            def stop_then_call(*args, **kwargs):
                server.stop()
                return original(*args, **kwargs)

            monkeypatch.setattr(store, name, stop_then_call)

        yield namespace, drop_before


def assert_unavailable(response):
    assert response.status_code == 503
    page = response.content.decode()
    assert "<title>Unavailable" in page and "NATS did not answer" in page


def test_the_actors_page_answers_503_when_nats_goes_away_after_its_first_read(staff, dropping):
    namespace, drop_before = dropping
    drop_before("get_actor_page")
    assert_unavailable(staff.get(f"{STREAMS}/ns/{namespace}/"))


def test_the_actor_search_answers_503_when_nats_goes_away_after_its_first_read(staff, dropping):
    namespace, drop_before = dropping
    drop_before("get_actor_ids")
    assert_unavailable(staff.get(f"{STREAMS}/ns/{namespace}/", {"q": "order"}))


def test_the_actor_page_answers_503_when_nats_goes_away_while_it_builds_the_state(staff, dropping):
    from aether_django import aggregates

    namespace, drop_before = dropping

    class Dropped(aggregates.Aggregate):
        class Meta:
            namespace = dropping[0]

        @aggregates.apply("Placed")
        def _placed(self, event: Event) -> None:
            pass

        @aggregates.apply("Paid")
        def _paid(self, event: Event) -> None:
            pass

    try:
        before = staff.get(f"{STREAMS}/ns/{namespace}/order-1/").content.decode()
        assert '<pre class="aether-json">{}</pre>' in before  # the state, built
        drop_before("get_events")  # the page's own reads ran; the aggregate's fail
        assert_unavailable(staff.get(f"{STREAMS}/ns/{namespace}/order-1/"))
    finally:
        aggregates._registry.pop(Dropped._meta.label, None)


def test_the_actor_page_shows_any_exception_of_the_projects_code_as_a_state_error(staff, ns):
    from aether_django import aggregates

    class Raising(aggregates.Aggregate):
        class Meta:
            namespace = ns

        @aggregates.apply("Placed")
        def _placed(self, event: Event) -> None:
            raise ValueError("a handler that does not expect this data")

    try:
        response = staff.get(f"{STREAMS}/ns/{ns}/order-1/")
        assert response.status_code == 200
        page = response.content.decode()
        assert "cannot be rebuilt" in page and "ValueError" in page
        assert "Placed" in page  # the timeline is still shown
    finally:
        aggregates._registry.pop(Raising._meta.label, None)
