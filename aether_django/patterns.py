"""Namespace and actor patterns, and the subscription filter built on them.

Pure: imports neither Django nor nats.

A pattern is a list of tokens separated by dots, with NATS semantics plus the
Go library's in-token prefix form:

* ``orders`` matches exactly ``orders``;
* ``*`` matches one token: ``acme.*`` matches ``acme.orders`` but not ``acme``;
* ``>`` matches one or more tokens and may only come last: ``acme.>``;
* ``order*`` matches one token that starts with ``order``: ``orders``,
  ``order-eu``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from .errors import InvalidNameError
from .events import Event
from .names import bounded_string

__all__ = [
    "InvalidPatternError",
    "SubscriptionFilter",
    "is_exact",
    "matches",
    "overlaps",
    "validate_pattern",
]

_LITERAL = re.compile(r"^[A-Za-z0-9_-]+\Z")
_PREFIX = re.compile(r"^[A-Za-z0-9_-]+\*\Z")
#: Longest pattern accepted.
MAX_PATTERN_LENGTH = 255


class InvalidPatternError(InvalidNameError):
    """A namespace or actor pattern breaks a rule; the message names it."""


def validate_pattern(pattern: object, *, what: str = "namespace pattern") -> str:
    """Return ``pattern`` if valid, else raise InvalidPatternError naming the rule."""
    pattern = bounded_string(pattern, what, MAX_PATTERN_LENGTH, InvalidPatternError)
    tokens = pattern.split(".")
    for index, token in enumerate(tokens):
        if token == ">":
            if index != len(tokens) - 1:
                raise InvalidPatternError(f"invalid {what} {pattern!r}: '>' may only come last")
        elif token != "*" and not _LITERAL.match(token) and not _PREFIX.match(token):
            raise InvalidPatternError(
                f"invalid {what} {pattern!r}: token {token!r} must be letters, digits, '-' "
                "and '_', optionally ending in '*', or be '*' or '>'"
            )
    return pattern


def is_exact(pattern: str) -> bool:
    """Whether the pattern names exactly one namespace (no wildcard of any kind)."""
    return "*" not in pattern and ">" not in pattern


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> tuple[tuple[str, ...], bool]:
    tokens = tuple(pattern.split("."))
    return tokens, tokens[-1] == ">"


def matches(pattern: str, name: str) -> bool:
    """Whether ``name`` (a namespace, or a dotted actor id) matches ``pattern``."""
    if pattern == name:
        return True
    tokens, tail = _compiled(pattern)
    parts = name.split(".")
    if tail:
        if len(parts) < len(tokens):
            return False
        tokens = tokens[:-1]
        parts = parts[: len(tokens)]
    elif len(parts) != len(tokens):
        return False
    for token, part in zip(tokens, parts, strict=True):
        if token == "*":
            continue
        if token.endswith("*"):
            if not part.startswith(token[:-1]):
                return False
        elif token != part:
            return False
    return True


def _tokens_overlap(a: str, b: str) -> bool:
    """Whether one namespace token can match both ``a`` and ``b`` (neither is ``>``)."""
    if a == "*" or b == "*" or a == b:
        return True
    a_prefix, b_prefix = a.endswith("*"), b.endswith("*")
    if a_prefix and b_prefix:
        return a.startswith(b[:-1]) or b.startswith(a[:-1])
    if a_prefix:
        return b.startswith(a[:-1])
    if b_prefix:
        return a.startswith(b[:-1])
    return False


def overlaps(a: str, b: str) -> bool:
    """Whether some namespace matches both patterns ``a`` and ``b`` (both valid)."""
    a_tokens, a_tail = _compiled(a)
    b_tokens, b_tail = _compiled(b)
    a_head = a_tokens[:-1] if a_tail else a_tokens
    b_head = b_tokens[:-1] if b_tail else b_tokens
    if not a_tail and not b_tail and len(a_head) != len(b_head):
        return False
    # A trailing '>' stands for one or more tokens: the other pattern needs more
    # tokens than what comes before it, unless it ends in '>' too.
    if a_tail and not b_tail and len(b_head) <= len(a_head):
        return False
    if b_tail and not a_tail and len(a_head) <= len(b_head):
        return False
    return all(_tokens_overlap(x, y) for x, y in zip(a_head, b_head, strict=False))


def _actor_matches(pattern: str, actor_id: str) -> bool:
    if pattern == actor_id:
        return True
    # Actor ids may hold any printable character; only the wildcard forms are special.
    if pattern.endswith("*") and "." not in pattern:
        return actor_id.startswith(pattern[:-1]) and "." not in actor_id[len(pattern) - 1 :]
    if "*" in pattern or ">" in pattern:
        return matches(pattern, actor_id)
    return False


@dataclass(frozen=True, slots=True)
class SubscriptionFilter:
    """Narrows a subscription: only these event types, only actors matching a pattern.

    ``actor_pattern`` is an exact actor id, or a pattern with ``*`` / ``>`` /
    a trailing ``*`` prefix (``order-*``), with the same rules as namespaces.
    Either part left as None lets everything through.
    """

    event_types: frozenset[str] | None = None
    actor_pattern: str | None = None

    def __init__(
        self, event_types: Iterable[str] | None = None, actor_pattern: str | None = None
    ) -> None:
        if isinstance(event_types, str):
            raise InvalidPatternError("event_types must be a list of event types, not a string")
        types = None
        if event_types is not None:
            items = list(event_types)
            # Check before hashing: a list or dict inside would make frozenset() fail.
            if not all(isinstance(t, str) and t for t in items):
                raise InvalidPatternError("event_types must be non-empty strings")
            types = frozenset(items)
        if actor_pattern is not None:
            if not isinstance(actor_pattern, str) or not actor_pattern:
                raise InvalidPatternError("actor_pattern must be a non-empty string")
            if not is_exact(actor_pattern) and "." in actor_pattern:
                validate_pattern(actor_pattern, what="actor pattern")
        object.__setattr__(self, "event_types", types)
        object.__setattr__(self, "actor_pattern", actor_pattern)

    def matches(self, event: Event) -> bool:
        """Whether ``event`` passes the filter."""
        if self.event_types is not None and event.event_type not in self.event_types:
            return False
        return self.actor_pattern is None or _actor_matches(self.actor_pattern, event.actor_id)
