"""Namespace and actor-id rules, and the JetStream names derived from them.

Pure: imports neither Django nor nats.
"""

from __future__ import annotations

import base64
import re
import socket
import uuid
from collections.abc import Mapping
from typing import Any

from .errors import InvalidActorIdError, InvalidNameError, InvalidNamespaceError

#: Longest namespace accepted; keeps stream and bucket names well under server limits.
MAX_NAMESPACE_LENGTH = 100
#: Longest actor id accepted, in characters.
MAX_ACTOR_ID_LENGTH = 255

_TOKEN = r"[A-Za-z0-9_-]+"
_NAMESPACE_RE = re.compile(rf"^{_TOKEN}(\.{_TOKEN})*\Z")
_SAFE_ACTOR_RE = re.compile(r"^[A-Za-z0-9_-]+\Z")
# Marks an encoded actor token. '=' is legal in subjects and KV keys but never
# appears in a safe id, so encoded and plain tokens cannot collide.
_ENCODED_MARK = "="


def bounded_string(value: object, what: str, limit: int, error: type[InvalidNameError]) -> str:
    """``value`` if it is a non-empty string of at most ``limit`` characters, else ``error``.

    The first rules of every name: namespaces and actor ids here, patterns in
    :mod:`aether_django.patterns`.
    """
    if not isinstance(value, str):
        raise error(f"{what} must be a string, not {type(value).__name__}")
    if not value:
        raise error(f"{what} must not be empty")
    if len(value) > limit:
        raise error(f"{what} is {len(value)} characters; at most {limit} allowed")
    return value


def validate_namespace(namespace: object) -> str:
    """Return ``namespace`` if valid, else raise InvalidNamespaceError naming the rule."""
    namespace = bounded_string(namespace, "namespace", MAX_NAMESPACE_LENGTH, InvalidNamespaceError)
    if not _NAMESPACE_RE.match(namespace):
        raise InvalidNamespaceError(
            f"invalid namespace {namespace!r}: use tokens of letters, digits, '-' and '_' "
            "separated by single dots"
        )
    if "__" in namespace or "_." in namespace or "._" in namespace:
        # Stream names write "." as "__" (namespace_slug), so "a.b" and "a__b", or "a_.b"
        # and "a._b", would share a stream. Refusing these spellings makes the mapping
        # one-to-one, so no namespace can be found to exist through another's stream.
        raise InvalidNamespaceError(
            f"invalid namespace {namespace!r}: no two underscores in a row and no "
            "underscore beside a dot (stream names write '.' as '__')"
        )
    return namespace


def validate_actor_id(actor_id: object) -> str:
    """Return ``actor_id`` if valid, else raise InvalidActorIdError naming the rule."""
    actor_id = bounded_string(actor_id, "actor id", MAX_ACTOR_ID_LENGTH, InvalidActorIdError)
    if not actor_id.isprintable():
        raise InvalidActorIdError(f"actor id {actor_id!r} contains non-printable characters")
    return actor_id


def actor_token(actor_id: str) -> str:
    """Map an actor id to a single subject token (and KV key), reversibly.

    Ids made only of letters, digits, '-' and '_' are used as they are, so
    ``order-123`` stays readable in subjects; any other id becomes '=' followed by
    its UTF-8 bytes in unpadded URL-safe base64.
    """
    if _SAFE_ACTOR_RE.match(actor_id):
        return actor_id
    encoded = base64.urlsafe_b64encode(actor_id.encode("utf-8")).decode("ascii").rstrip("=")
    return _ENCODED_MARK + encoded


def actor_id_from_token(token: str) -> str:
    """Invert :func:`actor_token`."""
    if not token.startswith(_ENCODED_MARK):
        return token
    body = token[1:]
    padded = body + "=" * (-len(body) % 4)
    return base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8")


def namespace_slug(namespace: str) -> str:
    """The namespace as used inside stream and bucket names (which forbid dots).

    Dots become double underscores. validate_namespace refuses the spellings that would
    collide (``a__b`` beside ``a.b``, ``a_.b`` beside ``a._b``), so this is one-to-one
    on valid names; the store still records the namespace in the stream's metadata
    and refuses a stream that belongs to another namespace (one made by an earlier
    release, which accepted those spellings).
    """
    return namespace.replace(".", "__")


def stream_name(namespace: str) -> str:
    """JetStream stream holding the events of ``namespace``: ``"{namespace}_events"``."""
    return f"{namespace_slug(namespace)}_events"


def snapshot_bucket(namespace: str) -> str:
    """KV bucket holding the snapshots of ``namespace``."""
    return f"{namespace_slug(namespace)}_snapshots"


def default_node_id() -> str:
    """A cluster node id for this process: the host name plus a short random suffix."""
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"


#: Stream metadata key recording which namespace an events stream belongs to.
META_NAMESPACE = "aether_namespace"


def events_subject_filter(subject_prefix: str, namespace: str | None = None) -> str:
    """The subject filter that lists the events streams under ``subject_prefix``, or
    only the stream of ``namespace``."""
    if namespace is not None:
        return f"{subject_prefix}.{namespace}.*"
    return f"{subject_prefix}.>"


def event_namespace(config: Mapping[str, Any], subject_prefix: str) -> str | None:
    """The namespace an events stream belongs to, from its configuration: its metadata,
    else its subjects; None when it is not an events stream under ``subject_prefix``."""
    namespace = (config.get("metadata") or {}).get(META_NAMESPACE)
    if namespace:
        return str(namespace)
    prefix = subject_prefix + "."
    for subject in config.get("subjects") or ():
        if subject.startswith(prefix) and subject.endswith(".*"):
            return str(subject[len(prefix) : -2])
    return None


def addressable_namespace(namespace: str) -> bool:
    """Whether ``namespace`` is a valid name. A stream an earlier release made for a
    spelling refused now ("a__b") cannot be read or written through any API, so the
    listings leave it out rather than offer it and fail on it."""
    try:
        validate_namespace(namespace)
    except InvalidNamespaceError:
        return False
    return True
