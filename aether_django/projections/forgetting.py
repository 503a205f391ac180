"""Forgetting a data subject in the read models (docs/privacy.md#read-models).

``aether_django.privacy.forget()`` deletes the subject's data key; the events' copies
of its personal fields become unreadable. Read models may hold copies in plain text,
so forget() also calls :func:`forget_read_models` (registered with the privacy layer
below when this package is imported): for every projection that declares
``Meta.subject_fields`` or overrides ``on_forget()``, it deletes the subject's rows and
calls the hook, one transaction per projection database.

A runner whose process still had the key cached (the cache bound) could open the
subject's values and commit them after those rows were deleted. So the same
transaction first locks the checkpoint rows of the projections it concerns and
writes a tombstone of the erased key (:class:`~aether_django.models.ForgottenKey`):
a batch that moved its checkpoint before commits before the rows are deleted (and
loses them), and one that comes after finds the tombstone and rolls back
(:mod:`.runner`).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict

from django.db import DatabaseError, connections, transaction

from ..models import ForgottenKey, ProjectionCheckpoint
from ..privacy import ForgetIncompleteError, subject_hash
from .base import ForgetContext, Projection, all_projections

__all__ = ["forget_read_models"]


def _concerned() -> dict[str, list[type[Projection]]]:
    by_database: dict[str, list[type[Projection]]] = defaultdict(list)
    for projection in all_projections():
        # A projection declared wrongly is never run (E501); its declaration cannot be
        # trusted to name the right rows either.
        if projection._meta.problems or not projection.forgets():
            continue
        by_database[projection._meta.database].append(projection)
    return dict(sorted(by_database.items()))


def _lock_checkpoints(database: str, projections: list[type[Projection]]) -> None:
    """Lock the checkpoint rows of ``projections`` until the transaction ends: a batch
    takes its row's lock with its first statement (the checkpoint's compare-and-set)
    and keeps it to its commit, so this waits for the batches under way, and the
    batches that come after wait for this transaction and then see its tombstone.

    SQLite has no row locks (Django leaves FOR UPDATE out): there the database's write
    lock, which the tombstone's insert takes next, orders whole transactions alike.
    """
    if not connections[database].features.has_select_for_update:
        return
    names = sorted(p._meta.name for p in projections)
    list(
        ProjectionCheckpoint.objects.using(database)
        .select_for_update()
        .filter(projection__in=names)
        .order_by("pk")  # one order for every forget(): two of them cannot deadlock
        .values_list("pk", flat=True)
    )


def _tombstone(database: str, subject_id: str, kid: str) -> None:
    # A plain INSERT (ignoring a tombstone already there, from an earlier try): on
    # SQLite a write as the transaction's first statement takes the write lock at once.
    ForgottenKey.objects.using(database).bulk_create(
        [ForgottenKey(subject_sha256=subject_hash(subject_id), kid=kid)], ignore_conflicts=True
    )


def forget_read_models(subject_id: str, kid: str | None = None) -> dict[str, int]:
    """Delete ``subject_id``'s rows of every projection's ``Meta.subject_fields`` and
    call every ``on_forget()``: the rows deleted per model label. ``kid`` is the id of
    the key forget() erased: its tombstone goes into each database, in the same
    transaction, so that no runner commits values it opened with that key afterwards.

    Synchronous (the Django ORM). Each database's work is one transaction: a failure
    rolls that database back and raises ForgetIncompleteError; running it again
    finishes (deleting rows that are gone deletes nothing). The tombstone is written
    on its own when the transaction fails (a hook raised), if the database lets it:
    forget() run again finds no key, and could not name the one to refuse.
    """
    deleted: dict[str, int] = {}
    for database, projections in _concerned().items():
        connection = connections[database]
        if connection.vendor == "sqlite":
            # Without it SQLite leaves a deleted row's bytes in the file's free pages
            # (builds differ in the default); the setting lasts for the connection.
            with connection.cursor() as cursor:
                cursor.execute("PRAGMA secure_delete = ON")
        try:
            with transaction.atomic(using=database):
                _lock_checkpoints(database, projections)
                if kid is not None:
                    _tombstone(database, subject_id, kid)
                for projection in projections:
                    meta = projection._meta
                    mine: dict[str, int] = {}
                    for model, field in meta.subject_fields.items():
                        count, _ = (
                            model._default_manager.using(database)
                            .filter(**{field: subject_id})
                            .delete()
                        )
                        mine[model._meta.label] = count
                    projection().on_forget(
                        subject_id,
                        ForgetContext(projection=meta.name, database=database, deleted=mine),
                    )
                    for label, count in mine.items():
                        deleted[label] = deleted.get(label, 0) + count
        except Exception as exc:
            if kid is not None:
                # Refused too when the database is down: the error says to run it again.
                with contextlib.suppress(DatabaseError):
                    _tombstone(database, subject_id, kid)
            names = ", ".join(p._meta.name for p in projections)
            raise ForgetIncompleteError(
                f"the data key is erased, but forgetting the read models of database "
                f"{database!r} ({names}) failed: {type(exc).__name__}: {exc}; run forget "
                "again to finish"
            ) from exc
    return deleted
