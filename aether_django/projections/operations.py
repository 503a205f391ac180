"""What operators do to projections: status, pause, resume, skip and rebuild.

Each change is one database transaction on the projection's database, so it cannot
interleave with a batch: a runner's next compare-and-set sees it and backs off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from django.db import transaction

from ..errors import ProjectionError
from ..models import ProjectionCheckpoint, ProjectionSkip
from ..store import list_namespaces
from .base import Projection, all_projections, get_projection
from .runner import catch_up, covered_namespaces, ensure_checkpoint, stream_head

__all__ = [
    "NamespaceStatus",
    "named",
    "pause",
    "rebuild",
    "refuse_replay",
    "reset",
    "resume",
    "skip",
    "statuses",
]


@dataclass(frozen=True, slots=True)
class NamespaceStatus:
    """Where one projection is in one namespace."""

    projection: str
    namespace: str
    position: int
    head: int
    lag: int
    state: str
    last_error_sequence: int | None
    last_error: str
    last_error_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["last_error_at"] = self.last_error_at.isoformat() if self.last_error_at else None
        return data


def named(wanted: object, setting: str) -> list[type[Projection]]:
    """The projections a setting names: a list of names (as :func:`get_projection`
    takes them) or ``"__all__"`` for every one. ProjectionError names ``setting`` and
    every name that is wrong (readyz answers it; check E504 reports it)."""
    if wanted == "__all__":
        return all_projections()
    if isinstance(wanted, str) or not isinstance(wanted, list | tuple):
        raise ProjectionError(
            f'{setting} must be a list of projection names or "__all__", not {wanted!r}'
        )
    found: list[type[Projection]] = []
    problems: list[str] = []
    for name in wanted:
        try:
            if not isinstance(name, str):
                raise ProjectionError(f"{name!r} is not a projection name")
            found.append(get_projection(name))
        except ProjectionError as exc:
            problems.append(str(exc))
    if problems:
        raise ProjectionError(f"{setting}: " + "; ".join(problems))
    return found


def statuses(
    projections: Iterable[type[Projection]],
    *,
    heads: Callable[[str], int] = stream_head,
) -> list[NamespaceStatus]:
    """Each projection's position, the stream head and the lag in each namespace it
    covers or has a checkpoint for (one it never ran in shows "new"), in order. The
    namespaces are listed once and each stream head read once however many
    projections cover it (the status command, a metrics scrape, readyz, the admin)."""
    namespaces: list[str] | None = None
    known: dict[str, int] = {}
    found: list[NamespaceStatus] = []
    for projection in projections:
        meta = projection._meta
        rows = {
            cp.namespace: cp
            for cp in ProjectionCheckpoint.objects.using(meta.database).filter(projection=meta.name)
        }
        if namespaces is None:
            namespaces = list_namespaces()
        covered = {ns for ns in namespaces if meta.covers(ns)}
        for namespace in sorted(set(rows) | covered):
            cp = rows.get(namespace)
            if namespace not in known:
                known[namespace] = heads(namespace)
            head = known[namespace]
            position = cp.sequence if cp else 0
            found.append(
                NamespaceStatus(
                    projection=meta.name,
                    namespace=namespace,
                    position=position,
                    head=head,
                    lag=max(0, head - position),
                    state=cp.state if cp else "new",
                    last_error_sequence=cp.last_error_sequence if cp else None,
                    last_error=cp.last_error if cp else "",
                    last_error_at=cp.last_error_at if cp else None,
                )
            )
    return found


def pause(projection: type[Projection]) -> int:
    """Pause the projection in every namespace it has a checkpoint for (failed ones stay
    failed); runners stop at their next batch. Returns how many were paused."""
    meta = projection._meta
    for namespace in covered_namespaces(projection):
        ensure_checkpoint(projection, namespace)
    return (
        ProjectionCheckpoint.objects.using(meta.database)
        .filter(projection=meta.name, state=ProjectionCheckpoint.RUNNING)
        .update(state=ProjectionCheckpoint.PAUSED)
    )


def resume(projection: type[Projection]) -> int:
    """Set paused and failed checkpoints running again; a failed one tries its failing
    event again (after a fix of the code). Returns how many changed."""
    meta = projection._meta
    return (
        ProjectionCheckpoint.objects.using(meta.database)
        .filter(projection=meta.name)
        .exclude(state=ProjectionCheckpoint.RUNNING)
        .update(state=ProjectionCheckpoint.RUNNING)
    )


def skip(
    projection: type[Projection], namespace: str, sequence: int, *, reason: str, by: str
) -> ProjectionSkip:
    """Pass over the event the projection failed at, recorded with who, when and why.

    Only the event a checkpoint is failed at can be skipped: the checkpoint moves to
    it, the projection runs again from the event after it, and the record stays.
    """
    meta = projection._meta
    if not reason.strip():
        raise ProjectionError("a skip needs a reason")
    with transaction.atomic(using=meta.database):
        cp = (
            ProjectionCheckpoint.objects.using(meta.database)
            .select_for_update()
            .filter(projection=meta.name, namespace=namespace)
            .first()
        )
        if cp is None or cp.state != ProjectionCheckpoint.FAILED:
            raise ProjectionError(
                f"{meta.name} is not failed in {namespace!r}: only the event a projection "
                "stopped at can be skipped"
            )
        if cp.last_error_sequence != sequence:
            raise ProjectionError(
                f"{meta.name} stopped at sequence {cp.last_error_sequence} of {namespace!r}, "
                f"not {sequence}"
            )
        record = ProjectionSkip.objects.using(meta.database).create(
            projection=meta.name,
            namespace=namespace,
            sequence=sequence,
            reason=reason,
            skipped_by=by,
        )
        cp.sequence = sequence
        cp.state = ProjectionCheckpoint.RUNNING
        cp.save(using=meta.database, update_fields=["sequence", "state", "updated_at"])
    return record


#: How often a reset starts over when checkpoints appear while it runs.
RESET_TRIES = 5


class _CheckpointAppeared(Exception):
    """A checkpoint of the projection was made while a reset ran (it rolls back)."""


def refuse_replay(projection: type[Projection], force: bool) -> None:
    """Raise ProjectionError for a process manager unless ``force``: replaying its
    history issues its commands again, and a target actor recognises only its latest
    ``command_window`` command ids, so older commands would run a second time."""
    if projection.issues_commands and not force:
        raise ProjectionError(
            f"{projection._meta.name} is a process manager: replaying its events issues "
            "their commands again, and each target actor skips only the commands among "
            "its latest Meta.command_window ones (older ones would run twice). Pass "
            "force=True (manage.py aether_projections rebuild NAME --force) if that is "
            "what you want"
        )


def reset(projection: type[Projection], *, force: bool = False) -> None:
    """Clear the owned models and set every checkpoint back to 0 and running, in one
    transaction (the first half of a rebuild). The skip records stay.

    A process manager is refused unless ``force`` (:func:`refuse_replay`).

    The checkpoints are reset *first*: that takes their rows' locks (on SQLite the
    database's write lock), so a batch in flight either commits before the models are
    cleared, its rows cleared with the others, or finds its checkpoint reset and rolls
    back. Clearing first would, on PostgreSQL's READ COMMITTED, miss the rows of a
    batch committing in between and still reset its checkpoint: the replay would apply
    those events twice. A checkpoint made meanwhile (a namespace a pattern found) was
    not locked; when one appears the reset rolls back and starts over.
    """
    refuse_replay(projection, force)
    meta = projection._meta
    checkpoints = ProjectionCheckpoint.objects.using(meta.database).filter(projection=meta.name)
    fresh = {
        "sequence": 0,
        "state": ProjectionCheckpoint.RUNNING,
        "last_error_sequence": None,
        "last_error": "",
        "last_error_at": None,
    }
    for _ in range(RESET_TRIES):
        try:
            with transaction.atomic(using=meta.database):
                locked = checkpoints.update(**fresh)
                for model in meta.models:
                    model._default_manager.using(meta.database).all().delete()
                if checkpoints.update(**fresh) != locked:
                    raise _CheckpointAppeared
            return
        except _CheckpointAppeared:
            continue
    raise ProjectionError(
        f"could not reset {meta.name}: its checkpoints kept changing (namespaces created "
        "while it ran); try again"
    )


def rebuild(
    projection: type[Projection],
    *,
    progress: Callable[[int], None] | None = None,
    total: Callable[[int], None] | None = None,
    force: bool = False,
) -> dict[str, str]:
    """Reset the projection (:func:`reset`), then replay every covered namespace up to
    its head as of the start. ``total`` is told how many events there are to apply,
    ``progress`` how many each batch applied. Returns each namespace's outcome. A
    process manager is refused unless ``force`` (:func:`refuse_replay`)."""
    reset(projection, force=force)
    heads = {ns: stream_head(ns) for ns in covered_namespaces(projection)}
    if total is not None:
        total(sum(heads.values()))
    return catch_up(projection, progress=progress, heads=heads)
