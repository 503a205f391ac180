"""The test project as an ASGI application, for tests that run it in a server process.

``daphne tests.api.asgi:application`` (or uvicorn) serves the application of
:mod:`tests.asgi`: tests.urls over HTTP (the API at /api/aether/) and the aether
WebSocket consumer at ws/aether/, with tests.settings, whose database is an
in-memory SQLite that no other process could share. Set ``AETHER_TEST_DATABASE`` to
the path of a SQLite file and this module uses that file instead; prepare it first
with::

    AETHER_TEST_DATABASE=/tmp/db.sqlite3 python -m tests.api.asgi USER PASSWORD

which applies the migrations and creates the superuser USER.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

from django.conf import settings

if os.environ.get("AETHER_TEST_DATABASE"):
    # Before setup, so that no connection has read the in-memory default yet.
    settings.DATABASES["default"]["NAME"] = os.environ["AETHER_TEST_DATABASE"]

from tests.asgi import application

__all__ = ["application", "prepare_database"]


def prepare_database(username: str, password: str) -> None:
    """Apply the migrations to the database file and create the superuser ``username``."""
    if not os.environ.get("AETHER_TEST_DATABASE"):
        raise SystemExit("set AETHER_TEST_DATABASE to the path of a SQLite file")
    from django.contrib.auth.models import User
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    User.objects.create_superuser(username, password=password)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m tests.api.asgi USER PASSWORD")
    prepare_database(sys.argv[1], sys.argv[2])
