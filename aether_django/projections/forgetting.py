"""Forgetting a data subject in the read models (docs/privacy.md#read-models).

``aether_django.privacy.forget()`` deletes the subject's data key; the events' copies
of its personal fields become unreadable. Read models may hold copies in plain text,
so forget() also calls :func:`forget_read_models` (registered with the privacy layer
below when this package is imported): for every projection that declares
``Meta.subject_fields`` or overrides ``on_forget()``, it deletes the subject's rows and
calls the hook, one transaction per projection database.
"""

from __future__ import annotations

from collections import defaultdict

from django.db import connections, transaction

from ..privacy import ForgetIncompleteError
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


def forget_read_models(subject_id: str) -> dict[str, int]:
    """Delete ``subject_id``'s rows of every projection's ``Meta.subject_fields`` and
    call every ``on_forget()``: the rows deleted per model label.

    Synchronous (the Django ORM). Each database's work is one transaction: a failure
    rolls that database back and raises ForgetIncompleteError; running it again
    finishes (deleting rows that are gone deletes nothing).
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
            names = ", ".join(p._meta.name for p in projections)
            raise ForgetIncompleteError(
                f"the data key is erased, but forgetting the read models of database "
                f"{database!r} ({names}) failed: {type(exc).__name__}: {exc}; run forget "
                "again to finish"
            ) from exc
    return deleted
