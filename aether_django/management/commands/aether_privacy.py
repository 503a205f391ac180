"""``manage.py aether_privacy forget SUBJECT [SUBJECT ...]``: forget data subjects;
``manage.py aether_privacy rotate``: re-wrap every data key with a new master key
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
        "fields become unreadable everywhere) and records an audit event; 'rotate' "
        "re-wraps every data key with PRIVACY_MASTER_KEY, from PRIVACY_OLD_MASTER_KEY."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        forget = actions.add_parser("forget", help="forget data subjects")
        forget.add_argument("subjects", nargs="+", help="data subject ids")
        actions.add_parser(
            "rotate",
            help="re-wrap every data key with PRIVACY_MASTER_KEY, from PRIVACY_OLD_MASTER_KEY",
        )

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        if action == "rotate":
            try:
                count = privacy.rotate_master_key()
            except (AetherError, ImproperlyConfigured, ValueError, OSError, NatsError) as exc:
                raise CommandError(f"could not rotate the master key: {exc}") from exc
            self.stdout.write(f"re-wrapped {count} entries with the master key")
            return
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
