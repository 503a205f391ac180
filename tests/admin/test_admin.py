"""The admin pages: what they show, grants on namespace pages, and URLs named like Django's.

Who gets which status on every page (anonymous, non-staff users with and without
grants, staff without grants, superusers; read-only history) is the admin table of
tests/reliability/test_access_matrix.py. These tests cover what the pages hold, staff
with grants (user, group, write-only), and namespaces and actors whose names look like
Django's add, change, delete and history URLs.
"""

from __future__ import annotations

import functools
import html
import json
import re
import uuid
from datetime import UTC, datetime
from urllib.parse import quote

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.template.defaultfilters import filesizeformat
from django.test import Client, override_settings

from aether_django.admin import EVENTS_PER_PAGE, PALETTE, shard_grid
from aether_django.cluster import shard_of
from aether_django.cluster.coordinator import ClusterConfig, Coordinator, ShardMap
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


def correlated(namespace: str, actor_id: str, version: int, correlation_id: str, **data) -> Event:
    return get_event_store(namespace).save_event(
        Event(
            event_type="Noted",
            actor_id=actor_id,
            version=version,
            data=data,
            metadata={"correlationId": correlation_id, "causationId": f"cause-{version}"},
        )
    )


def test_the_timeline_shows_correlation_and_causation_and_links_the_correlation(staff, ns):
    correlation_id = f"req {uuid.uuid4().hex[:6]}&x"  # any text: it travels in a query string
    correlated(ns, "order-1", 3, correlation_id)
    page = staff.get(f"{STREAMS}/ns/{ns}/order-1/").content.decode()
    assert "<th>Correlation</th><th>Causation</th>" in page
    noted = page[page.index("<td>Noted</td>") :].split("</tr>")[0]
    link = f"{STREAMS}/correlation/?id={quote(correlation_id)}"
    assert f'<a href="{link}"' in noted and html.escape(correlation_id) in noted
    assert f'href="{link}&amp;ns={ns}"' in noted  # the same, in this namespace only
    assert "cause-3" in noted
    # An event stored without them (appended raw, or before they existed) shows neither.
    placed = page[page.index("<td>Placed</td>") :].split("</tr>")[0]
    assert "correlation/" not in placed
    # The link leads to the event.
    found = staff.get(f"{STREAMS}/correlation/", {"id": correlation_id}).content.decode()
    assert f"{STREAMS}/ns/{ns}/order-1/" in found and "cause-3" in found


@pytest.fixture
def spread(ns, other) -> tuple[str, str]:
    """One correlation across ``ns``, a second granted namespace and ``other`` (not
    granted to staff); and the second namespace's name."""
    correlation_id = f"corr-{uuid.uuid4().hex[:8]}"
    second = f"adm-{uuid.uuid4().hex[:8]}"
    correlated(ns, "order-1", 3, correlation_id, where="mark-one")
    correlated(second, "ship-1", 1, correlation_id, where="mark-two")
    correlated(second, "ship-1", 2, "another", where="mark-unrelated")
    correlated(other, "order-1", 2, correlation_id, where="mark-hidden")
    return correlation_id, second


def test_a_correlation_lists_its_events_in_the_namespaces_the_user_may_read(
    staff, root, ns, other, spread
):
    correlation_id, second = spread
    page = staff.get(f"{STREAMS}/correlation/", {"id": correlation_id}).content.decode()
    assert "namespaces you can read" in page  # every adm-* one, and test-orders
    assert "mark-one" in page and "mark-two" in page
    assert "mark-unrelated" not in page
    # Nothing of a namespace the user may not read, not even its name.
    assert "mark-hidden" not in page and other not in page
    assert f"{STREAMS}/ns/{second}/ship-1/" in page
    # The superuser sees it everywhere, oldest first.
    everything = root.get(f"{STREAMS}/correlation/", {"id": correlation_id}).content.decode()
    assert (
        everything.index("mark-one")
        < everything.index("mark-two")
        < everything.index("mark-hidden")
    )
    # In one namespace only.
    one = staff.get(f"{STREAMS}/correlation/", {"id": correlation_id, "ns": second})
    assert one.status_code == 200
    text = one.content.decode()
    assert "mark-two" in text and "mark-one" not in text and f"namespace {second}" in text


def test_a_correlation_page_refuses_what_it_cannot_search(staff, ns, other):
    assert staff.get(f"{STREAMS}/correlation/").status_code == 404
    assert staff.get(f"{STREAMS}/correlation/", {"id": "  "}).status_code == 404
    assert staff.get(f"{STREAMS}/correlation/", {"id": "x" * 256}).status_code == 404
    # A namespace the user may not read is the 404 of one that does not exist.
    hidden = staff.get(f"{STREAMS}/correlation/", {"id": "x", "ns": other})
    missing = staff.get(f"{STREAMS}/correlation/", {"id": "x", "ns": "adm-nonexistent"})
    assert hidden.status_code == 404
    assert missing.status_code == 200 and "No event with this correlation id." in missing.text
    assert staff.get(f"{STREAMS}/correlation/", {"id": "x", "ns": "bad..name"}).status_code == 404
    # Read-only.
    assert staff.post(f"{STREAMS}/correlation/", {"id": "x"}).status_code == 405
    none = staff.get(f"{STREAMS}/correlation/", {"id": "nothing-has-this"}).content.decode()
    assert "No event with this correlation id." in none


def test_a_correlation_search_reads_only_the_latest_events_and_says_so(
    staff, ns, spread, monkeypatch
):
    from aether_django import inspection

    correlation_id, second = spread
    monkeypatch.setattr(inspection, "CORRELATION_SCAN", 1)
    page = staff.get(f"{STREAMS}/correlation/", {"id": correlation_id}).content.decode()
    # The last event of ns is the correlated one; the second namespace's last is not.
    assert "mark-one" in page and "mark-two" not in page
    assert "Older events not searched in:" in page and second in page
    monkeypatch.setattr(inspection, "CORRELATION_LIMIT", 1)
    monkeypatch.setattr(inspection, "CORRELATION_SCAN", 100)
    page = staff.get(f"{STREAMS}/correlation/", {"id": correlation_id}).content.decode()
    assert "More than 1 events match; the first 1 are shown." in page
    assert "mark-one" in page and "mark-two" not in page


def timeline_versions(page: str) -> list[int]:
    """The versions of the timeline rows of an actor page, in the order shown."""
    table = page[page.index("<h2>Timeline</h2>") :]
    return [int(v) for v in re.findall(r"<tr><td>(\d+)</td><td>\d+</td>", table)]


def next_link(page: str) -> str | None:
    found = re.findall(r'<a href="(\?from_version=\d+)" class="next">next</a>', page)
    assert len(set(found)) <= 1, found  # the same link above and below the timeline
    return found[0] if found else None


def read_every_page(client: Client, url: str) -> tuple[list[list[int]], list[str]]:
    """Follow the next links of a timeline from its first page: each page's versions."""
    pages: list[list[int]] = []
    bodies: list[str] = []
    query: str | None = ""
    while query is not None:
        response = client.get(url + query)
        assert response.status_code == 200, query
        body = response.content.decode()
        pages.append(timeline_versions(body))
        bodies.append(body)
        query = next_link(body)
        assert len(pages) < 10, "the next links do not end"
    return pages, bodies


def test_a_long_timeline_is_paged_without_gaps_or_repeats(staff):
    namespace = f"adm-{uuid.uuid4().hex[:8]}"
    store = get_event_store(namespace)
    for first in range(1, 251, 50):
        store.save_events([ev("long", v, "Step", n=v) for v in range(first, first + 50)])
    url = f"{STREAMS}/ns/{namespace}/long/"
    pages, bodies = read_every_page(staff, url)
    assert [len(p) for p in pages] == [EVENTS_PER_PAGE, EVENTS_PER_PAGE, 50]
    assert [v for p in pages for v in p] == list(range(1, 251))
    first_page = bodies[0]
    assert next_link(first_page) == "?from_version=101"
    assert "versions 1&ndash;100" in first_page and "of 250, 100 events on this page" in first_page
    assert 'class="prev"' not in first_page
    # Page 2 links back to the first page and to the page before it.
    assert '<a href="?from_version=1" class="prev">previous</a>' in bodies[1]
    assert '<a href="?from_version=101" class="prev">previous</a>' in bodies[2]
    # A page past the end of an actor that exists is an empty page, not a 404.
    past = staff.get(url, {"from_version": 251})
    assert past.status_code == 200 and "No event from version 251 on." in past.content.decode()
    assert staff.get(url, {"from_version": "x"}).status_code == 404
    assert staff.get(f"{STREAMS}/ns/{namespace}/nobody/", {"from_version": 5}).status_code == 404


def test_a_message_that_does_not_decode_is_shown_once_on_its_page(staff, aether_nats_url):
    """A page whose read meets an undecodable message shows it beside its events, and the
    pages still hold every event once."""
    import asyncio

    import nats

    namespace = f"adm-{uuid.uuid4().hex[:8]}"
    store = get_event_store(namespace)
    store.save_events([ev("long", v) for v in range(1, 121)])

    async def corrupt() -> None:
        nc = await nats.connect(aether_nats_url)
        await nc.jetstream().publish(store.subject_for("long"), b"garbage")  # type: ignore[attr-defined]
        await nc.close()

    asyncio.run(corrupt())
    store.save_events([ev("long", v) for v in range(121, 251)])
    pages, bodies = read_every_page(staff, f"{STREAMS}/ns/{namespace}/long/")
    assert [v for p in pages for v in p] == list(range(1, 251))
    assert ["cannot be decoded" in body for body in bodies] == [False, True, False]
    assert "sequence 121 (" in bodies[1]


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


CELL = re.compile(
    r'<span class="aether-cell([^"]*)" data-shard="(\d+)" data-node="([^"]*)" title="([^"]*)">'
)


def grid(page: str) -> dict[int, tuple[str, bool, str]]:
    """The shard grid of a shard-map page: shard -> (owner, outlined as moved, tooltip)."""
    return {
        int(shard): (node, " aether-moved" in classes, html.unescape(title))
        for classes, shard, node, title in CELL.findall(page)
    }


def legend(page: str, node: str) -> list[str]:
    """The cells of a node's legend row: its id, shards held, shards moved in."""
    row = re.search(r'<tr data-node="' + re.escape(node) + r'">(.*?)</tr>', page, re.S)
    assert row is not None, node
    return [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td>(.*?)</td>", row[1], re.S)]


def test_the_shard_map_is_a_grid_by_owner_with_the_last_rebalances_moves_outlined(
    staff, coordinators
):
    a, b = coordinators("node-a"), coordinators("node-b")
    a.runtime.run(a.tick())  # a leads alone: every shard moves to it
    page = staff.get(f"{ADMIN}/clusterinspection/shards/").content.decode()
    assert "the last rebalance moved 100 shards." in page
    cells_ = grid(page)
    assert sorted(cells_) == list(range(100))
    assert all(
        cell == ("node-a", True, f"shard {s}: node-a, newly assigned") for s, cell in cells_.items()
    )
    assert legend(page, "node-a") == ["node-a", "100", "100"]
    assert "grid-template-columns: 3em repeat(10, 17px)" in page  # 100 shards: 10 x 10

    b.runtime.run(b.heartbeat())
    plan = a.runtime.run(a.rebalance())
    assert plan is not None and plan.moved_count == 50
    page = staff.get(f"{ADMIN}/clusterinspection/shards/").content.decode()
    assert f"written by the leader of term {a.lease.term};" in page
    assert "the last rebalance moved 50 shards." in page
    assert legend(page, "node-a") == ["node-a", "50", "0"]
    assert legend(page, "node-b") == ["node-b", "50", "50"]
    cells_ = grid(page)
    for shard, (node, moved, title) in cells_.items():
        assert node == plan.assignment[shard]
        assert moved == (shard in plan.moved), shard
        if moved:
            assert title == f"shard {shard}: node-b, moved from node-a"
        else:
            assert title == f"shard {shard}: node-a"
    # Each node's cells have the class its legend swatch has: one colour a node.
    assert '<span class="aether-swatch aether-n0" data-node="node-a">' in page
    assert '<span class="aether-swatch aether-n1" data-node="node-b">' in page
    assert all(
        f"aether-n{0 if node == 'node-a' else 1}" in c for c, _, node, _ in CELL.findall(page)
    )
    # The same as text, for screen readers: a node's shards as ranges, and its moves.
    text = page[page.index('id="aether-shard-text"') :]
    moved_in = sorted(plan.moved)
    assert "node-b: 50 shards, 50 moved in by the last rebalance</summary>" in text
    assert f"{moved_in[0]} (from node-a), {moved_in[1]} (from node-a)" in text
    assert "node-a: 50 shards</summary>" in text


def test_a_shard_map_of_an_older_version_shows_the_moved_count_only(staff, coordinators):
    """A map stored before the moves were recorded has no ``moved_shards``: the page says
    how many moved, that it cannot say which, and outlines none."""
    a = coordinators("node-a")
    a.runtime.run(a.setup())
    old = {
        "num_shards": 100,
        "nodes": ["node-a", "node-b"],
        "owners": [i % 2 for i in range(100)],
        "term": 7,
        "moved": 50,
        "updated_at": 1.0,
        "moves_total": 150,
    }
    a.runtime.run(a._put("shardmap", json.dumps(old).encode()))
    shard_map = a.runtime.run(a.read_shard_map())
    assert shard_map is not None and not shard_map.moves_recorded and shard_map.moved_from == {}
    page = staff.get(f"{ADMIN}/clusterinspection/shards/").content.decode()
    assert "the last rebalance moved 50 shards." in page
    assert "did not record which shards moved" in page
    cells_ = grid(page)
    assert len(cells_) == 100 and not any(moved for _, moved, _ in cells_.values())
    assert cells_[3] == ("node-b", False, "shard 3: node-b")


def test_a_shard_map_keeps_the_keys_older_versions_read():
    """The stored document only gains keys: what an older reader reads is unchanged, and
    the moves survive a round trip (previous owners that left included)."""
    shard_map = ShardMap(
        4, {0: "a", 1: "b", 2: "a", 3: "b"}, term=3, moved=2, moved_from={1: "gone", 3: None}
    )
    doc = json.loads(shard_map.to_json())
    assert {"num_shards", "nodes", "owners", "term", "moved", "updated_at", "moves_total"} <= set(
        doc
    )
    assert doc["owners"] == [0, 1, 0, 1] and doc["nodes"] == ["a", "b"]
    back = ShardMap.from_json(shard_map.to_json(), revision=9)
    assert back.moved_from == {1: "gone", 3: None} and back.moves_recorded
    assert back.assignment == shard_map.assignment and back.revision == 9


def test_more_nodes_than_colours_get_a_hatch_and_their_number():
    """Past the palette's 12 colours a node's cells are hatched and numbered: every node
    still looks unlike every other."""
    nodes = [f"node-{i:02d}" for i in range(30)]
    shard_map = ShardMap(60, {s: nodes[s % 30] for s in range(60)}, term=1)
    layout = shard_grid(shard_map)
    looks = {(n.colour, n.hatch) for n in layout.nodes}
    assert len(looks) == 30
    assert all(n.hatch == "" for n in layout.nodes[: len(PALETTE)])
    assert all(n.hatch for n in layout.nodes[len(PALETTE) :])
    assert [n.number for n in layout.nodes] == list(range(1, 31))
    assert layout.columns == 8 and [start for start, _ in layout.rows] == list(range(0, 60, 8))
    assert layout.nodes[0].ranges == "0, 30"


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
