"""Header names of the JetStream protocol that aether writes or reads, and status codes.

Names only: building the headers of a particular write is the caller's business.
"""

from __future__ import annotations

__all__ = [
    "BATCH_COMMIT",
    "BATCH_ID",
    "BATCH_SEQUENCE",
    "EXPECTED_LAST_SUBJECT_SEQUENCE",
    "KV_OPERATION",
    "MSG_ID",
    "NUM_PENDING",
    "ROLLUP",
    "SEQUENCE",
    "STATUS",
    "STATUS_END_OF_BATCH",
    "STATUS_NOT_FOUND",
    "STATUS_NO_RESPONDERS",
    "STATUS_TIMEOUT",
    "SUBJECT",
    "TTL",
    "ttl_value",
]

#: The message's id, the server's deduplication key within the duplicate window.
MSG_ID = "Nats-Msg-Id"
#: A write is refused (error 10071) unless the subject's last sequence is this one.
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
#: Atomic batch publish: the batch's id, each message's place in it, the last one's mark.
BATCH_ID = "Nats-Batch-Id"
BATCH_SEQUENCE = "Nats-Batch-Sequence"
BATCH_COMMIT = "Nats-Batch-Commit"
#: Per-message time to live (``"30s"``); the stream must allow it.
TTL = "Nats-TTL"
#: ``"sub"``: the message replaces every earlier one on its subject.
ROLLUP = "Nats-Rollup"
#: KV markers: ``"DEL"`` or ``"PURGE"``.
KV_OPERATION = "KV-Operation"

# Headers of a direct get's answer.
#: The stream sequence of the message returned.
SEQUENCE = "Nats-Sequence"
#: The subject the message returned was stored on.
SUBJECT = "Nats-Subject"
#: On the status message that ends a batched get: messages left after the batch.
NUM_PENDING = "Nats-Num-Pending"
#: The inline status of a status message (no payload), as nats-py parses it.
STATUS = "Status"

#: Status of the message that ends a batched direct get.
STATUS_END_OF_BATCH = "204"
#: No such message (or no message in the batch's range).
STATUS_NOT_FOUND = "404"
#: The request timed out inside the server (a stream leader moving, for example).
STATUS_TIMEOUT = "408"
#: No one answers: JetStream, or the stream, is not there right now.
STATUS_NO_RESPONDERS = "503"


def ttl_value(seconds: float) -> str:
    """A ``Nats-TTL`` value for ``seconds`` (in milliseconds, at least one)."""
    return f"{max(1, round(seconds * 1000))}ms"
