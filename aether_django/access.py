"""Who may read and write which namespace, from NamespaceGrant rows (superusers: all).

One place for the grant rules of every surface: the REST API (through
:class:`aether_django.permissions.HasNamespaceGrant`), the WebSocket consumer, the
admin's namespace pages and the project's own views. No request handling here: a
surface turns :meth:`NamespaceAccess.check` into its own answer (a 404, a 403, an
error frame).
"""

from __future__ import annotations

from typing import Any, Literal

from .patterns import matches, overlaps

#: What :meth:`NamespaceAccess.check` answers: allowed; hidden (answer as if the
#: namespace did not exist: no read grant, and no write grant for a write); or
#: forbidden (the user may read it but not write to it).
Verdict = Literal["allowed", "hidden", "forbidden"]


class NamespaceAccess:
    """The grants of one user, loaded once (per request) and matched against namespaces."""

    def __init__(self, user: Any) -> None:
        self.user = user
        self.superuser = bool(getattr(user, "is_superuser", False))
        self._grants: list[tuple[str, bool, bool, bool]] = []
        if getattr(user, "is_authenticated", False) and not self.superuser:
            from django.db.models import Q

            from .models import NamespaceGrant

            rows = NamespaceGrant.objects.filter(
                Q(user=user) | Q(group__in=user.groups.all())
            ).values_list("pattern", "can_read", "can_write", "can_create")
            self._grants = [(p, bool(r), bool(w), bool(c)) for p, r, w, c in rows]

    def can_read(self, namespace: str) -> bool:
        """Whether the user may read ``namespace`` (a write-only grant does not let them)."""
        return self.superuser or any(r and matches(p, namespace) for p, r, _, _ in self._grants)

    def can_write(self, namespace: str) -> bool:
        return self.superuser or any(w and matches(p, namespace) for p, _, w, _ in self._grants)

    def can_create(self, namespace: str) -> bool:
        """Whether a write of the user may create ``namespace`` when it does not exist:
        one grant matching it must have both ``can_write`` and ``can_create``."""
        return self.superuser or any(
            w and c and matches(p, namespace) for p, _, w, c in self._grants
        )

    def check(self, namespace: str, *, write: bool = False) -> Verdict:
        """The grant rule of one request on ``namespace``.

        A read takes a read grant. A write takes a write grant; without a read grant
        as well, a refused write is "hidden" so that the answer does not tell whether
        the namespace exists.
        """
        if not self.can_read(namespace):
            return "allowed" if write and self.can_write(namespace) else "hidden"
        if write and not self.can_write(namespace):
            return "forbidden"
        return "allowed"

    def readable(self, namespaces: list[str]) -> list[str]:
        return [ns for ns in namespaces if self.can_read(ns)]

    def read_patterns(self, pattern: str) -> frozenset[str] | None:
        """The user's read-grant patterns that can match a namespace ``pattern`` matches.

        None for a superuser (everything); empty when no namespace the user may read
        can match ``pattern``.
        """
        if self.superuser:
            return None
        return frozenset(p for p, r, _, _ in self._grants if r and overlaps(p, pattern))


def access_for(request: Any) -> NamespaceAccess:
    """The request's NamespaceAccess, made on first use (one grant query per request,
    whatever number of checks the request makes; DRF's Request passes the attribute
    through to Django's)."""
    access = getattr(request, "_aether_access", None)
    if access is None:
        access = NamespaceAccess(request.user)
        request._aether_access = access
    return access
