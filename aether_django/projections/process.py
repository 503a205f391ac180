"""Process managers: projections whose handlers issue commands to aggregates.

::

    from aether_django.projections import ProcessManager, on

    class Fulfilment(ProcessManager):
        class Meta:
            source = "orders"
            name = "shop.fulfilment"

        @on("OrderPaid")
        def paid(self, event, context):
            context.send(Shipment, f"shipment-{event.actor_id}", "start",
                         create=True, order_id=event.actor_id)

A process manager is run by the same runner as a projection (catch-up then live,
placement, status, pause, resume, skip, the admin page, metrics) and keeps its
position in the same ``ProjectionCheckpoint`` rows. What differs is its handlers'
effect: a command on an actor, stored in the event store, which no database
transaction can roll back.

Exactly once, in this order: for each event of a batch the handler runs its
commands (each saved to the event store before ``send``/``update`` returns); the
checkpoint's advance commits after the whole batch, in the batch's database
transaction. A crash (or a failing handler, or a lost compare-and-set) between a
command and that commit leaves the command stored and the checkpoint behind it, so
the event is delivered again and its handler runs again. Every command carries a
command id derived from the triggering event (:meth:`ProcessContext.command_id`),
and the target actor does not run a command id it already holds
(``Model.objects.update(..., command_id=...)``): the second delivery finds the
command done and goes on. Sending the command after the commit instead would lose
it on a crash in between; a checkpoint can only trail its effects, never lead them.

The target actor recognises its latest ``Meta.command_window`` commands (at least
100, and at least its snapshot interval). A redelivery comes at most one batch
after the first delivery, so that window covers it unless the actor received more
commands than that in between. A rebuild, which replays the whole history, is
another matter: commands older than the window would run again, so
:func:`~aether_django.projections.operations.reset` and ``rebuild`` refuse a
process manager unless forced.

The handlers run inside :func:`aether_django.correlation.caused_by` of their event:
the events the commands record carry ``causationId`` = the triggering event's id and
``correlationId`` = its correlation id.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .. import correlation
from ..aggregates import Aggregate, get_aggregate_class
from ..errors import ProjectionError
from ..events import Event
from .base import Projection, ProjectionContext

__all__ = ["ProcessContext", "ProcessManager"]

A = TypeVar("A", bound=Aggregate)

#: How often ``update``/``send`` reload and run a command again after a version
#: conflict (another writer of the target actor) unless told otherwise.
DEFAULT_RETRIES = 5


class ProcessContext:
    """What a process manager's handler gets: the event's place (as a
    :class:`ProjectionContext` has it) and the means to issue commands.

    The n-th command a handler issues for one event gets the command id
    ``"{name}:{event id}"`` (n = 1) or ``"{name}:{event id}:{n}"``: the same on every
    delivery of that event, as long as the handler issues its commands in the same
    order, which it does when it decides from the event (and from the process
    manager's own models, which roll back with the batch).
    """

    __slots__ = (
        "_issued",
        "causation_id",
        "correlation_id",
        "database",
        "event",
        "namespace",
        "node",
        "projection",
        "sequence",
    )

    def __init__(self, context: ProjectionContext, event: Event) -> None:
        #: The namespace the event was saved in.
        self.namespace = context.namespace
        #: The event's position in that namespace's stream.
        self.sequence = context.sequence
        #: The process manager's name (its checkpoints' key, and its command ids' prefix).
        self.projection = context.projection
        #: The database alias of the checkpoint (and of the process manager's models).
        self.database = context.database
        #: The cluster node running it, or None outside a node.
        self.node = context.node
        #: The event's correlation id, which the commands' events carry too (None when
        #: the event has none: they then carry the event's id).
        self.correlation_id = context.correlation_id
        #: The event's own causation id (its commands' events are caused by the event).
        self.causation_id = context.causation_id
        #: The event being handled.
        self.event = event
        self._issued = 0

    def command_id(self) -> str:
        """The next command id of this event (each call takes one)."""
        if not self.event.id:
            raise ProjectionError(
                f"{self.projection}: the event at {self.namespace}:{self.sequence} has no id, "
                "so its commands cannot get ids that survive a redelivery"
            )
        self._issued += 1
        base = f"{self.projection}:{self.event.id}"
        return base if self._issued == 1 else f"{base}:{self._issued}"

    def update(
        self,
        model: type[A],
        actor_id: str,
        command: Callable[[A], Any],
        /,
        *,
        create: bool = False,
        retries: int = DEFAULT_RETRIES,
    ) -> A:
        """Run ``command`` on the actor and save, with this event's next command id:
        ``model.objects.update(actor_id, command, command_id=..., create=...)``.

        Returns the aggregate; its ``command_replayed`` is True when the actor already
        held the command id (a redelivery) and the command was not run again. A
        DomainError of the command reaches the handler (nothing was stored): catch it
        to decide what the refusal means, or let it fail the event like any error.
        """
        done: A = model.objects.update(
            actor_id,
            command,
            create=create,
            retries=retries,
            command_id=self.command_id(),
        )
        return done

    def send(
        self,
        model: type[A] | str,
        actor_id: str,
        command: str,
        /,
        *,
        create: bool = False,
        retries: int = DEFAULT_RETRIES,
        **arguments: Any,
    ) -> A:
        """Run the declared command ``command(**arguments)`` of ``model`` (an aggregate
        class or its namespace) on the actor, as :meth:`update` does.

        Only methods marked ``@command`` (or listed in ``Meta.commands``) are run by
        name, the rule of routed commands; any other name raises ProjectionError.
        """
        aggregate = _aggregate(model)
        if command not in aggregate._meta.commands:
            raise ProjectionError(
                f"{command!r} is not a command of {aggregate.__name__}: mark the method "
                "with @command or list it in Meta.commands (or use context.update)"
            )

        def run(actor: Aggregate) -> None:
            getattr(actor, command)(**arguments)

        done: A = self.update(aggregate, actor_id, run, create=create, retries=retries)
        return done


def _aggregate(model: type[Aggregate] | str) -> type[Any]:
    if isinstance(model, str):
        found = get_aggregate_class(model)
        if found is None:
            raise ProjectionError(f"no aggregate class is registered for namespace {model!r}")
        return found
    if not (isinstance(model, type) and issubclass(model, Aggregate)):
        raise ProjectionError(f"send() takes an aggregate class or a namespace, not {model!r}")
    return model


class ProcessManager(Projection):
    """Base class of process managers; see the module docstring.

    Declared like a projection (``Meta.source``, optional ``Meta.models`` for the
    process's own state, ``name``, ``batch_size``, ``database``, ``on_error``), with
    ``@on`` handlers that take ``(self, event, context)`` where ``context`` is a
    :class:`ProcessContext`. A handler's error, a DomainError of a command it did not
    catch included, stops the process manager at that event after the retries, as a
    failing projection handler does.
    """

    #: Replaying its history would issue its commands again (see the module docstring).
    issues_commands = True

    class Meta:
        abstract = True

    def handle(self, event: Event, context: ProjectionContext) -> None:
        """Call the handler of ``event``'s type inside ``caused_by(event)``."""
        name = self._handlers.get(event.event_type)
        if name is None:
            return
        with correlation.caused_by(event):
            getattr(self, name)(event, ProcessContext(context, event))
