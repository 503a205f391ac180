"""``manage.py aether_replay NAMESPACE``: replay (and check) every actor of a namespace."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from nats.errors import Error as NatsError

from aether_django import inspection, privacy
from aether_django.aggregates import get_aggregate_class
from aether_django.errors import AetherError, AggregateReplayError
from aether_django.management.progress import ProgressBar, add_progress_arguments
from aether_django.names import validate_namespace
from aether_django.store import get_event_store


class Command(BaseCommand):
    help = (
        "Read every actor of a namespace from its events, report messages that do not "
        "decode, rebuild each actor with its aggregate class when one is registered, and "
        "with --verify compare each snapshot with the state replayed without it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("namespace")
        parser.add_argument(
            "--verify", action="store_true", help="check snapshots against a full replay"
        )
        add_progress_arguments(parser)

    def handle(self, *args: Any, namespace: str, **options: Any) -> None:
        try:
            validate_namespace(namespace)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        store = get_event_store(namespace)
        model = get_aggregate_class(namespace)
        try:
            actor_ids = store.get_actor_ids()
        except (AetherError, OSError, NatsError) as exc:  # OSError covers timeouts
            raise CommandError(str(exc)) from exc
        events = 0
        replay_errors: list[str] = []
        rebuild_errors: list[str] = []
        mismatches: list[str] = []
        progress = ProgressBar(self, actor_ids, len(actor_ids), "actor", **options)
        for actor_id in progress:
            result = store.get_events_with_errors(actor_id)
            events += len(result.events)
            replay_errors += [
                f"{actor_id}: sequence {e.sequence}: {e.reason}" for e in result.errors
            ]
            if model is not None and not result.errors:
                try:
                    inspection.aggregate_state(namespace, actor_id)
                    if options["verify"]:
                        snapshot = store.get_latest_snapshot(actor_id)
                        history = result.events
                        if snapshot is not None and model._meta.personal_data:
                            # Compared opened, as a load sees both; a snapshot that
                            # does not open (a subject forgotten) is not used anyway.
                            snapshot = privacy.open_snapshot(model, snapshot)
                            history = privacy.open_events(model, history)
                        if snapshot is not None:
                            replayed = model(actor_id)
                            for event in history:
                                if event.version <= snapshot.version:
                                    replayed._apply(model.upcast(event))
                            stored = snapshot.state.get("state")
                            if stored != replayed.get_snapshot_state():
                                mismatches.append(f"{actor_id}: snapshot {snapshot.version}")
                except AggregateReplayError as exc:
                    # What the project's code (or a missing handler) raised, by its name.
                    cause = exc.cause
                    rebuild_errors.append(f"{actor_id}: {type(cause).__name__}: {cause}")
                except Exception as exc:  # report every actor that cannot be rebuilt
                    rebuild_errors.append(f"{actor_id}: {type(exc).__name__}: {exc}")
        progress.close()
        self.stdout.write(
            f"{namespace}: {len(actor_ids)} actors, {events} events, "
            f"{len(replay_errors)} replay errors"
            + (f", {len(rebuild_errors)} actors not rebuilt" if model else ", no aggregate class")
            + (f", {len(mismatches)} snapshot mismatches" if options["verify"] else "")
        )
        for line in replay_errors + rebuild_errors + mismatches:
            self.stdout.write(f"  {line}")
        if replay_errors or rebuild_errors or mismatches:
            raise CommandError("problems found")
