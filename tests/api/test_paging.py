"""Pages of the API stay bounded: a page of events by bytes as well as by count."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from django.conf import settings
from django.test import override_settings

from aether_django.store import get_event_store
from aether_django.testing.contract import ev

API = "/api/aether"
MiB = 1024 * 1024
#: Events of nearly the largest size accepted (MAX_EVENT_BYTES, 1 MiB by default).
BIG = 900 * 1024
COUNT = 48  # about 42 MiB of events


def events_url(ns, actor="big"):
    return f"{API}/namespaces/{ns}/actors/{actor}/events/"


def _status(field: str) -> int:
    """A figure of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


def peak_growth(call):
    """How far this process's resident memory rose above its level before ``call``."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    base = _status("VmRSS")
    result = call()
    return result, _status("VmHWM") - base


@pytest.fixture
def big_actor(ns):
    store = get_event_store(ns)
    for version in range(1, COUNT + 1):
        store.save_event(ev("big", version, "Blob", blob="x" * BIG, n=version))
    return ns


def test_a_page_of_large_events_ends_at_the_byte_budget_and_memory_stays_bounded(root, big_actor):
    ns = big_actor
    response, growth = peak_growth(lambda: root.get(events_url(ns), {"limit": 1000}))
    assert response.status_code == 200
    # The whole history is about 42 MiB: a request that built it all would grow the
    # process by several times that. A page of 4 MiB, its JSON and its copies stay
    # well under 40 MiB.
    assert growth < 40 * MiB, f"grew by {growth / MiB:.0f} MiB"
    page = response.json()
    budget = 4 * MiB  # API_PAGE_BYTES's default
    assert 1 <= len(page["results"]) <= budget // BIG
    assert page["next"] is not None and "from_version=" in page["next"]
    del response, page

    # Following next reads every event once, in order, each page within the budget.
    seen, url = [], events_url(ns) + "?limit=1000"
    while url:
        body = root.get(url).json()
        assert sum(len(e["data"]["blob"]) for e in body["results"]) <= budget
        seen += [e["version"] for e in body["results"]]
        url = body["next"]
    assert seen == list(range(1, COUNT + 1))


def test_the_byte_budget_is_a_setting_and_a_page_holds_at_least_one_event(root, big_actor):
    ns = big_actor
    with override_settings(AETHER={**settings.AETHER, "API_PAGE_BYTES": 1000}):
        one = root.get(events_url(ns), {"limit": 5}).json()
        assert [e["version"] for e in one["results"]] == [1]
        assert "from_version=2" in one["next"]
    with override_settings(AETHER={**settings.AETHER, "API_PAGE_BYTES": 3 * BIG + 3000}):
        three = root.get(events_url(ns), {"limit": 5, "from_version": 46}).json()
        assert [e["version"] for e in three["results"]] == [46, 47, 48]
        assert three["next"] is None


def test_small_events_still_fill_a_page_by_count(root, ns):
    store = get_event_store(ns)
    store.save_events([ev("small", v) for v in range(1, 8)])
    body = root.get(events_url(ns, "small"), {"limit": 3}).json()
    assert [e["version"] for e in body["results"]] == [1, 2, 3]
    assert "from_version=4" in body["next"]
    last = root.get(events_url(ns, "small"), {"limit": 4, "from_version": 4}).json()
    assert [e["version"] for e in last["results"]] == [4, 5, 6, 7] and last["next"] is None


# --- actors ------------------------------------------------------------------------------


def actors_url(ns):
    return f"{API}/namespaces/{ns}/actors/"


def walk(client, url, **params):
    """Every page from ``url`` on, following next: the ids of each page."""
    pages = []
    body = client.get(url, params).json()
    while True:
        pages.append([a["actor_id"] for a in body["results"]])
        if body["next"] is None:
            return pages
        body = client.get(body["next"]).json()


def token_order(ids):
    from aether_django.names import actor_token

    return sorted(ids, key=actor_token)


def test_actor_pages_come_in_subject_token_order_each_actor_once(root, ns):
    store = get_event_store(ns)
    ids = [f"a-{i:03d}" for i in range(120)] + ["z/1", "b c", "Ünï", "9", "_x", "-y"]
    for actor_id in ids:
        store.save_event(ev(actor_id, 1))
    pages = walk(root, actors_url(ns), limit=50)
    assert [len(p) for p in pages] == [50, 50, 26]
    assert [a for p in pages for a in p] == token_order(ids)
    first = root.get(actors_url(ns), {"limit": 3}).json()["results"]
    assert first[0]["version"] == 1 and "shard" in first[0]


def test_actors_created_between_pages_neither_repeat_nor_hide_others(root, ns):
    store = get_event_store(ns)
    ids = [f"m-{i:03d}" for i in range(100)]
    for actor_id in ids:
        store.save_event(ev(actor_id, 1))
    body = root.get(actors_url(ns), {"limit": 40}).json()
    seen = [a["actor_id"] for a in body["results"]]
    # New actors before the cursor (a-...) and after it (z-...), between pages.
    for actor_id in ("a-new-1", "a-new-2", "m-000a", "z-new"):
        store.save_event(ev(actor_id, 1))
    while body["next"]:
        body = root.get(body["next"]).json()
        seen += [a["actor_id"] for a in body["results"]]
    assert len(seen) == len(set(seen)), "no actor twice"
    assert set(ids) <= set(seen), "every actor that existed throughout is shown"
    assert "z-new" in seen and "a-new-1" not in seen  # after the cursor yes, before no


def received_bytes() -> int:
    """Bytes this process's NATS connection has received so far."""
    from aether_django.runtime import get_runtime

    async def read() -> int:
        nc = await get_runtime().connection()
        return int(nc.stats["in_bytes"])

    return int(get_runtime().run(read()))


def test_walking_the_actor_pages_reads_the_listing_once_not_once_a_page(root, ns):
    """Each page used to read the namespace's whole subject listing, so walking every
    page cost pages x listing; now a page costs a small STREAM.INFO and a slice of a
    listing read once. Measured in bytes received from the server."""

    store = get_event_store(ns)
    count, limit = 2000, 100
    for i in range(count):
        store.save_event(ev(f"actor-{i:05d}", 1))

    def spent(call):
        before = received_bytes()
        result = call()
        return result, received_bytes() - before

    _, one_listing = spent(store.get_actor_ids)
    pages, walking = spent(lambda: walk(root, actors_url(ns), limit=limit))
    assert sum(len(p) for p in pages) == count and len(pages) == count // limit
    # Besides the listing, each page reads its actors' last events (their versions).
    _, versions = spent(lambda: [store.get_latest_versions(p) for p in pages])
    listing = walking - versions
    assert listing < 3 * one_listing, (listing, one_listing)


def test_actors_created_during_a_walk_are_added_to_the_kept_listing_not_reread(root, ns):
    """On a namespace where actors are being created, each page finds one more actor:
    the kept listing learns it from the events stored since, instead of reading the
    whole listing again on every page."""

    store = get_event_store(ns)
    count, limit = 2000, 100
    for i in range(count):
        store.save_event(ev(f"actor-{i:05d}", 1))

    before = received_bytes()
    store.get_actor_ids()
    one_listing = received_bytes() - before

    pages, created = [], []
    before = received_bytes()
    body = root.get(actors_url(ns), {"limit": limit}).json()
    while True:
        pages.append([a["actor_id"] for a in body["results"]])
        # One new actor after the cursor and one before it, between every two pages.
        for actor_id in (f"zz-{len(created):03d}", f"aa-{len(created):03d}"):
            store.save_event(ev(actor_id, 1))
            created.append(actor_id)
        if body["next"] is None:
            break
        body = root.get(body["next"]).json()
    walking = received_bytes() - before
    seen = [a for p in pages for a in p]
    assert len(seen) == len(set(seen))
    assert [a for a in seen if a.startswith("actor-")] == [f"actor-{i:05d}" for i in range(count)]
    after_cursor = [a for a in created if a.startswith("zz-")]
    assert set(after_cursor[:-1]) <= set(seen), "new actors after the cursor are shown"
    assert not any(a.startswith("aa-") for a in seen[limit:]), "none before the cursor"
    # Besides the listing, each page reads its actors' last events (their versions)
    # and the walk stored 2 events a page; a listing read again on every page would
    # add one listing a page.
    before = received_bytes()
    for page in pages:
        store.get_latest_versions(page)
    versions = received_bytes() - before
    assert walking - versions < 3 * one_listing, (walking - versions, one_listing)
