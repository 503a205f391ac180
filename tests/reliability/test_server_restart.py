"""nats-server is SIGKILLed during 10 000 saves from several processes and restarted.

Every save that returned is in the stream exactly once; every save that raised
StoreUnavailableError left nothing; every save that raised SaveOutcomeUnknownError is
settled by saving it again and is then stored exactly once.
"""

from __future__ import annotations

import itertools
import multiprocessing
import threading
import time
import uuid

import pytest

from aether_django.runtime import Runtime
from aether_django.store.jetstream import JetStreamEventStore

from .writers import write_through_faults

pytestmark = pytest.mark.slow

PROCESSES = 4
SAVES_EACH = 2500


def test_a_server_killed_mid_stream_loses_and_duplicates_nothing(aether_nats_server_factory):
    server = aether_nats_server_factory()
    namespace = f"restart-{uuid.uuid4().hex[:8]}"
    actors = [f"writer-{i}" for i in range(PROCESSES)]

    def crash():
        # Kill the server once the writers are well under way, then bring it back.
        watcher = Runtime(server.url)
        store = JetStreamEventStore(namespace, runtime=watcher)
        try:
            while True:
                try:
                    info = store.get_info()
                except Exception:
                    info = None
                if info is not None and info.events >= PROCESSES * SAVES_EACH // 5:
                    break
                time.sleep(0.02)
        finally:
            watcher.close()
        server.kill()
        time.sleep(2.0)
        server.start()

    crasher = threading.Thread(target=crash)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(PROCESSES) as pool:
        pending = pool.starmap_async(
            write_through_faults,
            [(server.url, namespace, actor, SAVES_EACH, 2.0) for actor in actors],
        )
        crasher.start()
        results = pending.get(timeout=600)
    crasher.join()

    runtime = Runtime(server.url)
    try:
        store = JetStreamEventStore(namespace, runtime=runtime)
        totals = {"acknowledged": 0, "refused": 0, "unknown": 0, "lost": 0, "duplicated": 0}
        for result in results:
            events = store.get_events(result["actor_id"])
            ids = [e.id for e in events]
            assert [e.version for e in events] == list(range(1, SAVES_EACH + 1))
            stored = set(ids)
            totals["duplicated"] += len(ids) - len(stored)
            totals["lost"] += sum(1 for i in result["acknowledged"] if i not in stored)
            assert not stored & set(result["refused"]), "a refused save left an event"
            assert set(result["unknown"]) <= stored, "an unconfirmed save was not settled"
            for key in ("acknowledged", "refused", "unknown"):
                totals[key] += len(result[key])
    finally:
        runtime.close()
    # The longest pause between two acknowledged saves of a writer spans the outage:
    # the server was down 2 s, and the clients reconnected by themselves.
    pauses = [max(b - a for a, b in itertools.pairwise(r["ack_times"])) for r in results]
    print(
        f"\n{PROCESSES} processes, {PROCESSES * SAVES_EACH} versions: "
        f"{totals['acknowledged']} acknowledged, {totals['refused']} refused (stored: 0), "
        f"{totals['unknown']} unconfirmed then settled, {totals['lost']} lost, "
        f"{totals['duplicated']} duplicated; server down 2.0 s, longest pause of a writer "
        f"{min(pauses):.2f}-{max(pauses):.2f} s"
    )
    assert totals["lost"] == 0 and totals["duplicated"] == 0
    assert totals["acknowledged"] == PROCESSES * SAVES_EACH
    assert totals["refused"] + totals["unknown"] > 0, "the crash should have interrupted saves"
