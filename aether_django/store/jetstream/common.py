"""What every part of the JetStream store shares: where a namespace lives, and the
signals the parts pass each other.

A namespace's events are one stream (``<namespace>_events``), one subject per actor
under ``<subject_prefix>.<namespace>``; its snapshots are a key-value bucket
(``<namespace>_snapshots``). ``Place`` holds those names once, so no part spells
them again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ... import names
from ...nats import api
from ..base import StoreConfig

if TYPE_CHECKING:
    from .provisioning import Provisioner
    from .reads import Reader
    from .retry import Retrier

__all__ = ["HDR_VERSION", "META_NAMESPACE", "NoStream", "Part", "Place"]

#: Header duplicating the event's version, so heads and seeks need no JSON decoding.
HDR_VERSION = "Aether-Version"
#: Stream metadata key recording which namespace a stream belongs to.
META_NAMESPACE = names.META_NAMESPACE


class NoStream(Exception):
    """The stream (or bucket) does not exist, or JetStream is not answering."""


@dataclass(frozen=True, slots=True)
class Place:
    """The server-side names of one namespace: its stream, bucket and subjects."""

    namespace: str
    stream: str
    bucket: str
    #: Every actor subject is this, a dot, and the actor's token.
    subject_prefix: str

    @classmethod
    def of(cls, namespace: str, config: StoreConfig) -> Place:
        return cls(
            namespace=namespace,
            stream=names.stream_name(namespace),
            bucket=names.snapshot_bucket(namespace),
            subject_prefix=f"{config.subject_prefix}.{namespace}",
        )

    @property
    def all_subjects(self) -> str:
        """The wildcard that matches every actor subject of the namespace."""
        return f"{self.subject_prefix}.*"

    def subject_for(self, actor_id: str) -> str:
        """The subject that holds ``actor_id``'s events."""
        return f"{self.subject_prefix}.{names.actor_token(actor_id)}"

    def snapshot_subject(self, actor_id: str) -> str:
        """The key-value subject that holds ``actor_id``'s snapshot."""
        return api.kv_key_subject(self.bucket, names.actor_token(actor_id))


class Part:
    """A part of the store built on the others: it knows the namespace's place, retries
    through the store's ``Retrier``, and asks the ``Provisioner`` and ``Reader``."""

    def __init__(
        self, place: Place, retry: Retrier, provisioner: Provisioner, reader: Reader
    ) -> None:
        self.place = place
        self.retry = retry
        self.provisioner = provisioner
        self.reader = reader
        self.config: StoreConfig = retry.config
