"""Request and response bodies of the API (JSON, snake_case)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from ..events import Event
from ..names import MAX_ACTOR_ID_LENGTH


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
