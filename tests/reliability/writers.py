"""Writer processes for the reliability tests (importable under spawn)."""

from __future__ import annotations

import os
import time


def write_through_faults(
    url: str, namespace: str, actor_id: str, count: int, timeout: float
) -> dict:
    """Save versions 1..count of one actor whatever happens to the server; report every outcome.

    * acknowledged: ids whose save returned;
    * refused: ids of saves that raised StoreUnavailableError (the next attempt uses a
      new event, so these must never appear in the stream);
    * unknown: ids of saves that raised SaveOutcomeUnknownError, settled the documented
      way: saving the same event again until it returns;
    * ack_times: when each acknowledged save returned (``time.time()``, comparable
      across processes), for the time it took to resume after a fault.
    """
    from aether_django.errors import SaveOutcomeUnknownError, StoreUnavailableError
    from aether_django.events import Event
    from aether_django.runtime import Runtime
    from aether_django.store.base import StoreConfig
    from aether_django.store.jetstream import JetStreamEventStore

    runtime = Runtime(url)
    store = JetStreamEventStore(namespace, runtime=runtime, config=StoreConfig(timeout=timeout))
    acknowledged: list[str] = []
    refused: list[str] = []
    unknown: list[str] = []
    ack_times: list[float] = []
    started = time.monotonic()
    version = 1
    event = Event(event_type="Saved", actor_id=actor_id, version=1, data={"pid": os.getpid()})
    while version <= count:
        try:
            store.save_event(event)
        except SaveOutcomeUnknownError:
            unknown.append(event.id)
            continue  # the same event again: it returns once stored
        except StoreUnavailableError:
            refused.append(event.id)
            event = Event(event_type="Saved", actor_id=actor_id, version=version, data={})
            continue
        acknowledged.append(event.id)
        ack_times.append(time.time())
        version += 1
        event = Event(event_type="Saved", actor_id=actor_id, version=version, data={})
    runtime.close()
    return {
        "actor_id": actor_id,
        "acknowledged": acknowledged,
        "refused": refused,
        "unknown": unknown,
        "ack_times": ack_times,
        "seconds": time.monotonic() - started,
    }
