"""Process managers: each command exactly once across redeliveries, crashes and two runners;
causation and correlation ids; failures that stop; rebuilds that refuse; the checks.

A relay (tests/projections/app/process.py) reads Tick events and sends ``count`` to a
Counter aggregate, one or two commands per event; the tests count the Counter's stored
events per command id. The guarantees run on SQLite and on the suite's PostgreSQL
(``db_alias``); the crash and race tests use real runner processes
(tests/projections/pmproc.py), killed with SIGKILL between a command and its checkpoint.
"""

from __future__ import annotations

import io
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from aether_django import aggregates
from aether_django.checks import check_projections
from aether_django.correlation import CAUSATION_KEY, CORRELATION_KEY
from aether_django.errors import ProjectionError
from aether_django.events import Event
from aether_django.models import ProjectionCheckpoint
from aether_django.projections import (
    ProcessContext,
    ProcessManager,
    ProjectionContext,
    on,
    operations,
)
from aether_django.projections.runner import catch_up
from aether_django.store import get_event_store

from .app import process
from .app.models import Applied
from .app.process import command_counts, counter, expected_command_ids, relay
from .conftest import eventually
from .test_kill import ROOT, Target, _wait_for_checkpoint, target  # noqa: F401

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("scratch_projections", "scratch_aggregates"),
]

PMPROC = [sys.executable, "-m", "tests.projections.pmproc"]


@pytest.fixture
def scratch_aggregates() -> Iterator[None]:
    """Forget the aggregate classes a test declares (their namespaces are the test's)."""
    saved = dict(aggregates._registry)
    yield
    aggregates._registry.clear()
    aggregates._registry.update(saved)
    process.FAIL_AFTER_COMMANDS.clear()


def state(name: str, namespace: str, db: str) -> ProjectionCheckpoint | None:
    return (
        ProjectionCheckpoint.objects.using(db).filter(projection=name, namespace=namespace).first()
    )


def at(event: Event) -> int:
    """The stream sequence of a saved event."""
    assert event.sequence is not None
    return event.sequence


def ticks(namespace: str, count: int, *, first: int = 0, actor: str = "a", **data) -> list[Event]:
    """Save Tick events with ``i`` = first, first + 1, ... (one actor, in order)."""
    store = get_event_store(namespace)
    version = store.get_latest_version(actor)
    return [
        store.save_event(
            Event(
                event_type="Tick",
                actor_id=actor,
                version=version + 1 + n,
                data={"i": first + n, **data},
            )
        )
        for n in range(count)
    ]


# --- in one process --------------------------------------------------------------------------


def test_each_event_issues_its_commands_once_with_ids_from_the_event(unique, runners, db_alias):
    source, target_ns = unique("pm-src"), unique("pm-dst")
    Counter = counter(target_ns)
    Relay = relay(source, unique("relay"), Counter, database=db_alias)
    events = ticks(source, 12)
    runners(Relay)
    Relay.wait_for(events[-1], timeout=30)
    name = Relay._meta.name
    counts = command_counts(Counter)
    assert counts == dict.fromkeys(expected_command_ids(name, events), 1)
    # The first command of an event has the bare id, the second the suffix :2.
    assert f"{name}:{events[0].id}" in counts and f"{name}:{events[0].id}:2" in counts
    assert Counter.objects.get("c-0").counted == 3  # i = 0, 4, 8
    assert Counter.objects.get("audit").counted == 3  # i = 0, 5, 10


def test_the_commanded_events_are_caused_by_the_triggering_event(unique, db_alias):
    source, target_ns = unique("pm-src"), unique("pm-dst")
    Counter = counter(target_ns)
    Relay = relay(source, unique("relay"), Counter, database=db_alias)
    store = get_event_store(source)
    plain = store.save_event(Event(event_type="Tick", actor_id="a", version=1, data={"i": 1}))
    traced = store.save_event(
        Event(
            event_type="Tick",
            actor_id="a",
            version=2,
            data={"i": 2},
            metadata={CORRELATION_KEY: "request-42", CAUSATION_KEY: "request-42"},
        )
    )
    seen: list[tuple[str | None, str | None]] = []
    handler = Relay.tick

    def tick(self, event: Event, context: ProcessContext) -> None:
        seen.append((context.correlation_id, context.causation_id))
        handler(self, event, context)

    Relay.tick = tick  # type: ignore[method-assign]
    assert catch_up(Relay) == {source: "caught-up"}
    # The handler sees the event's own ids (None: the first was stored without any).
    assert seen == [(None, None), ("request-42", "request-42")]
    (first,) = Counter.get_store().get_events("c-1")
    (second,) = Counter.get_store().get_events("c-2")
    # Causation: the event reacted to. Correlation: that event's, or its id when it has none.
    assert first.metadata[CAUSATION_KEY] == plain.id
    assert first.metadata[CORRELATION_KEY] == plain.id
    assert second.metadata[CAUSATION_KEY] == traced.id
    assert second.metadata[CORRELATION_KEY] == "request-42"


def test_a_batch_that_fails_after_its_commands_applies_them_once(unique, runners, db_alias):
    """The handler of the 7th event raises after its commands, twice: the batch rolls back
    (its checkpoint stays), the events are delivered again, their commands are found done."""
    source, target_ns = unique("pm-src"), unique("pm-dst")
    Counter = counter(target_ns)
    marks = []
    Relay = relay(
        source,
        unique("relay"),
        Counter,
        database=db_alias,
        batch_size=10,
        on_error={"retries": 50, "backoff": 0.05, "max_backoff": 0.2},
    )
    events = ticks(source, 10)
    failing = (source, at(events[6]))
    process.FAIL_AFTER_COMMANDS.add(failing)
    original = process._note
    process._note = lambda replayed: marks.append(replayed)
    try:
        runner = runners(Relay)
        # The events before it once more (8 commands), then it alone, twice.
        eventually(lambda: marks.count(True) >= 10, what="redeliveries")
        process.FAIL_AFTER_COMMANDS.discard(failing)  # fixed
        Relay.wait_for(events[-1], timeout=30)
        runner.stop()
    finally:
        process._note = original
    assert command_counts(Counter) == dict.fromkeys(
        expected_command_ids(Relay._meta.name, events), 1
    )
    # The commands of the redelivered events were found done, not run again.
    assert marks.count(False) == len(expected_command_ids(Relay._meta.name, events))
    assert marks.count(True) >= 10
    cp = state(Relay._meta.name, source, db_alias)
    assert cp is not None and cp.sequence == events[-1].sequence and cp.state == "running"


def test_an_unhandled_domain_error_stops_the_process_manager_at_the_event(unique, db_alias):
    source, target_ns = unique("pm-src"), unique("pm-dst")
    Counter = counter(target_ns)
    Relay = relay(source, unique("relay"), Counter, database=db_alias)
    events = ticks(source, 3) + ticks(source, 1, first=3, refuse=True) + ticks(source, 2, first=4)
    assert catch_up(Relay) == {source: "failed"}
    name = Relay._meta.name
    cp = state(name, source, db_alias)
    assert cp is not None
    assert (cp.state, cp.sequence, cp.last_error_sequence) == ("failed", 3, events[3].sequence)
    assert "DomainError: tick 3 refused" in cp.last_error
    (status,) = operations.statuses([Relay])
    assert (status.state, status.last_error_sequence) == ("failed", events[3].sequence)
    out = io.StringIO()
    call_command("aether_projections", "status", name, stdout=out)
    assert "failed at sequence 4: aether_django.aggregates.DomainError: tick 3 refused" in (
        out.getvalue()
    )
    # The events before it issued their commands; nothing after it ran.
    assert command_counts(Counter) == dict.fromkeys(expected_command_ids(name, events[:3]), 1)
    # A recorded skip passes over it (its command is never issued).
    operations.skip(Relay, source, at(events[3]), reason="refused", by="test")
    assert catch_up(Relay) == {source: "caught-up"}
    assert command_counts(Counter) == dict.fromkeys(
        expected_command_ids(name, events[:3] + events[4:]), 1
    )


def test_a_handled_domain_error_is_the_process_managers_decision(unique, db_alias):
    source, target_ns = unique("pm-src"), unique("pm-dst")
    Counter = counter(target_ns)
    Relay = relay(source, unique("relay"), Counter, database=db_alias)
    events = ticks(source, 1, first=1, refuse=True, handle_refusal=True) + ticks(source, 1, first=2)
    assert catch_up(Relay) == {source: "caught-up"}
    name = Relay._meta.name
    # The refusal was written to the process manager's own model, with the checkpoint.
    refused = Applied.objects.using(db_alias).get(projection=name)
    assert (refused.sequence, refused.event_type) == (events[0].sequence, "Refused")
    assert refused.data == {"error": "tick 1 refused"}
    assert command_counts(Counter) == {f"{name}:{events[1].id}": 1}


def test_send_refuses_a_method_that_is_not_a_command_and_an_unknown_namespace(unique, db_alias):
    source, target_ns = unique("pm-src"), unique("pm-dst")
    Counter = counter(target_ns)
    # A class body reads assigned names from the globals, not from this function.
    source_ns = source

    class Wrong(ProcessManager):
        class Meta:
            source = source_ns
            name = unique("wrong")
            database = db_alias
            on_error = {"retries": 0}

        @on("Tick")
        def tick(self, event: Event, context: ProcessContext) -> None:
            model = Counter if event.data["i"] == 0 else "no-such-namespace"
            context.send(model, "x", "save" if event.data["i"] == 0 else "count", create=True)

    events = ticks(source, 2)
    assert catch_up(Wrong) == {source: "failed"}
    cp = state(Wrong._meta.name, source, db_alias)
    assert cp is not None and cp.last_error_sequence == events[0].sequence
    assert "'save' is not a command of Counter_" in cp.last_error
    assert Counter.get_store().get_actor_ids() == []
    operations.skip(Wrong, source, at(events[0]), reason="bug", by="t")
    assert catch_up(Wrong) == {source: "failed"}
    cp = state(Wrong._meta.name, source, db_alias)
    assert cp is not None and cp.last_error_sequence == events[1].sequence
    assert "no aggregate class is registered for namespace 'no-such-namespace'" in cp.last_error


def test_a_command_id_needs_an_event_id():
    context = ProcessContext(
        ProjectionContext(namespace="n", sequence=1, projection="p", database="default"),
        Event(event_type="Tick", actor_id="a", version=1, id=""),
    )
    with pytest.raises(ProjectionError, match="has no id"):
        context.command_id()


def test_a_rebuild_of_a_process_manager_is_refused_unless_forced(unique, db_alias):
    source, target_ns = unique("pm-src"), unique("pm-dst")
    Counter = counter(target_ns)
    Relay = relay(source, unique("relay"), Counter, database=db_alias)
    name = Relay._meta.name
    events = ticks(source, 4)
    assert catch_up(Relay) == {source: "caught-up"}
    with pytest.raises(ProjectionError, match="is a process manager"):
        operations.reset(Relay)
    with pytest.raises(ProjectionError, match="is a process manager"):
        operations.rebuild(Relay)
    with pytest.raises(CommandError, match="--force"):
        call_command("aether_projections", "rebuild", name, stdout=io.StringIO())
    cp = state(name, source, db_alias)
    assert cp is not None and cp.sequence == events[-1].sequence  # nothing was reset
    # Forced: the replay issues the commands again; the target actors still hold their
    # ids (within their command window), so none runs twice.
    out = io.StringIO()
    call_command("aether_projections", "rebuild", name, "--force", "--no-progress", stdout=out)
    assert f"rebuilt {name}" in out.getvalue()
    assert command_counts(Counter) == dict.fromkeys(expected_command_ids(name, events), 1)


def test_the_admins_rebuild_of_a_process_manager_is_refused(unique):
    from .test_admin_page import action_url, client_of, superuser

    source, target_ns = unique("pm-src"), unique("pm-dst")
    Relay = relay(source, unique("relay"), counter(target_ns))
    events = ticks(source, 2)
    assert catch_up(Relay) == {source: "caught-up"}
    response = client_of(superuser()).post(
        action_url(Relay._meta.name, "rebuild"), {"confirm": "yes"}
    )
    assert response.status_code == 400
    assert "is a process manager: replaying its events issues their commands again" in (
        response.content.decode()
    )
    cp = state(Relay._meta.name, source, "default")
    assert cp is not None and cp.sequence == at(events[-1])


def test_the_system_checks_apply_to_a_process_managers_meta(unique):
    class Broken(ProcessManager):
        class Meta:
            source = "no spaces allowed"
            batch_size = 0
            retries = 3

    ids = [m.id for m in check_projections() if m.obj is Broken]
    assert ids == ["aether_django.E501"] * 3
    with pytest.raises(ProjectionError, match="declared wrongly"):
        from aether_django.projections.runner import ProjectionRunner

        ProjectionRunner([Broken])


# --- real processes ----------------------------------------------------------------------------


def _run(env: dict[str, str], args: list[str], log: Path) -> subprocess.Popen:
    out = log.open("ab")
    try:
        return subprocess.Popen([*PMPROC, *args], cwd=ROOT, env=env, stdout=out, stderr=out)
    finally:
        out.close()


@pytest.mark.slow
def test_sigkill_between_command_and_checkpoint_applies_every_command_once(
    tmp_path,
    unique,
    target,  # noqa: F811
):
    """The runner process kills itself (SIGKILL) right after a command was stored, before
    its batch's checkpoint commits, eight times, while more events are saved; after a
    restart every command is in the target's history exactly once."""
    source, target_ns, name = unique("pm-src"), unique("pm-dst"), unique("pm-kill")
    Counter = counter(target_ns)
    marks = tmp_path / "marks"
    env = dict(target.env, BATCH_SIZE="10", RELAY_MARKS=str(marks))
    events = ticks(source, 60)
    log = tmp_path / "pm.log"
    rng = random.Random(17)
    kills = 0
    for round_ in range(8):
        proc = _run(
            dict(env, RELAY_KILL_AFTER=str(rng.randint(1, 12))),
            [source, name, target_ns],
            log,
        )
        assert proc.wait(120) == -signal.SIGKILL, log.read_text()
        kills += 1
        events += ticks(source, 5, first=60 + 5 * round_)
    proc = _run(env, [source, name, target_ns], log)
    try:
        _wait_for_checkpoint(target, name, source, at(events[-1]), log)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0, log.read_text()
    expected = expected_command_ids(name, events)
    assert command_counts(Counter) == dict.fromkeys(expected, 1)
    written = marks.read_text()
    # Each command was applied once over all the runs; each kill left at least one
    # applied command behind its checkpoint, found done after the restart.
    assert written.count("a") == len(expected)
    assert written.count("r") >= kills == 8


@pytest.mark.slow
def test_two_runner_processes_of_one_process_manager_apply_each_command_once(
    tmp_path,
    unique,
    target,  # noqa: F811
):
    source, target_ns, name = unique("pm-src"), unique("pm-dst"), unique("pm-two")
    Counter = counter(target_ns)
    env = dict(target.env, BATCH_SIZE="5")
    events = ticks(source, 40)
    log = tmp_path / "pm.log"
    procs = [_run(env, [source, name, target_ns], log) for _ in range(2)]
    try:
        deadline = time.monotonic() + 60
        while log.read_text().count(f"running {name}") < 2:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        # Live events reach both runners at once: they race for each batch.
        for n in range(12):
            events += ticks(source, 5, first=40 + 5 * n)
            time.sleep(0.02)
        _wait_for_checkpoint(target, name, source, at(events[-1]), log)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        codes = [proc.wait(30) for proc in procs]
    assert codes == [0, 0], log.read_text()
    assert command_counts(Counter) == dict.fromkeys(expected_command_ids(name, events), 1)
