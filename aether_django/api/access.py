"""Who may read and write which namespace, from NamespaceGrant rows (superusers: all)."""

from __future__ import annotations

from typing import Any

from ..patterns import matches, overlaps


class NamespaceAccess:
    """The grants of one user, loaded once (per request) and matched against namespaces."""

    def __init__(self, user: Any) -> None:
        self.user = user
        self.superuser = bool(getattr(user, "is_superuser", False))
        self._grants: list[tuple[str, bool, bool, bool]] = []
        if getattr(user, "is_authenticated", False) and not self.superuser:
            from django.db.models import Q

            from ..models import NamespaceGrant

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
    """The request's NamespaceAccess, made on first use."""
    access = getattr(request, "_aether_access", None)
    if access is None:
        access = NamespaceAccess(request.user)
        request._aether_access = access
    return access
