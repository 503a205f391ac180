"""A node process for the multi-process bus tests: JSON commands on stdin, JSON lines out.

Run as ``python -m tests.bus.node``. Commands (one JSON object per line):

* ``{"cmd": "subscribe", "label": ..., "pattern": ..., "event_types": [...],
  "actor_pattern": ..., "durable": ..., "start": ..., "handle_seconds": ...,
  "handled_file": ...}`` → ``{"ready": label}``. With ``handle_seconds`` each
  delivery's handler takes that long; with ``handled_file`` it then appends the
  event id to that file (so what was handled survives a kill of the process).
* ``{"cmd": "save", "namespace": ..., "actor_id": ..., "versions": [...],
  "event_type": ...}`` → ``{"saved": [ids], "started": time.monotonic() before saving}``
* ``{"cmd": "exit"}`` closes every subscription (saving durable positions) and exits.

Every delivery prints ``{"label", "namespace", "id", "version", "sequence", "actor_id",
"event_type", "received"}`` when it is handed over (before its handler runs);
``received`` is ``time.monotonic()`` there, the clock every process of the machine shares.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time


def emit(doc: dict) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def append_line(path: str, text: str) -> None:
    # Blocking on purpose: the line is in the file before the handler counts as done.
    with open(path, "a") as out:
        out.write(text + "\n")


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

    async def pump(label, subscription, handle_seconds=0.0, handled_file=None):
        async for d in subscription:
            received = time.monotonic()
            emit(
                {
                    "label": label,
                    "namespace": d.namespace,
                    "id": d.event.id,
                    "version": d.event.version,
                    "sequence": d.sequence,
                    "actor_id": d.event.actor_id,
                    "event_type": d.event.event_type,
                    "received": received,
                }
            )
            if handle_seconds:
                await asyncio.sleep(handle_seconds)
            if handled_file:
                append_line(handled_file, d.event.id)

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
            tasks.append(
                asyncio.create_task(
                    pump(
                        cmd["label"],
                        sub,
                        cmd.get("handle_seconds", 0.0),
                        cmd.get("handled_file"),
                    )
                )
            )
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
            started = time.monotonic()
            stored = await store.asave_events(events)
            emit({"saved": [e.id for e in stored], "started": started})
        elif cmd["cmd"] == "exit":
            break
    for sub in subscriptions:
        await sub.aclose()
    emit({"bye": True})


if __name__ == "__main__":
    asyncio.run(main())
