"""The suite's SQLite test database is set up the way docs/projections.md recommends for
production (tests/conftest.py): a file in WAL mode, whose readers see the last commit
while another connection writes, and whose writers wait for that connection's lock
instead of failing at once with "database table is locked"."""

from __future__ import annotations

import threading
import uuid

import pytest
from django.db import connection, connections, transaction

from aether_django.models import ProjectionCheckpoint

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_test_database_is_a_file_in_wal_mode():
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA database_list")  # (seq, name, file): no file in memory
        assert [row[2] for row in cursor.fetchall() if row[1] == "main"] == [
            connection.settings_dict["NAME"]
        ]
        cursor.execute("PRAGMA journal_mode")
        assert cursor.fetchone()[0] == "wal"


def test_a_transaction_of_another_thread_neither_refuses_a_read_nor_fails_a_write():
    """As a runner's thread holds the checkpoints' table inside its batch."""
    name = f"lock-{uuid.uuid4().hex[:8]}"
    checkpoints = ProjectionCheckpoint.objects.filter(projection=name)
    holding, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def hold() -> None:
        try:
            with transaction.atomic():
                ProjectionCheckpoint.objects.create(projection=name, namespace="held", sequence=1)
                holding.set()
                release.wait(10)
        except BaseException as exc:  # shown by the assertion below
            errors.append(exc)
        finally:
            holding.set()
            connections.close_all()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        # The read sees the last commit, without the holder's uncommitted row.
        assert list(checkpoints.values_list("namespace", flat=True)) == []
        # The write waits for the holder's commit (a moment later), then goes through.
        threading.Timer(0.3, release.set).start()
        ProjectionCheckpoint.objects.create(projection=name, namespace="after", sequence=2)
    finally:
        release.set()
        holder.join(10)
    assert errors == []
    assert sorted(checkpoints.values_list("namespace", "sequence")) == [
        ("after", 2),
        ("held", 1),
    ]
