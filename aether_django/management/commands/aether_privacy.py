"""``manage.py aether_privacy forget SUBJECT [SUBJECT ...]``: forget data subjects
(crypto-shredding, docs/privacy.md)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from nats.errors import Error as NatsError

from aether_django import privacy
from aether_django.errors import AetherError


class Command(BaseCommand):
    help = (
        "Personal data: 'forget SUBJECT ...' deletes each data subject's key (its personal "
        "fields become unreadable everywhere) and records an audit event."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        forget = actions.add_parser("forget", help="forget data subjects")
        forget.add_argument("subjects", nargs="+", help="data subject ids")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        assert action == "forget"
        subjects: list[str] = options["subjects"]
        for subject in subjects:
            if not subject:
                raise CommandError("a data subject id is a non-empty string")
        for subject in subjects:
            try:
                audit = privacy.forget(subject)
            except (AetherError, ImproperlyConfigured, ValueError, OSError, NatsError) as exc:
                # The subjects before this one are forgotten; say which one stopped it.
                raise CommandError(f"could not forget {subject!r}: {exc}") from exc
            kid = audit.data.get("kid")
            what = f"key {kid} erased" if kid else "it had no key"
            self.stdout.write(f"forgot {subject}: {what}; audit event {audit.id}")
