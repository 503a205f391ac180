"""HasNamespaceGrant: the grant rules as a DRF permission that projects compose."""

from __future__ import annotations

import importlib
import warnings
from typing import Any

import pytest
from rest_framework.permissions import BasePermission, IsAdminUser, IsAuthenticated
from rest_framework.response import Response
from rest_framework.test import APIRequestFactory, force_authenticate
from rest_framework.views import APIView

from aether_django.permissions import HasNamespaceGrant


class ReadOnlyHours(BasePermission):
    """A project's own rule: refuses any request that carries the header X-Closed."""

    message = "closed"

    def has_permission(self, request, view):
        return "HTTP_X_CLOSED" not in request.META


class Totals(APIView):
    permission_classes = [IsAuthenticated & HasNamespaceGrant & ReadOnlyHours]

    def get(self, request, namespace):
        return Response({"namespace": namespace})

    def post(self, request, namespace):
        return Response({"written": namespace})


class StaffOrGrant(Totals):
    permission_classes = [IsAdminUser | HasNamespaceGrant]


def call(view, user, ns, method="get", **headers):
    factory = APIRequestFactory()
    request = getattr(factory, method)(f"/totals/{ns}/", **headers)
    if user is not None:
        force_authenticate(request, user=user)
    response = view.as_view()(request, namespace=ns)
    return response.status_code, response.data


@pytest.fixture
def users(callers):
    return {kind: client.handler._force_user for kind, client in callers.items()}


def test_combined_with_is_authenticated_and_a_project_permission(users, ns):
    assert call(Totals, users["read_grant"], ns) == (200, {"namespace": ns})
    assert call(Totals, users["superuser"], ns)[0] == 200
    # The project's own permission still refuses, grant or not.
    assert call(Totals, users["read_grant"], ns, HTTP_X_CLOSED="1")[0] == 403
    # No grant: the 404 of a namespace that does not exist.
    status, body = call(Totals, users["no_grant"], ns)
    assert status == 404 and str(body["detail"]) == "no such namespace"
    # A read grant does not let a write through: 403, the namespace is visible.
    status, body = call(Totals, users["read_grant"], ns, method="post")
    assert status == 403 and str(body["detail"]) == "you may not write to this namespace"
    assert call(Totals, users["write_grant"], ns, method="post") == (200, {"written": ns})
    # Anonymous callers are refused before any grant is looked at.
    assert call(Totals, None, ns)[0] in (401, 403)
    # An invalid namespace name is the 400 of a bad input.
    status, body = call(Totals, users["superuser"], "a..b")
    assert status == 400 and "namespace" in body


def test_combined_with_or(users, ns):
    # Staff pass by IsAdminUser whatever their grants; others by their grant.
    assert call(StaffOrGrant, users["staff"], ns)[0] == 200
    assert call(StaffOrGrant, users["read_grant"], ns)[0] == 200
    assert call(StaffOrGrant, users["no_grant"], ns)[0] == 404


def test_alone_it_refuses_anonymous_callers(ns):
    class Alone(Totals):
        permission_classes = [HasNamespaceGrant]

    assert call(Alone, None, ns)[0] in (401, 403)


def test_the_api_views_use_it():
    from aether_django.api.views import NamespaceView

    (composed,) = NamespaceView.permission_classes
    permission: Any = composed()
    assert {type(permission.op1).__name__, type(permission.op2).__name__} == {
        "IsAuthenticated",
        "HasNamespaceGrant",
    }


def test_the_old_access_module_still_works_and_warns():
    import aether_django.access as access

    old = importlib.import_module("aether_django.api.access")
    with pytest.warns(DeprecationWarning, match="moved to aether_django.access"):
        assert old.NamespaceAccess is access.NamespaceAccess
    with pytest.warns(DeprecationWarning):
        from aether_django.api.access import access_for  # noqa: F401
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError):
            old.nothing  # noqa: B018
