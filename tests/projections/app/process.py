"""A process manager of the tests and the aggregate it commands, made per test (own namespaces).

``relay(source, name, target)`` reads the Tick events of ``source`` and, for each, sends
``count`` to the ``target`` Counter ``c-{i % 4}`` (``i`` from the event's data); for every
fifth Tick it also sends ``count`` to the Counter ``audit``, its second command of that
event. Each command records one Counted event, carrying the command id, so the test
counts the target's events per command id.
"""

from __future__ import annotations

import os
import signal
from typing import Any

from aether_django.aggregates import Aggregate, DomainError, apply, command
from aether_django.events import Event
from aether_django.projections import ProcessContext, ProcessManager, on

from .models import Applied


class CounterBase(Aggregate):
    """Counts the commands it ran; refuses a ``count`` with ``refuse`` set."""

    counted: int = 0

    class Meta:
        abstract = True

    @command
    def count(self, tick: int, refuse: bool = False) -> None:
        if refuse:
            raise DomainError(f"tick {tick} refused")
        self.record("Counted", tick=tick)

    @apply("Counted")
    def _counted(self, event: Event) -> None:
        self.counted += 1


def counter(namespace: str) -> type[CounterBase]:
    """A Counter aggregate class of ``namespace``."""
    Meta = type("Meta", (), {"namespace": namespace})
    return type(f"Counter_{namespace.replace('-', '_')}", (CounterBase,), {"Meta": Meta})


#: Where a relay notes each command: "a" when it was applied, "r" when the actor already
#: held its command id (a redelivery); None: nowhere.
MARKS: int | None = None
#: Kill this process (SIGKILL) right after this many commands applied, before the batch's
#: checkpoint commits; 0: never.
KILL_AFTER = 0
_applied = 0


def _note(replayed: bool) -> None:
    global _applied
    if MARKS is not None:
        os.write(MARKS, b"r" if replayed else b"a")
    if not replayed:
        _applied += 1
        if KILL_AFTER and _applied >= KILL_AFTER:
            os.kill(os.getpid(), signal.SIGKILL)


def configure_from_environment() -> None:
    """MARKS and KILL_AFTER from RELAY_MARKS (a file) and RELAY_KILL_AFTER (a child process)."""
    global MARKS, KILL_AFTER
    if os.environ.get("RELAY_MARKS"):
        MARKS = os.open(os.environ["RELAY_MARKS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    KILL_AFTER = int(os.environ.get("RELAY_KILL_AFTER") or 0)


#: (namespace, sequence) of events whose handler raises after its commands, while listed.
FAIL_AFTER_COMMANDS: set[tuple[str, int]] = set()


class RelayBase(ProcessManager):
    target: type[CounterBase]

    class Meta:
        abstract = True

    @on("Tick")
    def tick(self, event: Event, context: ProcessContext) -> None:
        i = int(event.data["i"])
        refuse = bool(event.data.get("refuse"))
        try:
            done = context.send(
                self.target, f"c-{i % 4}", "count", create=True, tick=i, refuse=refuse
            )
        except DomainError as exc:
            if not event.data.get("handle_refusal"):
                raise
            # The refusal is the process's decision: note it in its own model, in the
            # batch's transaction.
            Applied.objects.using(context.database).create(
                projection=context.projection,
                namespace=context.namespace,
                sequence=context.sequence,
                actor_id=event.actor_id,
                event_type="Refused",
                data={"error": str(exc)},
            )
            return
        _note(done.command_replayed)
        if i % 5 == 0:
            audit = context.update(self.target, "audit", lambda c: c.count(tick=i), create=True)
            _note(audit.command_replayed)
        if (context.namespace, context.sequence) in FAIL_AFTER_COMMANDS:
            raise RuntimeError(f"failing after the commands of {context.sequence}")


def relay(source: str, name: str, target: type[CounterBase], **meta: Any) -> type[RelayBase]:
    """A RelayBase subclass reading ``source``, called ``name``, commanding ``target``."""
    options: dict[str, Any] = {"source": source, "name": name, "models": [Applied]}
    options.setdefault("on_error", {"retries": 2, "backoff": 0.05})
    options.update(meta)
    Meta = type("Meta", (), options)
    return type(f"Relay_{name.replace('-', '_')}", (RelayBase,), {"Meta": Meta, "target": target})


def expected_command_ids(name: str, events: list[Event]) -> set[str]:
    """The command ids a relay called ``name`` issues for ``events`` (Ticks)."""
    ids = set()
    for event in events:
        ids.add(f"{name}:{event.id}")
        if int(event.data["i"]) % 5 == 0:
            ids.add(f"{name}:{event.id}:2")
    return ids


def command_counts(target: type[CounterBase]) -> dict[str, int]:
    """How many stored events of ``target``'s namespace carry each command id."""
    counts: dict[str, int] = {}
    store = target.get_store()
    for actor_id in store.get_actor_ids():
        for event in store.get_events(actor_id):
            assert event.command_id, event
            counts[event.command_id] = counts.get(event.command_id, 0) + 1
    return counts
