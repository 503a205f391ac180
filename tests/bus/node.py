"""A node process for the multi-process bus tests: JSON commands on stdin, JSON lines out.

Run as ``python -m tests.bus.node``. Commands (one JSON object per line):

* ``{"cmd": "subscribe", "label": ..., "pattern": ..., "event_types": [...],
  "actor_pattern": ..., "durable": ..., "start": ...}`` → ``{"ready": label}``
* ``{"cmd": "save", "namespace": ..., "actor_id": ..., "versions": [...],
  "event_type": ...}`` → ``{"saved": [ids]}``
* ``{"cmd": "exit"}`` closes every subscription (saving durable positions) and exits.

Every delivery prints ``{"label", "namespace", "id", "version", "sequence", "actor_id",
"event_type"}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys


def emit(doc: dict) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


async def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from aether_django.bus import get_event_bus
    from aether_django.events import Event
    from aether_django.patterns import SubscriptionFilter
    from aether_django.store import get_event_store

    bus = get_event_bus()
    subscriptions = []
    tasks = []

    async def pump(label, subscription):
        async for d in subscription:
            emit(
                {
                    "label": label,
                    "namespace": d.namespace,
                    "id": d.event.id,
                    "version": d.event.version,
                    "sequence": d.sequence,
                    "actor_id": d.event.actor_id,
                    "event_type": d.event.event_type,
                }
            )

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd["cmd"] == "subscribe":
            filt = SubscriptionFilter(
                event_types=cmd.get("event_types"), actor_pattern=cmd.get("actor_pattern")
            )
            sub = await bus.asubscribe(  # type: ignore[attr-defined]
                cmd["pattern"], filt, durable=cmd.get("durable"), start=cmd.get("start", "new")
            )
            subscriptions.append(sub)
            tasks.append(asyncio.create_task(pump(cmd["label"], sub)))
            emit({"ready": cmd["label"]})
        elif cmd["cmd"] == "save":
            store = get_event_store(cmd["namespace"])
            events = [
                Event(
                    event_type=cmd.get("event_type", "OrderPlaced"),
                    actor_id=cmd["actor_id"],
                    version=v,
                )
                for v in cmd["versions"]
            ]
            stored = await store.asave_events(events)
            emit({"saved": [e.id for e in stored]})
        elif cmd["cmd"] == "exit":
            break
    for sub in subscriptions:
        await sub.aclose()
    emit({"bye": True})


if __name__ == "__main__":
    asyncio.run(main())
