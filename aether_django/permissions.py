"""DRF permission classes: the NamespaceGrant rules as a permission projects can compose.

``HasNamespaceGrant`` is what aether's own namespace endpoints use
(``[IsAuthenticated & HasNamespaceGrant]``); a project's views over a namespace (a
URL with a ``namespace`` keyword) combine it with their own classes::

    class InvoiceTotals(APIView):
        permission_classes = [IsAuthenticated & HasNamespaceGrant & IsAccountant]

The rules are those of :class:`aether_django.access.NamespaceAccess`: safe methods
(GET, HEAD, OPTIONS) take a read grant, the others a write grant. A namespace the user
may not read (and, for a write, may not write) answers **404**, not 403, so that its
existence does not leak; this is raised from the permission itself, which therefore
ends the check when it is the operand that decides (``A | HasNamespaceGrant`` only
asks it when ``A`` refused). A namespace the user may read but not write refuses a
write with 403. An invalid namespace name answers 400.
"""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.permissions import SAFE_METHODS, BasePermission

from .access import access_for
from .errors import InvalidNameError
from .names import validate_namespace

#: The Django permission that forgetting a data subject takes (the API's
#: ``privacy/forget/`` endpoint and the admin page); superusers hold it implicitly.
FORGET_SUBJECT_PERMISSION = "aether_django.forget_subject"

#: The 404 of a namespace that does not exist, and of one the user may not see.
NO_SUCH_NAMESPACE = "no such namespace"
WRITE_REFUSED = "you may not write to this namespace"


def require_namespace_grant(request: Any, namespace: str, *, write: bool = False) -> str:
    """``namespace`` if it is valid and the request's user holds the grant; raise
    DRF's ValidationError (400), NotFound (404) or PermissionDenied (403) otherwise."""
    try:
        validate_namespace(namespace)
    except InvalidNameError as exc:
        raise ValidationError({"namespace": [str(exc)]}) from None
    verdict = access_for(request).check(namespace, write=write)
    if verdict == "hidden":
        raise NotFound(NO_SUCH_NAMESPACE)
    if verdict == "forbidden":
        raise PermissionDenied(WRITE_REFUSED)
    return namespace


class HasNamespaceGrant(BasePermission):
    """The user holds a NamespaceGrant for the view's namespace (superusers: all).

    The namespace is the URL keyword named by the view's ``namespace_url_kwarg``
    (default ``"namespace"``); a view without one (a list of namespaces) is allowed,
    and filters what it lists by the same grants. Anonymous users are refused
    (DRF answers 401 or 403), so the class is safe on its own too.
    """

    message = WRITE_REFUSED

    def has_permission(self, request: Any, view: Any) -> bool:
        user = getattr(request, "user", None)
        if not getattr(user, "is_authenticated", False):
            return False
        kwarg = getattr(view, "namespace_url_kwarg", "namespace")
        namespace = (getattr(view, "kwargs", None) or {}).get(kwarg)
        if namespace is None:
            return True
        require_namespace_grant(request, namespace, write=request.method not in SAFE_METHODS)
        return True


class CanForgetSubjects(BasePermission):
    """The user holds ``aether_django.forget_subject`` (directly, through a group, or
    as an active superuser): forgetting erases data for good, so no namespace grant is
    enough for it."""

    message = "forgetting a data subject takes the permission aether_django.forget_subject"

    def has_permission(self, request: Any, view: Any) -> bool:
        return may_forget_subjects(request.user)


def may_forget_subjects(user: Any) -> bool:
    """Whether ``user`` holds ``aether_django.forget_subject`` (the API and the admin
    page ask the same; the admin asks for staff too)."""
    return bool(user and user.is_authenticated and user.has_perm(FORGET_SUBJECT_PERMISSION))
