"""Forgetting from the HTTP API (POST /api/aether/privacy/forget/) and from the admin
(a form and a confirmation), with the permission aether_django.forget_subject; callers
without it, and bad input, are refused and forget nothing. The log of the whole flow
holds no plaintext of the personal values, nor the key."""

from __future__ import annotations

import base64
import logging
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client
from rest_framework.test import APIClient

from aether_django import privacy
from aether_django.models import NamespaceGrant
from aether_django.privacy.keys import get_key_ring
from aether_django.runtime import get_runtime

from .conftest import forms, new_id
from .domain import Order

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/aether/privacy/forget/"
ADMIN_URL = "/admin/aether_django/datasubject/"


def place(subject: str, name: str, email: str) -> str:
    actor = new_id("order")
    order = Order(actor)
    order.place(customer_id=subject, customer=name, email=email, total=3)
    order.save()
    return actor


def user(name: str, *, permission: bool = False, via_group: bool = False, **flags: Any) -> User:
    who = User.objects.create_user(name, password="pw", **flags)
    if permission:
        granted = Permission.objects.get(
            content_type__app_label="aether_django", codename="forget_subject"
        )
        if via_group:
            group = Group.objects.create(name=f"forgetters-{name}")
            group.permissions.add(granted)
            who.groups.add(group)
        else:
            who.user_permissions.add(granted)
    return who


def api(who: User | None) -> APIClient:
    client = APIClient()
    if who is not None:
        client.force_authenticate(who)
    return client


def still_readable(actor: str, name: str) -> bool:
    return bool(Order.objects.get(actor).customer == name)


def audit_event(audit_id: str) -> Any:
    from aether_django.store import get_event_store

    (event,) = get_event_store(privacy.AUDIT_NAMESPACE).get_events(f"forget-{audit_id}")
    return event


def test_the_api_forgets_with_the_permission_and_answers_the_audit_event() -> None:
    subject = new_id("cust")
    actor = place(subject, "Kora Private", "kora@example.org")
    other = place(new_id("cust"), "Lars Stays", "lars@example.org")

    response = api(user("dpo", permission=True, via_group=True)).post(
        URL, {"subject_id": subject}, format="json"
    )

    assert response.status_code == 200, response.content
    body = response.json()
    audit = audit_event(body["audit_event_id"])
    assert audit.event_type == "SubjectForgotten"
    assert body == {
        "audit_event_id": audit.id,
        "namespace": privacy.AUDIT_NAMESPACE,
        "subject_sha256": audit.data["subject_sha256"],
        "kid": audit.data["kid"],
        "rows_deleted": {},
    }
    assert body["kid"]
    assert Order.objects.get(actor).customer == privacy.FORGOTTEN
    assert still_readable(other, "Lars Stays")
    # Again: idempotent, another audit event, nothing more to erase.
    again = api(User.objects.create_superuser("root", password="pw")).post(
        URL, {"subject_id": subject}, format="json"
    )
    assert again.status_code == 200
    assert again.json()["kid"] is None
    assert again.json()["audit_event_id"] != body["audit_event_id"]


@pytest.mark.parametrize(
    "who",
    ["anonymous", "no_permission", "staff", "namespace_writer_everywhere", "inactive_holder"],
)
def test_the_api_refuses_callers_without_the_permission_and_forgets_nothing(who: str) -> None:
    subject = new_id("cust")
    actor = place(subject, "Mira Guarded", "mira@example.org")
    caller: User | None
    if who == "anonymous":
        caller = None
    elif who == "no_permission":
        caller = user("plain")
    elif who == "staff":
        caller = user("staffer", is_staff=True)
    elif who == "namespace_writer_everywhere":
        caller = user("writer")
        NamespaceGrant.objects.create(
            user=caller, pattern="*", can_read=True, can_write=True, can_create=True
        )
    else:
        caller = user("gone", permission=True)
        caller.is_active = False
        caller.save()

    response = api(caller).post(URL, {"subject_id": subject}, format="json")

    expected = (401, 403) if who in ("anonymous", "inactive_holder") else (403,)
    assert response.status_code in expected, response.content
    assert response.json()["code"] in ("not_authenticated", "permission_denied")
    assert still_readable(actor, "Mira Guarded")


def test_a_session_without_login_is_refused() -> None:
    subject = new_id("cust")
    actor = place(subject, "Nils Session", "nils@example.org")
    response = Client().post(URL, {"subject_id": subject}, content_type="application/json")
    assert response.status_code in (401, 403)
    assert still_readable(actor, "Nils Session")


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"subject_id": ""},
        {"subject_id": None},
        {"subject_id": 42},
        {"subject_id": ["a"]},
        {"subject_id": {"id": "a"}},
        {"subject_id": "x" * 1025},
        {"subject": "the wrong name"},
    ],
    ids=["missing", "empty", "null", "number", "list", "object", "too-long", "wrong-name"],
)
def test_the_api_refuses_bad_input_with_400_and_forgets_nothing(payload: dict[str, Any]) -> None:
    subject = new_id("cust")
    actor = place(subject, "Olga Input", "olga@example.org")
    root = User.objects.create_superuser("root", password="pw")
    response = api(root).post(URL, payload, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "invalid"
    assert "subject_id" in response.json()
    assert still_readable(actor, "Olga Input")


def test_the_api_refuses_a_body_that_is_not_json() -> None:
    root = User.objects.create_superuser("root", password="pw")
    response = api(root).post(URL, "subject_id=x", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["code"] == "parse_error"
    assert api(root).get(URL).status_code == 405


def test_the_openapi_schema_describes_the_endpoint() -> None:
    root = User.objects.create_superuser("root", password="pw")
    schema = api(root).get("/api/aether/schema/", {"format": "json"}).json()
    operation = schema["paths"][URL]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body.endswith("/Forget")
    assert schema["components"]["schemas"]["Forget"]["required"] == ["subject_id"]
    assert set(operation["responses"]) >= {"200", "400", "401", "403", "503"}


# --- the admin ---------------------------------------------------------------------------


def admin_client(who: User) -> Client:
    client = Client()
    client.force_login(who)
    return client


def test_the_admin_forgets_after_a_confirmation() -> None:
    subject = new_id("cust")
    actor = place(subject, "Petra Admin", "petra@example.org")
    other = place(new_id("cust"), "Quinn Stays", "quinn@example.org")
    client = admin_client(user("officer", permission=True, is_staff=True))

    page = client.get(ADMIN_URL)
    assert page.status_code == 200
    assert b'name="subject_id"' in page.content
    index = client.get("/admin/")
    assert b"Forget a data subject" in index.content

    # The form asks for a confirmation; nothing is forgotten yet.
    asked = client.post(ADMIN_URL, {"subject_id": subject})
    assert asked.status_code == 200
    assert b'name="confirm" value="yes"' in asked.content
    assert subject.encode() in asked.content
    assert still_readable(actor, "Petra Admin")

    done = client.post(ADMIN_URL, {"subject_id": subject, "confirm": "yes"}, follow=True)
    assert done.status_code == 200
    assert b"audit event" in done.content
    assert Order.objects.get(actor).customer == privacy.FORGOTTEN
    assert still_readable(other, "Quinn Stays")


def test_the_admin_refuses_an_empty_subject_id() -> None:
    client = admin_client(User.objects.create_superuser("root", password="pw"))
    for data in ({"subject_id": ""}, {"subject_id": "", "confirm": "yes"}, {}):
        response = client.post(ADMIN_URL, data)
        assert response.status_code == 400
        assert b"errornote" in response.content


@pytest.mark.parametrize("who", ["staff_without_permission", "holder_not_staff", "anonymous"])
def test_the_admin_refuses_who_may_not_forget(who: str) -> None:
    subject = new_id("cust")
    actor = place(subject, "Rita Guarded", "rita@example.org")
    if who == "anonymous":
        client = Client()
    elif who == "staff_without_permission":
        client = admin_client(user("staffer", is_staff=True))
    else:
        client = admin_client(user("holder", permission=True))

    for method, data in (("get", {}), ("post", {"subject_id": subject, "confirm": "yes"})):
        response = getattr(client, method)(ADMIN_URL, data)
        if who == "staff_without_permission":
            assert response.status_code == 403
        else:  # the admin sends who is not staff to its login page
            assert response.status_code == 302
            assert "/admin/login/" in response["Location"]
    assert still_readable(actor, "Rita Guarded")
    if who == "staff_without_permission":
        index = client.get("/admin/")
        assert b"Forget a data subject" not in index.content


# --- the logs ------------------------------------------------------------------------------


def test_the_logs_of_the_whole_flow_hold_no_personal_value_nor_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    subject = new_id("cust")
    name, email = "Sven Logged", "sven.logged@example.org"
    actor = place(subject, name, email)
    assert still_readable(actor, name)
    _kid, key = get_runtime().run(get_key_ring().key_for_write(subject))
    officer = user("officer", permission=True, is_staff=True)
    # The API, then the admin, then the shell: all three paths log something.
    assert api(officer).post(URL, {"subject_id": subject}, format="json").status_code == 200
    admin_client(officer).post(ADMIN_URL, {"subject_id": subject, "confirm": "yes"})
    from django.core.management import call_command

    call_command("aether_privacy", "forget", subject)
    assert Order.objects.get(actor).customer == privacy.FORGOTTEN

    assert caplog.records, "the flow logged nothing: the test would prove nothing"
    logged = "\n".join(
        f"{r.name} {r.getMessage()} {r.args!r} {r.exc_text or ''} {vars(r)!r}"
        for r in caplog.records
    ).encode()
    for secret in (name, email):
        for form in forms(secret):
            assert form not in logged, secret
    for form in [*forms(key), base64.b64encode(key)[:16]]:
        assert form not in logged


def test_the_api_answers_503_when_a_read_model_fails_and_a_retry_finishes() -> None:
    from aether_django.projections import ForgetContext, Projection, base

    calls: list[str] = []
    saved = dict(base._registry)

    class Flaky(Projection):
        class Meta:
            source = "privacy-flaky"
            name = "privacy-flaky"

        def on_forget(self, subject_id: str, context: ForgetContext) -> None:
            calls.append(subject_id)
            if len(calls) == 1:
                raise RuntimeError("the read model's database is down")

    try:
        subject = new_id("cust")
        actor = place(subject, "Tove Retry", "tove@example.org")
        root = User.objects.create_superuser("root", password="pw")
        first = api(root).post(URL, {"subject_id": subject}, format="json")
        assert first.status_code == 503, first.content
        assert first.json()["code"] == "forget_incomplete"
        # The key is gone already: nothing of the subject is readable any more.
        assert Order.objects.get(actor).customer == privacy.FORGOTTEN
        second = api(root).post(URL, {"subject_id": subject}, format="json")
        assert second.status_code == 200, second.content
        assert calls == [subject, subject]
    finally:
        base._registry.clear()
        base._registry.update(saved)
    assert Flaky.forgets()
