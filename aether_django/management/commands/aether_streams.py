"""``manage.py aether_streams``: create and check the streams and buckets of namespaces."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from nats.errors import Error as NatsError

from aether_django.aggregates import all_aggregates
from aether_django.errors import AetherError
from aether_django.inspection import visible_namespaces
from aether_django.management.progress import ProgressBar, add_progress_arguments
from aether_django.runtime import get_runtime
from aether_django.store import get_event_store


class Command(BaseCommand):
    help = (
        "Create (or with --check, only verify) the JetStream stream and snapshot bucket of "
        "each namespace: those named, else every registered aggregate's namespace "
        "(and with --all, every namespace that has a stream)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("namespaces", nargs="*", help="namespaces (default: see above)")
        parser.add_argument("--check", action="store_true", help="verify only; create nothing")
        parser.add_argument("--all", action="store_true", help="include every existing namespace")
        add_progress_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        namespaces = set(options["namespaces"])
        if not namespaces:
            namespaces = {m._meta.namespace for m in all_aggregates() if m._meta.namespace}
        if options["all"]:
            try:
                namespaces |= set(visible_namespaces(None))
            except (AetherError, OSError, NatsError) as exc:
                raise CommandError(f"cannot list the namespaces: {exc}") from exc
        if not namespaces:
            self.stdout.write("No namespaces to check: name some, or register aggregates.")
            return
        problems = 0
        progress = ProgressBar(self, sorted(namespaces), len(namespaces), "namespace", **options)
        for namespace in progress:
            try:
                store = get_event_store(namespace)
                ensure = getattr(store, "aensure", None)
                if ensure is None:
                    progress.echo(f"{namespace}: {type(store).__name__} needs no streams")
                    continue
                done = get_runtime().run(ensure(create=not options["check"]))
            except (AetherError, ValueError, OSError, NatsError) as exc:
                problems += 1
                progress.echo(f"{namespace}: {exc}", error=True)
                continue
            progress.echo(f"{namespace}: " + ("; ".join(done) if done else "ok"))
        progress.close()
        if problems:
            raise CommandError(f"{problems} namespace(s) have problems")
