"""Projections: handlers, exactly-once checkpoints, catch-up then live, failures, skips,
rebuilds and read-your-writes, with a real nats-server.

The tests of a guarantee take the ``db_alias`` fixture and run twice: on SQLite (the
in-memory "default") and on a real PostgreSQL (the suite's "pg" alias), with the
projection's ``Meta.database``, checkpoints and read model all on that database."""

from __future__ import annotations

import io
import json
import threading
import time

import pytest
from asgiref.sync import sync_to_async
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connections, transaction

from aether_django.checks import check_projections
from aether_django.errors import ProjectionError, ProjectionTimeoutError
from aether_django.events import Event
from aether_django.management.commands import aether_projections
from aether_django.models import ProjectionCheckpoint, ProjectionSkip
from aether_django.projections import (
    Projection,
    ProjectionContext,
    get_projection,
    on,
    operations,
)
from aether_django.projections.runner import (
    NamespaceWorker,
    ProjectionRunner,
    _HandlerFailed,
    _Moved,
    catch_up,
    ensure_checkpoint,
)
from aether_django.store import get_event_store

from .app import projections as app_projections
from .app.models import Applied, OrderSummary
from .app.projections import LedgerBase, OrderSummaryProjection, ledger, order_summary
from .conftest import continuous_writes, eventually, save_ticks

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("scratch_projections"),
]


def sequences(name: str, namespace: str, db: str = "default") -> list[int]:
    return list(
        Applied.objects.using(db)
        .filter(projection=name, namespace=namespace)
        .order_by("sequence")
        .values_list("sequence", flat=True)
    )


def checkpoint(name: str, namespace: str, db: str = "default") -> ProjectionCheckpoint:
    return ProjectionCheckpoint.objects.using(db).get(projection=name, namespace=namespace)


def test_declaration_and_registry():
    assert get_projection("order-summary") is OrderSummaryProjection
    # A short class name finds a projection only when one has it: the example
    # project's OrderSummaryProjection (shop.order-summary) has this one's.
    with pytest.raises(ProjectionError, match="several projections are called"):
        get_projection("OrderSummaryProjection")
    Ledger = ledger("proj-shop", "only-one-of-its-class-name")
    assert get_projection(Ledger.__name__) is Ledger
    meta = OrderSummaryProjection._meta
    assert (meta.source, meta.batch_size, meta.database) == ("proj-shop", 100, "default")
    assert (meta.retries, meta.backoff, meta.max_backoff) == (3, 0.5, 30.0)
    assert OrderSummaryProjection._handlers == {
        "OrderPlaced": "placed",
        "LineAdded": "line_added",
        "OrderPaid": "paid",
    }
    with pytest.raises(ProjectionError, match="no projection called"):
        get_projection("nothing-like-it")


def _checks(projection) -> list[tuple[str | None, str]]:
    return [
        (m.id, m.msg)
        for m in check_projections()
        if m.obj is projection or (m.id == "aether_django.E502" and projection.__name__ in m.msg)
    ]


def test_system_checks_report_declarations_that_cannot_work(unique):
    class Wrong(Projection):
        class Meta:
            source = "bad pattern!"
            sauce = "orders"
            models = [str]
            batch_size = 0
            on_error = {"tries": 3}

    problems = [msg for _, msg in _checks(Wrong)]
    assert all(id_ == "aether_django.E501" for id_, _ in _checks(Wrong))
    assert any("unknown Meta option 'sauce'" in p for p in problems)
    assert any("Meta.source" in p for p in problems)
    assert any("Meta.models" in p for p in problems)
    assert any("Meta.batch_size" in p for p in problems)
    assert any("Meta.on_error" in p for p in problems)
    # A projection declared wrongly is never run.
    with pytest.raises(ProjectionError, match="declared wrongly"):
        ProjectionRunner([Wrong])

    class ElsewhereDb(Projection):
        class Meta:
            source = "orders"
            database = "reports"

    assert [id_ for id_, _ in _checks(ElsewhereDb)] == ["aether_django.E503"]

    class SameName(Projection):
        class Meta:
            source = "orders"
            name = "order-summary"

    assert ("aether_django.E502") in [id_ for id_, _ in _checks(SameName)]
    with pytest.raises(ProjectionError, match="several projections"):
        get_projection("order-summary")


def test_a_handler_for_a_type_no_aggregate_records_is_reported(unique):
    from aether_django import aggregates
    from aether_django.aggregates import Aggregate, apply, command

    ns = unique("proj-check")
    saved = dict(aggregates._registry)
    try:

        class Thing(Aggregate):
            class Meta:
                namespace = ns

            @command
            def make(self):
                self.record("Made", {})

            @apply("Made")
            def _made(self, event):
                pass

        class Typo(Projection):
            class Meta:
                source = ns

            @on("Made")
            def made(self, event, context):
                pass

            @on("Maed")
            def maed(self, event, context):
                pass

        assert _checks(Typo) == [
            (
                "aether_django.W501",
                f"Projection {Typo._meta.label} handles 'Maed' but no aggregate of {ns!r} "
                "records it.",
            )
        ]
    finally:
        aggregates._registry.clear()
        aggregates._registry.update(saved)


def test_handlers_write_rows_and_wait_for_reads_your_writes(runners, unique, db_alias):
    store = get_event_store("proj-shop")
    Summary = OrderSummaryProjection if db_alias == "default" else order_summary(db_alias)
    runners(Summary)
    order = unique("o")
    placed = store.save_event(
        Event(event_type="OrderPlaced", actor_id=order, version=1, data={"customer": "ann"})
    )
    store.save_event(Event(event_type="LineAdded", actor_id=order, version=2, data={"quantity": 2}))
    paid = store.save_event(Event(event_type="OrderPaid", actor_id=order, version=3))
    Summary.wait_for(placed, timeout=15)
    assert OrderSummary.objects.using(db_alias).filter(order_id=order).exists()
    Summary.wait_for(paid, timeout=15)
    row = OrderSummary.objects.using(db_alias).get(order_id=order)
    assert (row.customer, row.status, row.lines) == ("ann", "paid", 2)


def test_wait_for_times_out_clearly(unique, db_alias):
    namespace = unique("proj-wait")
    Ledger = ledger(namespace, unique("wait"), database=db_alias)
    (event,) = save_ticks(namespace, 1)
    with pytest.raises(ProjectionTimeoutError) as caught:
        Ledger.wait_for(event, timeout=0.2)
    error = caught.value
    assert (error.namespace, error.sequence, error.position, error.state) == (
        namespace,
        event.sequence,
        0,
        None,
    )
    assert "had not applied sequence 1" in str(error)
    # Before any runner ran there, status shows the namespace as new, the whole stream as lag.
    out = _command("status", Ledger._meta.name)
    assert f"  {namespace}: new at 0 of 1, lag 1" in out
    with pytest.raises(ProjectionError, match="stored position"):
        Ledger.wait_for(Event(event_type="Tick", actor_id="x", version=1))


async def test_await_for(unique, runners, db_alias):
    namespace = unique("proj-await")
    Ledger = ledger(namespace, unique("await"), database=db_alias)
    store = get_event_store(namespace)
    event = await store.asave_event(Event(event_type="Tick", actor_id="a", version=1))
    runners(Ledger)
    try:
        await Ledger.await_for(event, timeout=15)
        with pytest.raises(ProjectionTimeoutError):
            assert event.sequence is not None
            await Ledger.await_for(event.sequence + 5, timeout=0.1)
    finally:
        # The polls ran in asgiref's sync thread: its connection would outlive the test
        # (and keep PostgreSQL from dropping the test database at the end).
        await sync_to_async(connections.close_all)()


def test_catch_up_then_live_under_continuous_writes_no_gap_no_duplicate(unique, runners, db_alias):
    namespace = unique("proj-live")
    Ledger = ledger(namespace, unique("live"), batch_size=7, database=db_alias)
    history = save_ticks(namespace, 120, actor="history")
    with continuous_writes(namespace, 400) as saved:
        runners(Ledger)
        # The projection starts while writes go on: the hand-over from history to live
        # events happens under them.
        eventually(lambda: len(saved) > 100, what="live writes")
    everything = [e.sequence for e in history + saved]
    Ledger.wait_for(max(everything), timeout=30)
    assert sequences(Ledger._meta.name, namespace, db_alias) == sorted(everything)
    assert checkpoint(Ledger._meta.name, namespace, db_alias).sequence == max(everything)


def test_a_pattern_source_picks_up_namespaces_created_later(unique, runners, db_alias):
    prefix = unique("proj-pat")
    Ledger = ledger(f"{prefix}.*", unique("pattern"), database=db_alias)
    (first,) = save_ticks(f"{prefix}.one", 1)
    runners(Ledger, interval=0.1)
    Ledger.wait_for(first, namespace=f"{prefix}.one", timeout=15)
    later = save_ticks(f"{prefix}.two", 3)
    Ledger.wait_for(later[-1], namespace=f"{prefix}.two", timeout=15)
    assert sequences(Ledger._meta.name, f"{prefix}.two", db_alias) == [e.sequence for e in later]
    with pytest.raises(ProjectionError, match="pass namespace="):
        Ledger.wait_for(first, timeout=0.1)
    # A prefix pattern ("order*") works the same way.
    Prefixed = ledger(f"{prefix}-x*", unique("prefix"), database=db_alias)
    (third,) = save_ticks(f"{prefix}-xy", 1)
    runners(Prefixed)
    Prefixed.wait_for(third, namespace=f"{prefix}-xy", timeout=15)


def test_events_arrive_upcast_by_the_namespace_aggregate(unique, runners):
    from aether_django import aggregates
    from aether_django.aggregates import Aggregate, apply, evolve, upcaster

    ns = unique("proj-upcast")
    saved_registry = dict(aggregates._registry)
    try:

        class Box(Aggregate):
            class Meta:
                namespace = ns
                event_schemas = {"LineAdded": 2}

            @apply("LineAdded")
            def _line(self, event):
                pass

            # Version 1 called it ItemAdded.
            @upcaster("ItemAdded", schema=1)
            def _v1(event: Event) -> Event:
                return evolve(event, event_type="LineAdded", schema=2, data={"sku": "old"})

        Ledger = ledger(ns, unique("upcast"))
        store = get_event_store(ns)
        old = store.save_event(Event(event_type="ItemAdded", actor_id="b", version=1))
        runners(Ledger)
        Ledger.wait_for(old, timeout=15)
        row = Applied.objects.get(projection=Ledger._meta.name, namespace=ns)
        assert (row.event_type, row.data) == ("LineAdded", {"sku": "old"})
    finally:
        aggregates._registry.clear()
        aggregates._registry.update(saved_registry)


class CausesLedger(LedgerBase):
    """Writes, for every Tick, the correlation and causation ids its handler was given."""

    class Meta:
        abstract = True

    @on("Tick")
    def tick(self, event: Event, context: ProjectionContext) -> None:
        Applied.objects.using(context.database).create(
            projection=context.projection,
            namespace=context.namespace,
            sequence=context.sequence,
            actor_id=event.actor_id,
            event_type=event.event_type,
            data={"correlation": context.correlation_id, "causation": context.causation_id},
        )


def test_a_handler_is_given_the_events_correlation_and_causation_ids(unique, runners, db_alias):
    from aether_django import correlation

    ns = unique("proj-causes")
    Causes = ledger(ns, unique("causes"), base=CausesLedger, database=db_alias)
    store = get_event_store(ns)
    with correlation.use("req-proj", "cause-proj"):
        stamped = correlation.stamp({})
    first = store.save_event(Event(event_type="Tick", actor_id="a", version=1, metadata=stamped))
    bare = store.save_event(Event(event_type="Tick", actor_id="a", version=2))
    runners(Causes)
    Causes.wait_for(bare, timeout=15)
    rows = Applied.objects.using(db_alias).filter(namespace=ns).order_by("sequence")
    assert [row.data for row in rows] == [
        {"correlation": "req-proj", "causation": "cause-proj"},
        {"correlation": None, "causation": None},  # stored without them
    ]
    assert [row.sequence for row in rows] == [first.sequence, bare.sequence]


def test_a_poison_event_stops_the_projection_until_skipped(unique, runners, capsys, db_alias):
    namespace = unique("proj-poison")
    Ledger = ledger(namespace, unique("poison"), batch_size=50, database=db_alias)
    name = Ledger._meta.name
    events = save_ticks(namespace, 10)
    poison = events[4].sequence
    app_projections.POISON.add((namespace, poison))
    runners(Ledger)
    eventually(
        lambda: (
            ProjectionCheckpoint.objects.using(db_alias)
            .filter(projection=name, namespace=namespace, state="failed")
            .exists()
        ),
        what="the projection to fail",
    )
    # It stopped exactly at the poison event: everything before it applied, nothing after.
    cp = checkpoint(name, namespace, db_alias)
    assert (cp.sequence, cp.last_error_sequence) == (poison - 1, poison)
    assert "ValueError: cannot handle" in cp.last_error and cp.last_error_at is not None
    assert sequences(name, namespace, db_alias) == [e.sequence for e in events[:4]]
    # The status command shows it.
    call_command("aether_projections", "status", name)
    out = capsys.readouterr().out
    assert f"{namespace}: failed at {poison - 1} of {events[-1].sequence}, lag 6" in out
    assert f"failed at sequence {poison}: ValueError: cannot handle" in out
    status = json.loads(_command("status", name, "--json"))
    (ns_status,) = status["projections"][0]["namespaces"]
    assert (ns_status["state"], ns_status["last_error_sequence"]) == ("failed", poison)
    # A resume without a fix fails again at the same event; nothing is skipped.
    call_command("aether_projections", "resume", name)
    eventually(
        lambda: checkpoint(name, namespace, db_alias).state == "failed", what="failing again"
    )
    assert checkpoint(name, namespace, db_alias).sequence == poison - 1
    # Only the failing event can be skipped, with a reason; the skip is recorded.
    with pytest.raises(CommandError, match=f"stopped at sequence {poison}"):
        call_command(
            "aether_projections", "skip", name, "--namespace", namespace,
            "--sequence", str(poison + 1), "--reason", "no",
        )  # fmt: skip
    out = _command(
        "skip", name, "--namespace", namespace, "--sequence", str(poison),
        "--reason", "bad data from the import", "--by", "ops-anna",
    )  # fmt: skip
    assert f"skipped {namespace}:{poison}" in out
    record = ProjectionSkip.objects.using(db_alias).get(projection=name, namespace=namespace)
    assert (record.sequence, record.reason, record.skipped_by) == (
        poison,
        "bad data from the import",
        "ops-anna",
    )
    assert record.skipped_at is not None
    Ledger.wait_for(events[-1], timeout=15)
    assert sequences(name, namespace, db_alias) == [
        e.sequence for e in events if e.sequence != poison
    ]
    assert checkpoint(name, namespace, db_alias).state == "running"


def test_a_fix_lets_a_failed_projection_continue_from_the_event(unique, runners, db_alias):
    namespace = unique("proj-fix")
    Ledger = ledger(namespace, unique("fix"), database=db_alias)
    name = Ledger._meta.name
    events = save_ticks(namespace, 5)
    app_projections.POISON.add((namespace, events[2].sequence))
    runners(Ledger)
    eventually(lambda: checkpoint_state(name, namespace, db_alias) == "failed", what="failure")
    app_projections.POISON.clear()  # the code is fixed
    call_command("aether_projections", "resume", name, stdout=io.StringIO())
    Ledger.wait_for(events[-1], timeout=15)
    assert sequences(name, namespace, db_alias) == [e.sequence for e in events]


def checkpoint_state(name: str, namespace: str, db: str = "default") -> str | None:
    return (
        ProjectionCheckpoint.objects.using(db)
        .filter(projection=name, namespace=namespace)
        .values_list("state", flat=True)
        .first()
    )


def test_two_runners_of_one_projection_leave_the_read_model_exact(unique, runners, db_alias):
    namespace = unique("proj-two")
    Ledger = ledger(
        namespace, unique("two"), batch_size=5, on_error={"retries": 50}, database=db_alias
    )
    history = save_ticks(namespace, 60, actor="h")
    runners(Ledger)
    runners(Ledger)
    live = save_ticks(namespace, 60, actor="l")
    Ledger.wait_for(live[-1], timeout=60)
    assert sequences(Ledger._meta.name, namespace, db_alias) == [e.sequence for e in history + live]


def test_pause_and_resume(unique, runners, db_alias):
    namespace = unique("proj-pause")
    Ledger = ledger(namespace, unique("pause"), database=db_alias)
    name = Ledger._meta.name
    first = save_ticks(namespace, 2)
    runners(Ledger)
    Ledger.wait_for(first[-1], timeout=15)
    assert "paused " + name + " in 1 namespace(s)" in _command("pause", name)
    more = save_ticks(namespace, 2, first_version=3)
    with pytest.raises(ProjectionTimeoutError, match="paused"):
        Ledger.wait_for(more[-1], timeout=1.0)
    assert "resumed " + name + " in 1 namespace(s)" in _command("resume", name)
    Ledger.wait_for(more[-1], timeout=15)
    assert sequences(name, namespace, db_alias) == [e.sequence for e in first + more]


def test_rebuild_equals_a_fresh_run(unique, runners, db_alias):
    namespace = unique("proj-rebuild")
    Ledger = ledger(namespace, unique("rebuild"), batch_size=16, database=db_alias)
    name = Ledger._meta.name
    events = save_ticks(namespace, 50)
    assert catch_up(Ledger) == {namespace: "caught-up"}
    rows = Applied.objects.using(db_alias).filter(projection=name).order_by("sequence")
    fresh = list(rows.values_list("namespace", "sequence", "data"))
    # Rows no event explains vanish in a rebuild: it clears the owned models first.
    Applied.objects.using(db_alias).create(
        projection=name, namespace=namespace, sequence=999, actor_id="x"
    )
    out = _command("rebuild", name, "--progress")
    assert f"rebuilt {name}" in out and f"{namespace}: caught-up" in out
    rebuilt = list(rows.values_list("namespace", "sequence", "data"))
    assert rebuilt == fresh and len(rebuilt) == len(events)
    assert checkpoint(name, namespace, db_alias).sequence == events[-1].sequence


def test_rebuild_while_a_runner_runs_and_events_are_saved(unique, runners, db_alias):
    namespace = unique("proj-rebuild-live")
    Ledger = ledger(namespace, unique("rebuild-live"), batch_size=10, database=db_alias)
    name = Ledger._meta.name
    save_ticks(namespace, 40, actor="h")
    runners(Ledger)
    eventually(
        lambda: Applied.objects.using(db_alias).filter(projection=name).exists(),
        what="a first batch",
    )
    writer = threading.Thread(target=save_ticks, args=(namespace, 40), kwargs={"actor": "w"})
    writer.start()
    operations.rebuild(Ledger)
    writer.join()
    head = get_event_store(namespace).get_info().last_sequence
    Ledger.wait_for(head, timeout=30)
    assert sequences(name, namespace, db_alias) == list(range(1, head + 1))


def test_run_command_runs_until_interrupted(unique):
    namespace = unique("proj-cmd")
    Ledger = ledger(namespace, unique("cmd"))
    events = save_ticks(namespace, 3)
    out = io.StringIO()
    command = aether_projections.Command()
    thread = threading.Thread(
        target=call_command,
        args=(command, "run", Ledger._meta.name, "--interval", "0.1"),
        kwargs={"stdout": out},
    )
    thread.start()
    try:
        Ledger.wait_for(events[-1], timeout=15)
    finally:
        # Off the main thread the command installs no signal handler: stop its runner
        # the way its Ctrl-C handler does.
        eventually(lambda: command.runner is not None, what="the runner")
        command.runner.stopping.set()
        thread.join(15)
    assert not thread.is_alive()
    assert out.getvalue().splitlines() == [f"running {Ledger._meta.name} (Ctrl-C stops)", "stopped"]
    with pytest.raises(CommandError, match="no projection called"):
        call_command("aether_projections", "run", "no-such-projection")


def _command(*args: str) -> str:
    out = io.StringIO()
    call_command("aether_projections", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_the_checkpoint_advance_is_a_compare_and_set(unique, db_alias):
    """Two workers that start a batch at the same position: the second's batch, handler
    writes and all, rolls back, and the read model holds each event once."""
    namespace = unique("proj-cas")
    Ledger = ledger(namespace, unique("cas"), database=db_alias)
    events = save_ticks(namespace, 3)
    ensure_checkpoint(Ledger, namespace)
    first, second = NamespaceWorker(Ledger, namespace), NamespaceWorker(Ledger, namespace)
    first._apply(events, 0)
    with pytest.raises(_Moved):
        second._apply(events, 0)
    assert sequences(Ledger._meta.name, namespace, db_alias) == [e.sequence for e in events]
    assert checkpoint(Ledger._meta.name, namespace, db_alias).sequence == events[-1].sequence
    # A paused checkpoint refuses a batch the same way.
    operations.pause(Ledger)
    more = save_ticks(namespace, 1, first_version=4)
    with pytest.raises(_Moved):
        first._apply(more, events[-1].sequence)
    assert len(sequences(Ledger._meta.name, namespace, db_alias)) == 3


def test_racing_batches_one_commits_and_the_other_backs_off_before_its_handlers(unique, db_alias):
    """Two workers at the same position apply the same batch at the same moment, each in
    a thread (a connection, a transaction) of its own, into a read model with a unique
    key. One commits; the other must come out as having lost the compare-and-set (on
    SQLite it waits for the first's write lock, the busy timeout, then finds the
    checkpoint moved). It must not come out as a failing *handler* — on PostgreSQL
    (READ COMMITTED) the loser's insert would wait for the winner's row and then break
    its unique key, and the worker would retry, back off and log it as the event's
    failure."""
    namespace = unique("proj-race")
    racer_name = unique("race")
    rows = OrderSummary.objects.using(db_alias)

    class Racer(Projection):
        class Meta:
            source = namespace
            models = [OrderSummary]
            database = db_alias
            on_error = {"retries": 0}
            name = racer_name

        @on("Tick")
        def tick(self, event, context):
            time.sleep(0.05)  # both transactions are open at once
            OrderSummary.objects.using(context.database).create(
                order_id=f"{context.namespace}:{context.sequence}",
                namespace=context.namespace,
                status="placed",
            )

    events = save_ticks(namespace, 3)
    ensure_checkpoint(Racer, namespace)
    workers = [NamespaceWorker(Racer, namespace) for _ in range(2)]
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def race(worker: NamespaceWorker) -> None:
        start.wait()
        try:
            worker._apply(events, 0)
            outcomes.append("applied")
        except _Moved:
            outcomes.append("moved")
        except _HandlerFailed as failed:
            outcomes.append(f"handler failed: {failed.error!r}")
        except DatabaseError:
            outcomes.append("database error")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=race, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert "applied" in outcomes and len(outcomes) == 2, outcomes
    assert sorted(outcomes) == ["applied", "moved"], outcomes
    assert sorted(rows.filter(namespace=namespace).values_list("order_id", flat=True)) == [
        f"{namespace}:{e.sequence}" for e in events
    ]
    assert checkpoint(racer_name, namespace, db_alias).sequence == events[-1].sequence


@pytest.mark.django_db(databases=["default", "pg"], transaction=True)
def test_a_reset_never_leaves_the_rows_of_a_batch_committing_meanwhile_on_postgresql(unique):
    """On PostgreSQL (READ COMMITTED: each statement sees what was committed when it
    began) a reset that deleted the rows first and reset the checkpoints after would
    miss the rows of a batch committing in between, yet reset that batch's checkpoint:
    the replay would apply those events a second time. Here a batch has applied its
    events and moved its checkpoint but not committed; the reset starts, waits for it,
    and must clear its rows too. (SQLite has one writer: the reset cannot start.)"""
    namespace = unique("proj-reset-race")
    Ledger = ledger(namespace, unique("reset-race"), database="pg")
    name = Ledger._meta.name
    events = save_ticks(namespace, 6)
    ensure_checkpoint(Ledger, namespace)
    NamespaceWorker(Ledger, namespace)._apply(events[:3], 0)
    applied, release = threading.Event(), threading.Event()

    def batch() -> None:
        try:
            with transaction.atomic(using="pg"):
                NamespaceWorker(Ledger, namespace)._apply(events[3:], events[2].sequence)
                applied.set()
                assert release.wait(30)
        finally:
            connections.close_all()

    errors: list[BaseException] = []

    def reset() -> None:
        try:
            operations.reset(Ledger)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    in_flight = threading.Thread(target=batch)
    in_flight.start()
    assert applied.wait(30)
    resetting = threading.Thread(target=reset)
    resetting.start()
    # Until the reset waits for the batch's locks.
    eventually(lambda: _waiting_for_a_lock("pg"), what="the reset to wait for the batch")
    release.set()
    in_flight.join(30)
    resetting.join(30)
    assert errors == []
    assert checkpoint(name, namespace, "pg").sequence == 0
    assert sequences(name, namespace, "pg") == []
    # And the replay applies each event once.
    assert catch_up(Ledger) == {namespace: "caught-up"}
    assert sequences(name, namespace, "pg") == [e.sequence for e in events]


def _waiting_for_a_lock(alias: str) -> bool:
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


def test_a_reset_that_fails_in_the_middle_leaves_everything_as_before(
    unique, db_alias, monkeypatch
):
    namespace = unique("proj-reset-fail")
    Ledger = ledger(
        namespace, unique("reset-fail"), database=db_alias, models=[Applied, OrderSummary]
    )
    name = Ledger._meta.name
    events = save_ticks(namespace, 5)
    app_projections.POISON.add((namespace, events[3].sequence))
    assert catch_up(Ledger) == {namespace: "failed"}
    before = checkpoint(name, namespace, db_alias)
    assert (before.sequence, before.last_error_sequence) == (3, 4)
    from django.db.models import QuerySet

    delete = QuerySet.delete

    def failing_delete(self):
        if self.model is OrderSummary:
            # Applied is cleared and the checkpoint reset by now, in the same transaction.
            raise DatabaseError("disk full")
        return delete(self)

    monkeypatch.setattr(QuerySet, "delete", failing_delete)
    with pytest.raises(DatabaseError, match="disk full"):
        operations.rebuild(Ledger)
    after = checkpoint(name, namespace, db_alias)
    fields = ["sequence", "state", "last_error_sequence", "last_error", "last_error_at"]
    assert [getattr(after, f) for f in fields] == [getattr(before, f) for f in fields]
    assert sequences(name, namespace, db_alias) == [1, 2, 3]


def test_a_reader_sees_a_reset_whole_or_not_at_all(unique, db_alias):
    """One query (one snapshot) reads the read model and the checkpoint while resets
    run: it sees the rows with their checkpoint, or neither, never rows cleared with
    the checkpoint not yet reset."""
    namespace = unique("proj-reset-read")
    Ledger = ledger(namespace, unique("reset-read"), database=db_alias, batch_size=50)
    name = Ledger._meta.name
    save_ticks(namespace, 40)
    stop = threading.Event()
    seen: set[tuple[int, int]] = set()
    query = (
        "SELECT (SELECT count(*) FROM projection_tests_applied WHERE projection = %s), "
        "(SELECT sequence FROM aether_django_projectioncheckpoint "
        " WHERE projection = %s AND namespace = %s)"
    )

    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                with connections[db_alias].cursor() as cursor:
                    cursor.execute(query, [name, name, namespace])
                    seen.add(cursor.fetchone())
        except BaseException as exc:  # shown by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(5):
            assert catch_up(Ledger) == {namespace: "caught-up"}
            operations.reset(Ledger)
    finally:
        stop.set()
        thread.join(30)
    assert errors == []
    # Rows and checkpoint always agree (batches of 50 apply the 40 events at once).
    assert seen <= {(0, 0), (40, 40), (0, None)}, seen
    assert (40, 40) in seen or (0, 0) in seen


def test_a_rebuild_keeps_earlier_skips_and_stops_again_at_a_still_bad_event(unique, db_alias):
    """A rebuild replays every event with today's code: the skip records stay, and an
    event skipped before fails again unless the handler was fixed (then it is applied)."""
    namespace = unique("proj-rebuild-skip")
    Ledger = ledger(namespace, unique("rebuild-skip"), database=db_alias)
    name = Ledger._meta.name
    events = save_ticks(namespace, 5)
    bad = events[2].sequence
    app_projections.POISON.add((namespace, bad))
    assert catch_up(Ledger) == {namespace: "failed"}
    operations.skip(Ledger, namespace, bad, reason="bad import", by="ops")
    assert catch_up(Ledger) == {namespace: "caught-up"}
    assert sequences(name, namespace, db_alias) == [1, 2, 4, 5]
    # Still bad: the rebuild stops at it again, and the first skip is still on record.
    assert operations.rebuild(Ledger) == {namespace: "failed"}
    cp = checkpoint(name, namespace, db_alias)
    assert (cp.sequence, cp.state, cp.last_error_sequence) == (bad - 1, "failed", bad)
    assert sequences(name, namespace, db_alias) == [1, 2]
    skips = ProjectionSkip.objects.using(db_alias).filter(projection=name)
    assert list(skips.values_list("sequence", "reason")) == [(bad, "bad import")]
    # Fixed: the next rebuild applies it like every other event.
    app_projections.POISON.clear()
    assert operations.rebuild(Ledger) == {namespace: "caught-up"}
    assert sequences(name, namespace, db_alias) == [e.sequence for e in events]
    assert skips.count() == 1


@pytest.mark.django_db(databases=["default", "pg"], transaction=True)
def test_a_reset_starts_over_when_a_checkpoint_appears_meanwhile_on_postgresql(unique, monkeypatch):
    """A namespace a pattern finds during a reset gets a checkpoint the reset had not
    locked (a batch of it may commit rows the reset's delete did not see): the reset
    rolls back and starts over, and then resets that checkpoint too."""
    prefix = unique("proj-reset-new")
    Ledger = ledger(f"{prefix}.*", unique("reset-new"), database="pg")
    name = Ledger._meta.name
    save_ticks(f"{prefix}.one", 2)
    assert catch_up(Ledger) == {f"{prefix}.one": "caught-up"}
    from django.db.models import QuerySet

    delete = QuerySet.delete
    deletes: list[int] = []

    def delete_and_meanwhile(self):
        deletes.append(1)
        if len(deletes) == 1:
            # Another runner (another connection) finds a new namespace and advances.
            def elsewhere() -> None:
                try:
                    ProjectionCheckpoint.objects.using("pg").create(
                        projection=name, namespace=f"{prefix}.two", sequence=7
                    )
                finally:
                    connections.close_all()

            thread = threading.Thread(target=elsewhere)
            thread.start()
            thread.join(30)
        return delete(self)

    monkeypatch.setattr(QuerySet, "delete", delete_and_meanwhile)
    operations.reset(Ledger)
    assert len(deletes) == 2  # it started over once
    rows = ProjectionCheckpoint.objects.using("pg").filter(projection=name)
    assert sorted(rows.values_list("namespace", "sequence")) == [
        (f"{prefix}.one", 0),
        (f"{prefix}.two", 0),
    ]
    assert sequences(name, f"{prefix}.one", "pg") == []


@pytest.mark.parametrize(
    ("options", "warned"),
    [({}, True), ({"init_command": "PRAGMA journal_mode=WAL"}, False)],
    ids=["rollback-journal", "wal"],
)
def test_a_projection_on_sqlite_without_wal_is_warned_about(tmp_path, unique, options, warned):
    from django.db.backends.sqlite3.base import DatabaseWrapper

    from aether_django.checks import check_projection_databases

    alias = "projection-file"
    settings = {**connections["default"].settings_dict, "NAME": str(tmp_path / "p.sqlite3")}
    connections[alias] = DatabaseWrapper({**settings, "OPTIONS": options}, alias)
    try:
        ledger(unique("proj-wal"), unique("wal"), database=alias)
        found = check_projection_databases(databases=[alias])
        assert [m.id for m in found] == (["aether_django.W502"] if warned else [])
        if warned:
            assert "journal mode 'delete', not WAL" in found[0].msg
        # Only asked with the databases to check (manage.py check --database, migrate).
        assert check_projection_databases(databases=None) == []
    finally:
        connections[alias].close()
        del connections[alias]


def test_stop_waits_for_the_runners_own_thread(unique):
    """``stop()`` returns only once the runner's thread has ended too, not only its
    workers: that thread ticks (creating checkpoints, a database write) until it sees
    the stop, and a caller that goes on to use the database meanwhile (the next test)
    would race its writes."""
    namespace = unique("proj-stop")
    save_ticks(namespace, 3)
    for _attempt in range(5):
        runner = ProjectionRunner([ledger(namespace, unique("stop"))], interval=0.01)
        thread = runner.start()
        time.sleep(0.05)  # a few ticks
        runner.stop()
        assert not thread.is_alive()
