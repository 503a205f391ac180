"""A Celery beat scheduler for running several beats, of which exactly one sends.

``setup_cluster(app)`` makes :class:`LeasedScheduler` the app's beat scheduler, so
``celery -A proj beat`` may run on every host. Each beat competes for the *beat
lease* in the cluster bucket (:mod:`aether_django.cluster.beatlease`); only its
holder sends due entries — the cluster's ticks and the project's own periodic
tasks alike — and the others stand by, polling the lease, and take over when it
expires.

Timing, with ``h`` = ``HEARTBEAT_INTERVAL`` (1 s by default):

* the lease lives ``2h`` after its last renewal (whole seconds: 2 s);
* the active beat renews it at least every ``h``, and before a send whenever
  its last renewal is ``h/2`` or more old, so it sends only within ``h/2`` of a
  renewal the server accepted — well inside the lease — and a beat that was
  paused finds out that it lost the lease before it sends anything;
* a standby polls the lease every ``h/5`` and takes it as soon as it is gone:
  within ``2h + h/5`` (2.2 s) of the active beat dying, inside ``3h``.

A beat merely slow for a moment keeps the lease: it may miss a renewal by up to
``h`` (one second) before the lease expires.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .extras import missing_extra

try:
    from celery.beat import PersistentScheduler, ScheduleEntry
except ModuleNotFoundError as exc:  # installed by the [celery] extra
    raise missing_extra(__name__, "Celery", "celery") from exc

from .cluster import cluster_config
from .cluster.beatlease import BeatLease
from .runtime import get_runtime

logger = logging.getLogger(__name__)

__all__ = ["BeatLeaseMixin", "LeasedScheduler", "beat_timing", "use_leased_scheduler"]

#: Header set on every message the active beat sends: its id and lease revision.
BEAT_HEADER = "aether_beat"
#: Entries of the cluster's own ticks: they run every interval and are sent at once
#: by a beat that takes over, so their send times are not shared.
CLUSTER_TASK_PREFIX = "aether_django."


def beat_timing(heartbeat_interval: float) -> dict[str, float]:
    """The beat lease's timing for a heartbeat interval (see the module docstring)."""
    return {
        "ttl": 2 * heartbeat_interval,
        "renew_every": heartbeat_interval,
        "fresh_for": heartbeat_interval / 2,
        "poll_every": heartbeat_interval / 5,
    }


def _beat_id() -> str:
    # Unique per process: a lease that names this id was written by this process.
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


if TYPE_CHECKING:
    from celery.beat import Scheduler as _SchedulerBase
else:
    _SchedulerBase = object


class BeatLeaseMixin(_SchedulerBase):  # type: ignore[misc]  # celery is untyped
    """Makes a Celery beat scheduler send only while it holds the beat lease.

    Put it first among the bases of any ``celery.beat.Scheduler`` subclass
    (:class:`LeasedScheduler` is it with ``PersistentScheduler``). Any number
    of beats may run with it; one holds the lease and sends every due entry
    once, the others send nothing. Entries of the project's own schedule are
    sent once per period across a change of beat too: the active beat stores
    each one's send time in the cluster bucket before sending it, and a beat
    that takes over starts from those times.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.beat_id = _beat_id()
        timing = beat_timing(cluster_config().heartbeat_interval)
        self.lease_ttl = timing["ttl"]
        self.renew_every = timing["renew_every"]
        self.fresh_for = timing["fresh_for"]
        self.poll_every = timing["poll_every"]
        self._lease: BeatLease | None = None
        #: Monotonic time at which the last renewal accepted by the server was sent.
        self._renewed_at = float("-inf")
        self._checked_at = float("-inf")
        self._runs: dict[str, float] = {}
        self._seen_holder: str | None = None
        self._unreachable = False
        self.active = False
        super().__init__(*args, **kwargs)

    @property
    def lease(self) -> BeatLease:
        if self._lease is None:
            self._lease = BeatLease(
                get_runtime(), self.beat_id, cluster_config(), ttl=self.lease_ttl
            )
        return self._lease

    # --- the lease --------------------------------------------------------------
    def _hold(self, runs: dict[str, float] | None = None) -> bool:
        """Take or renew the lease (storing ``runs`` with it); return whether it is held."""
        started = time.monotonic()
        self._checked_at = started
        lease = self.lease
        was_active = self.active
        try:
            if runs is not None and lease.held is not None:
                holder = get_runtime().run(lease.renew_with_runs(runs))
                if holder is None:
                    holder = get_runtime().run(lease.acquire_or_renew())
            else:
                holder = get_runtime().run(lease.acquire_or_renew())
        except Exception:
            # Unknown whether the lease is still held: send nothing until a
            # renewal succeeds. Standbys take over if it does not in time.
            # Said once per outage, not at every poll.
            logger.log(
                logging.DEBUG if self._unreachable else logging.WARNING,
                "beat %s could not reach the beat lease; sending nothing",
                self.beat_id,
                exc_info=True,
                extra={"beat": self.beat_id},
            )
            self._unreachable = True
            self.active = False
            return False
        self._unreachable = False
        self.active = lease.held is not None
        if self.active:
            self._renewed_at = started
            if not was_active:
                self._on_activated()
        holder_id = holder.beat_id if holder is not None else None
        if not self.active and holder_id != self._seen_holder:
            logger.info(
                "beat %s stands by: %s holds the beat lease",
                self.beat_id,
                holder_id,
                extra={"beat": self.beat_id, "holder": holder_id},
            )
        self._seen_holder = holder_id
        return self.active

    def _on_activated(self) -> None:
        held = self.lease.held
        logger.info(
            "beat %s is active (lease term %s)",
            self.beat_id,
            held.term if held else None,
            extra={"beat": self.beat_id, "term": held.term if held else None},
        )
        # Continue the project's schedule where the previous beat left it.
        try:
            shared = get_runtime().run(self.lease.read_runs())
        except Exception:
            logger.warning("could not read the beat's send times", exc_info=True)
            shared = {}
        changed = False
        for name, at in shared.items():
            entry = self.schedule.get(name)
            if entry is None or entry.task.startswith(CLUSTER_TASK_PREFIX):
                continue
            sent = datetime.fromtimestamp(at, tz=UTC)
            last = entry.last_run_at
            if last is None or _timestamp(last) < at:
                entry.last_run_at = sent
                changed = True
        self._runs = {
            name: at
            for name, at in shared.items()
            if name in self.schedule and not name.startswith(CLUSTER_TASK_PREFIX)
        }
        if changed:
            self._heap = None  # rebuilt from the entries at the next tick

    def _fresh(self) -> bool:
        return self.active and time.monotonic() - self._renewed_at < self.fresh_for

    # --- the scheduler ----------------------------------------------------------
    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Send the next due entry if this beat holds the lease; return the time to sleep."""
        now = time.monotonic()
        if self.active:
            if now - self._renewed_at >= self.renew_every:
                self._hold()
        elif now - self._checked_at >= self.poll_every:
            self._hold()
        if not self.active:
            return max(0.01, self.poll_every - (time.monotonic() - self._checked_at))
        interval: float = super().tick(*args, **kwargs)
        until_renewal = self.renew_every - (time.monotonic() - self._renewed_at)
        return max(0.0, min(interval, until_renewal))

    def apply_entry(self, entry: ScheduleEntry, producer: Any = None) -> None:
        """Send ``entry`` only within ``fresh_for`` of a renewal the server accepted."""
        project_entry = not entry.task.startswith(CLUSTER_TASK_PREFIX)
        if project_entry:
            # Stored (with a renewal) before it is sent: a beat that takes over
            # after this send does not send the entry again in the same period.
            runs = {**self._runs, entry.name: time.time()}
            if self._hold(runs):
                self._runs = runs
        elif not self._fresh():
            self._hold()
        if not self._fresh():
            logger.info(
                "beat %s does not hold the beat lease: %s not sent",
                self.beat_id,
                entry.name,
                extra={"beat": self.beat_id},
            )
            return
        super().apply_entry(entry, producer=producer)

    def apply_async(
        self, entry: ScheduleEntry, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        held = self.lease.held if self._lease is not None else None
        if held is None:
            return super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        # Say which beat sent it, under which lease revision.
        options = entry.options
        headers = {**(options.get("headers") or {}), BEAT_HEADER: f"{self.beat_id} {held.revision}"}
        entry.options = {**options, "headers": headers}
        try:
            return super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        finally:
            entry.options = options

    def close(self) -> None:
        """Give the lease up (a standby takes over at once), then close as usual."""
        if self._lease is not None and self._lease.held is not None:
            try:
                get_runtime().run(self._lease.release())
                logger.info("beat %s released the beat lease", self.beat_id)
            except Exception:
                logger.debug("could not release the beat lease", exc_info=True)
        self.active = False
        super().close()

    @property
    def info(self) -> str:
        return f"{super().info}\n    . beat lease -> {self.beat_id}"


class LeasedScheduler(BeatLeaseMixin, PersistentScheduler):  # type: ignore[misc]
    """Celery's ``PersistentScheduler`` (a local schedule file) under the beat lease."""


#: What ``beat_scheduler`` is when a project did not choose one.
_DEFAULT_SCHEDULERS = ("celery.beat:PersistentScheduler", "celery.beat.PersistentScheduler")
LEASED_SCHEDULER = "aether_django.beat:LeasedScheduler"


def use_leased_scheduler(app: Any) -> None:
    """Make ``app``'s beat use :class:`LeasedScheduler`, unless it chose its own scheduler.

    A scheduler the project chose is kept, with a warning: several beats would
    each send its schedule. Combine it with the lease instead, as
    ``class Scheduler(BeatLeaseMixin, TheirScheduler)``, and name that class in
    ``beat_scheduler``.
    """
    current = app.conf.beat_scheduler
    if current in _DEFAULT_SCHEDULERS or current is PersistentScheduler:
        app.conf.beat_scheduler = LEASED_SCHEDULER
        return
    if isinstance(current, type) and issubclass(current, BeatLeaseMixin):
        return
    if isinstance(current, str) and current.replace(":", ".").startswith("aether_django.beat."):
        return
    logger.warning(
        "beat_scheduler is %r, not aether_django's leased scheduler: run exactly one "
        "beat, or combine the two (class Scheduler(aether_django.beat.BeatLeaseMixin, "
        "YourScheduler)) and set beat_scheduler to that class, so that several beats "
        "send each entry once",
        current,
    )


def _timestamp(value: datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()
