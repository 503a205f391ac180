"""``manage.py aether_projections``: run, inspect, pause, resume, skip and rebuild projections."""

from __future__ import annotations

import getpass
import json
import signal
import threading
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from nats.errors import Error as NatsError

from aether_django.errors import AetherError
from aether_django.management.progress import ProgressBar, add_progress_arguments
from aether_django.projections import (
    Projection,
    all_projections,
    get_projection,
    operations,
    placement,
)
from aether_django.projections.runner import ProjectionRunner

#: What a failing read of NATS raises (OSError covers timeouts).
_UNREACHABLE = (AetherError, OSError, NatsError)


class Command(BaseCommand):
    help = (
        "Run projections in the foreground (run), show their positions, lag and errors "
        "(status), rebuild one from its events (rebuild), pause or resume one, or pass "
        "over the event one failed at (skip, recorded)."
    )

    #: The runner of ``run``, while it runs (what its Ctrl-C handler stops).
    runner: ProjectionRunner | None = None

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        run = actions.add_parser("run", help="run projections until Ctrl-C")
        run.add_argument("names", nargs="*", help="projection names (default: all)")
        run.add_argument(
            "--interval",
            type=float,
            default=1.0,
            help="seconds between looks for new namespaces and resumed projections",
        )
        status = actions.add_parser("status", help="positions, heads, lag, state, last error")
        status.add_argument("names", nargs="*", help="projection names (default: all)")
        status.add_argument("--json", action="store_true", help="print one JSON document")
        rebuild = actions.add_parser("rebuild", help="clear the owned models and replay")
        rebuild.add_argument("name")
        rebuild.add_argument(
            "--force",
            action="store_true",
            help="rebuild a process manager too (its commands are issued again; see "
            "docs/projections.md#process-managers)",
        )
        add_progress_arguments(rebuild)
        for action in ("pause", "resume"):
            actions.add_parser(action, help=f"{action} a projection").add_argument("name")
        skip = actions.add_parser("skip", help="pass over the event a projection failed at")
        skip.add_argument("name")
        skip.add_argument("--namespace", required=True)
        skip.add_argument("--sequence", type=int, required=True)
        skip.add_argument("--reason", required=True)
        skip.add_argument("--by", default=None, help="who skips it (default: the OS user)")

    def _projections(self, names: list[str]) -> list[type[Projection]]:
        try:
            return [get_projection(n) for n in names] if names else all_projections()
        except AetherError as exc:
            raise CommandError(str(exc)) from exc

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        try:
            getattr(self, f"do_{action}")(**options)
        except _UNREACHABLE as exc:
            raise CommandError(str(exc)) from exc

    # --- run ---------------------------------------------------------------------------
    def do_run(self, names: list[str], interval: float, **options: Any) -> None:
        projections = self._projections(names)
        if not projections:
            raise CommandError("no projections are declared (<app>/projections.py)")
        runner = self.runner = ProjectionRunner(projections, interval=interval)

        def stop(signum: int, frame: FrameType | None) -> None:
            # Workers finish or roll back their batch; nothing half-applied is left.
            runner.request_stop()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, stop)
            signal.signal(signal.SIGTERM, stop)
        self.stdout.write(
            "running " + ", ".join(p._meta.name for p in projections) + " (Ctrl-C stops)"
        )
        self.stdout.flush()
        runner.run()
        self.stdout.write("stopped")

    # --- status ------------------------------------------------------------------------
    def do_status(self, names: list[str], json: bool, **options: Any) -> None:
        projections = self._projections(names)
        place = placement.locate()
        # One listing of the namespaces and one read of each stream head for them all.
        by_name: dict[str, list[dict[str, Any]]] = {p._meta.name: [] for p in projections}
        for row in operations.statuses(projections):
            by_name[row.projection].append(row.as_dict())
        report: list[dict[str, Any]] = [
            {
                "name": p._meta.name,
                "source": p._meta.source,
                **place(p),
                "namespaces": by_name[p._meta.name],
            }
            for p in projections
        ]
        if json:
            self.stdout.write(_json.dumps({"projections": report}, indent=2))
            return
        for entry in report:
            self.stdout.write(f"{entry['name']}  (source {entry['source']})")
            self.stdout.write(f"  {entry['placement']}")
            if not entry["namespaces"]:
                self.stdout.write("  no namespace yet")
            for ns in entry["namespaces"]:
                line = (
                    f"  {ns['namespace']}: {ns['state']} at {ns['position']} of "
                    f"{ns['head']}, lag {ns['lag']}"
                )
                if ns["last_error_sequence"] is not None:
                    line += f"; failed at sequence {ns['last_error_sequence']}: {ns['last_error']}"
                self.stdout.write(line)

    # --- rebuild -----------------------------------------------------------------------
    def do_rebuild(self, name: str, force: bool = False, **options: Any) -> None:
        projection = self._projections([name])[0]
        try:
            operations.refuse_replay(projection, force)
        except AetherError as exc:
            raise CommandError(str(exc)) from exc
        bars: list[ProgressBar[Any]] = []

        def total(count: int) -> None:
            bars.append(ProgressBar(self, (), count, "event", **options))

        def progress(count: int) -> None:
            # Called from the namespaces' worker threads; tqdm's update is locked.
            bars[0].bar.update(count)

        outcomes = operations.rebuild(projection, progress=progress, total=total, force=force)
        if bars:
            bars[0].close()
        self.stdout.write(f"rebuilt {projection._meta.name}")
        for namespace, outcome in sorted(outcomes.items()):
            self.stdout.write(f"  {namespace}: {outcome}")
        if any(outcome != "caught-up" for outcome in outcomes.values()):
            raise CommandError("the rebuild stopped before the head (see status)")

    # --- pause, resume, skip ---------------------------------------------------------------
    def do_pause(self, name: str, **options: Any) -> None:
        projection = self._projections([name])[0]
        count = operations.pause(projection)
        self.stdout.write(f"paused {projection._meta.name} in {count} namespace(s)")

    def do_resume(self, name: str, **options: Any) -> None:
        projection = self._projections([name])[0]
        count = operations.resume(projection)
        self.stdout.write(f"resumed {projection._meta.name} in {count} namespace(s)")

    def do_skip(
        self, name: str, namespace: str, sequence: int, reason: str, by: str | None, **options: Any
    ) -> None:
        projection = self._projections([name])[0]
        record = operations.skip(
            projection, namespace, sequence, reason=reason, by=by or getpass.getuser()
        )
        self.stdout.write(
            f"skipped {namespace}:{sequence} for {projection._meta.name} "
            f"(by {record.skipped_by}: {record.reason})"
        )


_json = json
