"""Request and response bodies of the API (JSON, snake_case)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from ..correlation import CAUSATION_KEY, CORRELATION_KEY
from ..events import Event
from ..names import MAX_ACTOR_ID_LENGTH
from .openapi import OpenApiSerializerExtension, PolymorphicProxySerializer, extend_schema_field


@extend_schema_field({"type": "object", "additionalProperties": True})
class JSONObjectField(serializers.JSONField):
    """A JSON object (mapping), as event data and snapshot state must be."""

    default_error_messages = {"not_object": "Must be a JSON object."}

    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        if not isinstance(value, dict):
            self.fail("not_object")
        return value


class EventSerializer(serializers.Serializer[Any]):
    """A stored event, as read."""

    id = serializers.CharField()
    event_type = serializers.CharField()
    actor_id = serializers.CharField()
    command_id = serializers.CharField(allow_null=True)
    version = serializers.IntegerField()
    data = serializers.JSONField()  # type: ignore[assignment]
    metadata = serializers.DictField(child=serializers.CharField())
    #: ``metadata["correlationId"]`` and ``metadata["causationId"]``, read out (None for
    #: an event stored without them).
    correlation_id = serializers.CharField(allow_null=True)
    causation_id = serializers.CharField(allow_null=True)
    timestamp = serializers.DateTimeField()
    sequence = serializers.IntegerField(allow_null=True)


def event_body(event: Event) -> dict[str, Any]:
    """The API's JSON shape of an event (cheaper than running the serializer per event)."""
    return {
        "id": event.id,
        "event_type": event.event_type,
        "actor_id": event.actor_id,
        "command_id": event.command_id,
        "version": event.version,
        "data": dict(event.data),
        "metadata": dict(event.metadata),
        "correlation_id": event.metadata.get(CORRELATION_KEY),
        "causation_id": event.metadata.get(CAUSATION_KEY),
        "timestamp": event.timestamp.isoformat().replace("+00:00", "Z"),
        "sequence": event.sequence,
    }


class NewEventSerializer(serializers.Serializer[Any]):
    """One event of a batch: no version, it follows from ``expected_version``."""

    event_type = serializers.CharField(max_length=255)
    data = JSONObjectField(required=False, default=dict)  # type: ignore[assignment]
    metadata = serializers.DictField(
        child=serializers.CharField(allow_blank=True), required=False, default=dict
    )
    id = serializers.CharField(max_length=255, required=False)
    command_id = serializers.CharField(max_length=255, required=False, allow_null=True)


class AppendOneSerializer(NewEventSerializer):
    """The seed's SaveEvent: one event with an explicit version."""

    version = serializers.IntegerField(min_value=1, max_value=2**63 - 1)


class AppendBatchSerializer(serializers.Serializer[Any]):
    """Several events stored atomically as versions expected_version+1, +2, ..."""

    expected_version = serializers.IntegerField(min_value=0, max_value=2**63 - 1000)
    events = NewEventSerializer(many=True, allow_empty=False, max_length=500)  # type: ignore[call-arg]


class AppendBatchExtension(OpenApiSerializerExtension):  # type: ignore[no-untyped-call]
    """Publishes the bounds of ``events`` (drf-spectacular leaves a nested list's out)."""

    target_class = AppendBatchSerializer

    def map_serializer(self, auto_schema: Any, direction: Any) -> Any:
        schema = auto_schema._map_basic_serializer(self.target, direction)
        events = self.target.fields["events"]
        schema["properties"]["events"].update(minItems=1, maxItems=events.max_length)
        return schema


class AppendResultSerializer(serializers.Serializer[Any]):
    events = EventSerializer(many=True)


class NamespaceSerializer(serializers.Serializer[Any]):
    name = serializers.CharField()
    stream = serializers.CharField()
    events = serializers.IntegerField()
    actors = serializers.IntegerField()
    bytes = serializers.IntegerField()
    first_sequence = serializers.IntegerField()
    last_sequence = serializers.IntegerField()


class ActorSerializer(serializers.Serializer[Any]):
    actor_id = serializers.CharField(max_length=MAX_ACTOR_ID_LENGTH)
    version = serializers.IntegerField()
    shard = serializers.IntegerField()


class VersionSerializer(serializers.Serializer[Any]):
    actor_id = serializers.CharField()
    version = serializers.IntegerField()


class SnapshotSerializer(serializers.Serializer[Any]):
    actor_id = serializers.CharField(read_only=True)
    version = serializers.IntegerField(min_value=1, max_value=2**63 - 1)
    state = JSONObjectField()
    timestamp = serializers.DateTimeField(read_only=True)


class StateSerializer(serializers.Serializer[Any]):
    actor_id = serializers.CharField()
    version = serializers.IntegerField()
    aggregate = serializers.CharField()
    state = serializers.JSONField()


class AggregateStateSerializer(serializers.Serializer[Any]):
    """An actor's version and state, as its aggregate class builds it."""

    actor_id = serializers.CharField()
    version = serializers.IntegerField()
    state = serializers.JSONField()


class CommandEventSerializer(serializers.Serializer[Any]):
    """One event a command stored."""

    sequence = serializers.IntegerField()
    version = serializers.IntegerField()
    event_type = serializers.CharField()


class CommandResultSerializer(AggregateStateSerializer):
    """The actor after a command, and the events the command stored (in version order;
    none when it recorded nothing)."""

    events = CommandEventSerializer(many=True)


class NodeSerializer(serializers.Serializer[Any]):
    node_id = serializers.CharField()
    status = serializers.CharField()
    last_heartbeat = serializers.FloatField()
    shard_count = serializers.IntegerField()


class ClusterSerializer(serializers.Serializer[Any]):
    leader = serializers.CharField(allow_null=True)
    term = serializers.IntegerField(allow_null=True)
    num_shards = serializers.IntegerField()
    nodes = NodeSerializer(many=True)


class ShardsSerializer(serializers.Serializer[Any]):
    num_shards = serializers.IntegerField()
    term = serializers.IntegerField(allow_null=True)
    moved = serializers.IntegerField()
    shards = serializers.DictField(child=serializers.CharField())
    counts = serializers.DictField(child=serializers.IntegerField())


def page_of(serializer: type[serializers.Serializer[Any]]) -> type[serializers.Serializer[Any]]:
    """A cursor page of ``serializer`` items: ``{"results": [...], "next": url or null}``."""
    return type(
        f"{serializer.__name__.removesuffix('Serializer')}PageSerializer",
        (serializers.Serializer,),
        {
            "results": serializer(many=True),
            "next": serializers.CharField(allow_null=True),
        },
    )


# --- error bodies (for the OpenAPI document; the views answer them through exceptions) ---


class SubjectIdField(serializers.CharField):
    """A data subject id: a JSON string as given (no number coerced to one, no
    whitespace trimmed: forgetting " x" must not forget "x")."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return str(super().to_internal_value(data))


class ForgetSerializer(serializers.Serializer[Any]):
    """What POST privacy/forget/ takes."""

    subject_id = SubjectIdField(max_length=1024, trim_whitespace=False)


class ForgetResultSerializer(serializers.Serializer[Any]):
    """What POST privacy/forget/ answers: the audit event recorded."""

    audit_event_id = serializers.CharField()
    namespace = serializers.CharField(help_text="where the audit event is: aether.privacy")
    subject_sha256 = serializers.CharField()
    kid = serializers.CharField(allow_null=True, help_text="the key id erased; null: it had none")
    rows_deleted = serializers.DictField(
        child=serializers.IntegerField(), help_text="read-model rows deleted per model label"
    )


class ErrorSerializer(serializers.Serializer[Any]):
    """An error: a machine-readable ``code`` (``not_found``, ``permission_denied``,
    ``payload_too_large``, ``cannot_apply``, ``store_unavailable``, ...) and a message."""

    code = serializers.CharField()
    detail = serializers.CharField()


class ValidationErrorSerializer(serializers.Serializer[Any]):
    """400: ``code`` is ``invalid`` or ``parse_error``. Beside it, DRF's field errors keyed
    by field name (a list of messages, or for a batch's events an object keyed by the
    event's index), ``detail`` for errors of no one field, or ``errors`` for a list."""

    code = serializers.ChoiceField(choices=["invalid", "parse_error"])
    detail = serializers.JSONField(required=False)


class ValidationErrorExtension(OpenApiSerializerExtension):  # type: ignore[no-untyped-call]
    """Says in the schema that a 400 body carries field errors beside its declared keys."""

    target_class = ValidationErrorSerializer

    def map_serializer(self, auto_schema: Any, direction: Any) -> Any:
        schema = auto_schema._map_basic_serializer(self.target, direction)
        schema["additionalProperties"] = True
        return schema


class VersionConflictSerializer(serializers.Serializer[Any]):
    """409 ``version_conflict``: the actor already has ``attempted_version`` (for a batch,
    ``expected_version + 1``) or a later one; ``current_version`` is its version now."""

    code = serializers.ChoiceField(choices=["version_conflict"])
    detail = serializers.CharField()
    actor_id = serializers.CharField()
    attempted_version = serializers.IntegerField()
    current_version = serializers.IntegerField()


class OtherConflictSerializer(serializers.Serializer[Any]):
    """409 of an append other than a version conflict: an event id that belongs to
    another stored event, or a namespace whose stream belongs to another namespace."""

    code = serializers.ChoiceField(choices=["duplicate_event_id", "namespace_collision"])
    detail = serializers.CharField()


class NamespaceCollisionSerializer(serializers.Serializer[Any]):
    """409 ``namespace_collision``: the namespace's stream belongs to another namespace
    (one stored before names that share a stream were refused); the other is not named."""

    code = serializers.ChoiceField(choices=["namespace_collision"])
    detail = serializers.CharField()


#: The append body: one event with a version, or a batch after ``expected_version``.
APPEND_REQUEST = PolymorphicProxySerializer(
    component_name="AppendRequest",
    serializers=[AppendOneSerializer, AppendBatchSerializer],
    resource_type_field_name=None,
)
#: A 409 answer to an append.
APPEND_CONFLICT = PolymorphicProxySerializer(
    component_name="AppendConflict",
    serializers=[VersionConflictSerializer, OtherConflictSerializer],
    resource_type_field_name=None,
)
