"""A node process for the multi-process bus tests: JSON commands on stdin, JSON lines out.

Run as ``python -m tests.bus.node``. Commands (one JSON object per line):

* ``{"cmd": "subscribe", "label": ..., "pattern": ..., "event_types": [...],
  "actor_pattern": ..., "durable": ..., "start": ..., "handle_seconds": ...,
  "handled_file": ...}`` → ``{"ready": label}``. With ``handle_seconds`` each
  delivery's handler takes that long; with ``handled_file`` it then appends the
  event id to that file (so what was handled survives a kill of the process).
  With ``fail_versions`` the handler raises (before appending) on events of those
  versions, the first ``fail_times`` times each (default: every time); ``mode``
  is ``"iterate"`` (default: ``async for``, calling ``nack()`` when the handler
  raised), ``"callback"`` (a coroutine callback) or ``"sync_callback"``. The
  error that ends the subscription prints ``{"ended": label, "error": class name,
  "event_id", "sequence", "attempts", "resume_start", "message"}``.
* ``{"cmd": "save", "namespace": ..., "actor_id": ..., "versions": [...],
  "event_type": ...}`` → ``{"saved": [ids], "started": time.monotonic() before saving}``
* ``{"cmd": "exit"}`` closes every subscription (saving durable positions) and exits.

Every delivery prints ``{"label", "namespace", "id", "version", "sequence", "actor_id",
"event_type", "received"}`` when it is handed over (before its handler runs);
``received`` is ``time.monotonic()`` there, the clock every process of the machine shares.
"""

from __future__ import annotations

import asyncio
import functools
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

    failures: dict[str, int] = {}

    def ended(label, error):
        emit(
            {
                "ended": label,
                "error": type(error).__name__,
                "event_id": getattr(error, "event_id", None),
                "sequence": getattr(error, "sequence", None),
                "attempts": getattr(error, "attempts", None),
                "resume_start": error.resume_start() if hasattr(error, "resume_start") else None,
                "message": str(error),
            }
        )

    def report(label, d):
        emit(
            {
                "label": label,
                "namespace": d.namespace,
                "id": d.event.id,
                "version": d.event.version,
                "sequence": d.sequence,
                "actor_id": d.event.actor_id,
                "event_type": d.event.event_type,
                "received": time.monotonic(),
            }
        )

    def finish(d, handled_file, fail_versions, fail_times):
        if d.event.version in (fail_versions or ()):
            failures[d.event.id] = failures.get(d.event.id, 0) + 1
            if fail_times is None or failures[d.event.id] <= fail_times:
                raise RuntimeError(f"handler failed on version {d.event.version}")
        if handled_file:
            append_line(handled_file, d.event.id)

    async def pump(label, subscription, handle_seconds=0.0, handled_file=None, fail=()):
        try:
            async for d in subscription:
                report(label, d)
                if handle_seconds:
                    await asyncio.sleep(handle_seconds)
                try:
                    finish(d, handled_file, *fail)
                except RuntimeError as exc:
                    subscription.nack(exc)
        except Exception as exc:
            ended(label, exc)

    def handlers(cmd):
        label, handled_file = cmd["label"], cmd.get("handled_file")
        handle_seconds = cmd.get("handle_seconds", 0.0)
        fail = (cmd.get("fail_versions"), cmd.get("fail_times"))

        async def acallback(d):
            report(label, d)
            if handle_seconds:
                await asyncio.sleep(handle_seconds)
            finish(d, handled_file, *fail)

        def callback(d):
            report(label, d)
            finish(d, handled_file, *fail)

        mode = cmd.get("mode", "iterate")
        return {"callback": acallback, "sync_callback": callback}.get(mode)

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd = json.loads(line)
        if cmd["cmd"] == "subscribe":
            filt = SubscriptionFilter(
                event_types=cmd.get("event_types"), actor_pattern=cmd.get("actor_pattern")
            )
            callback = handlers(cmd)
            sub = await bus.asubscribe(
                cmd["pattern"],
                filt,
                durable=cmd.get("durable"),
                start=cmd.get("start", "new"),
                callback=callback,
                on_error=functools.partial(ended, cmd["label"]),
            )
            subscriptions.append(sub)
            if callback is None:
                tasks.append(
                    asyncio.create_task(
                        pump(
                            cmd["label"],
                            sub,
                            cmd.get("handle_seconds", 0.0),
                            cmd.get("handled_file"),
                            (cmd.get("fail_versions"), cmd.get("fail_times")),
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
