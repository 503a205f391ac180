"""The admin's projections page: what it shows (real projections, a real nats-server, real
runners), its actions for superusers through the Django test client, and every refusal:
staff who are not superusers (read-only page, 403 on the actions, also with a valid CSRF
token), non-staff and anonymous callers, a POST without the confirmation, one without
its CSRF token."""

from __future__ import annotations

import re
import uuid
from urllib.parse import quote

import pytest
from django.contrib.auth.models import User
from django.test import Client

from aether_django.models import NamespaceGrant, ProjectionCheckpoint, ProjectionSkip
from aether_django.projections import operations
from aether_django.projections.runner import catch_up

from .app import projections as app_projections
from .app.models import Applied
from .app.projections import ledger
from .conftest import save_ticks

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("scratch_projections"),
]

PAGE = "/admin/aether_django/projectioninspection/"


def action_url(name: str, action: str) -> str:
    return f"{PAGE}p/{quote(name)}/{action}/"


def client_of(user: User | None, *, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    if user is not None:
        client.force_login(user)
    return client


def superuser() -> User:
    return User.objects.create_superuser(f"root-{uuid.uuid4().hex[:6]}")


def staff(*patterns: str) -> User:
    user = User.objects.create_user(f"staff-{uuid.uuid4().hex[:6]}", is_staff=True)
    for pattern in patterns:
        NamespaceGrant.objects.create(user=user, pattern=pattern, can_read=True)
    return user


def checkpoint(name: str, namespace: str) -> ProjectionCheckpoint:
    return ProjectionCheckpoint.objects.get(projection=name, namespace=namespace)


@pytest.fixture
def failed(unique):
    """A ledger projection stopped at a poison event (the 4th of 6), and a healthy one."""
    namespace = unique("padm")
    Ledger = ledger(namespace, unique("padm-fail"))
    healthy = ledger(namespace, unique("padm-ok"))
    events = save_ticks(namespace, 6, actor="order-7")
    poison = events[3]
    assert catch_up(healthy) == {namespace: "caught-up"}
    app_projections.POISON.add((namespace, poison.sequence))  # for Ledger: it has not run
    assert catch_up(Ledger) == {namespace: "failed"}
    return Ledger, healthy, namespace, events, poison


def row_cells(page: str, namespace: str, projection: str) -> list[str]:
    """The cells of ``namespace``'s row in ``projection``'s table, as text."""
    block = page.split(f'data-projection="{projection}"', 1)[1].split("aether-projection", 1)[0]
    row = re.search(rf'<tr data-namespace="{re.escape(namespace)}">(.*?)</tr>', block, re.S)
    assert row is not None, block[:2000]
    return [
        " ".join(re.sub(r"<[^>]+>", " ", cell).split())
        for cell in re.findall(r"<td[^>]*>(.*?)</td>", row[1], re.S)
    ]


def test_the_page_shows_positions_heads_lag_state_and_links_the_failing_event(failed):
    Ledger, healthy, namespace, events, poison = failed
    name, ok_name = Ledger._meta.name, healthy._meta.name
    root = client_of(superuser())
    response = root.get(PAGE)
    assert response.status_code == 200
    page = response.content.decode()
    head = events[-1].sequence

    cells = row_cells(page, namespace, name)
    assert cells[:5] == [namespace, str(poison.sequence - 1), str(head), "3", "failed"]
    assert f"At sequence {poison.sequence} (Tick of order-7, version 4)" in cells[5]
    assert f"ValueError: cannot handle {namespace}:{poison.sequence}" in cells[5]
    assert cells[6] == "Skip…"
    ok_row = row_cells(page, namespace, ok_name)
    assert ok_row[:6] == [namespace, str(head), str(head), "0", "running", "\N{EN DASH}"]
    assert f"Source <code>{namespace}</code>" in page
    # Where it runs, as `aether_projections status` says it (the suite's nodes run none).
    assert "Placement: not placed: nodes do not run projections" in page

    # The link leads to the failing event's place in its actor's timeline.
    (link,) = re.findall(r'class="aether-failing-event" href="([^"]+)"', page)
    link = link.replace("&amp;", "&")
    assert link == f"/admin/aether_django/streaminspection/ns/{namespace}/order-7/?from_version=4"
    timeline = root.get(link)
    assert timeline.status_code == 200
    first_row = timeline.content.decode().split("<tbody>", 1)[1]
    assert re.search(rf"<td>4</td><td>{poison.sequence}</td><td>Tick</td>", first_row)

    # The superuser has the action buttons.
    for action in ("rebuild", "pause", "resume"):
        assert f'href="{action_url(name, action)}"' in page
    assert f'href="{action_url(name, "skip")}?namespace={namespace}"' in page


def test_staff_see_the_page_read_only_and_only_namespaces_they_may_read(failed):
    Ledger, _, namespace, _, _ = failed
    name = Ledger._meta.name
    page = client_of(staff(namespace)).get(PAGE).content.decode()
    assert row_cells(page, namespace, name)[4] == "failed"
    assert "aether-failing-event" in page
    assert "Only superusers may rebuild" in page
    for action in ("rebuild", "pause", "resume", "skip"):
        assert f"/{action}/" not in page

    # Staff without a grant on the namespace: neither its row nor its error (the source,
    # the project's declaration, is shown whatever it names).
    page = client_of(staff()).get(PAGE).content.decode()
    assert f'data-namespace="{namespace}"' not in page and "cannot handle" not in page
    assert "namespace you may not read" in page


def test_pause_and_resume_through_their_confirmation_pages(failed, runners):
    _, healthy, namespace, _, _ = failed
    name = healthy._meta.name
    root = client_of(superuser())

    confirm = root.get(action_url(name, "pause"))
    assert confirm.status_code == 200
    assert f"Yes, pause {name}" in confirm.content.decode()
    assert checkpoint(name, namespace).state == "running"  # a GET does nothing

    done = root.post(action_url(name, "pause"), {"confirm": "yes"})
    assert done.status_code == 302 and done["Location"] == PAGE
    assert checkpoint(name, namespace).state == "paused"
    assert f"Paused {name} in 1 namespace(s)." in root.get(PAGE).content.decode()

    runners(healthy)
    more = save_ticks(namespace, 2, actor="order-8")
    assert root.get(action_url(name, "resume")).status_code == 200
    assert checkpoint(name, namespace).state == "paused"
    done = root.post(action_url(name, "resume"), {"confirm": "yes"})
    assert done.status_code == 302
    healthy.wait_for(more[-1], timeout=15)
    assert checkpoint(name, namespace).state == "running"


def test_rebuild_resets_at_once_and_the_running_runner_replays(failed, runners):
    _, healthy, namespace, events, _ = failed
    name = healthy._meta.name
    app_projections.POISON.clear()  # the replay passes the poison event for this one
    before = list(Applied.objects.filter(projection=name).values_list("sequence", "data"))
    assert len(before) == len(events)
    root = client_of(superuser())
    confirm = root.get(action_url(name, "rebuild")).content.decode()
    assert "This page does not wait for the replay." in confirm
    assert "(projection_tests.Applied)" in confirm

    done = root.post(action_url(name, "rebuild"), {"confirm": "yes"})
    assert done.status_code == 302
    # Reset in one step: no row, the checkpoint at 0 and running.
    assert not Applied.objects.filter(projection=name).exists()
    cp = checkpoint(name, namespace)
    assert (cp.sequence, cp.state) == (0, "running")
    # The runner replays it all.
    runners(healthy)
    healthy.wait_for(events[-1], timeout=15)
    after = list(Applied.objects.filter(projection=name).values_list("sequence", "data"))
    assert sorted(after) == sorted(before)


def test_skip_is_prefilled_from_the_failure_and_recorded_with_the_admin_user(failed, runners):
    Ledger, _, namespace, events, poison = failed
    name = Ledger._meta.name
    admin_user = superuser()
    root = client_of(admin_user)
    for query in (f"?namespace={namespace}", ""):  # the only failed namespace by default
        form = root.get(action_url(name, "skip") + query).content.decode()
        assert f'name="namespace" value="{namespace}"' in form
        assert f'name="sequence" value="{poison.sequence}"' in form

    # No reason, a sequence that is not the failing event, no number: 400, nothing done.
    for body, error in (
        ({"sequence": poison.sequence, "reason": " "}, "a skip needs a reason"),
        (
            {"sequence": poison.sequence + 1, "reason": "x"},
            f"stopped at sequence {poison.sequence}",
        ),
        ({"sequence": "four", "reason": "x"}, "the sequence must be a number"),
    ):
        refused = root.post(
            action_url(name, "skip"), {"confirm": "yes", "namespace": namespace, **body}
        )
        assert refused.status_code == 400
        assert error in refused.content.decode()
    assert not ProjectionSkip.objects.filter(projection=name).exists()
    assert checkpoint(name, namespace).state == "failed"

    done = root.post(
        action_url(name, "skip"),
        {
            "confirm": "yes",
            "namespace": namespace,
            "sequence": poison.sequence,
            "reason": "bad import",
        },
    )
    assert done.status_code == 302
    record = ProjectionSkip.objects.get(projection=name)
    assert (record.namespace, record.sequence, record.reason, record.skipped_by) == (
        namespace,
        poison.sequence,
        "bad import",
        admin_user.username,
    )
    runners(Ledger)
    Ledger.wait_for(events[-1], timeout=15)
    page = root.get(PAGE).content.decode()
    assert row_cells(page, namespace, name)[4] == "running"
    assert f"<td>{poison.sequence}</td><td>bad import</td><td>{admin_user.username}</td>" in page


def _csrf_client(user: User) -> tuple[Client, str]:
    client = client_of(user, csrf=True)
    client.get(PAGE)
    return client, client.cookies["csrftoken"].value


def test_staff_who_are_not_superusers_cannot_act_even_with_a_valid_csrf_token(failed):
    Ledger, healthy, namespace, _, poison = failed
    attacker, token = _csrf_client(staff(namespace))
    bodies = {
        "rebuild": {},
        "pause": {},
        "resume": {},
        "skip": {"namespace": namespace, "sequence": poison.sequence, "reason": "mine"},
    }
    rows = Applied.objects.count()
    for action, body in bodies.items():
        for projection in (Ledger, healthy):
            url = action_url(projection._meta.name, action)
            assert attacker.get(url).status_code == 403
            response = attacker.post(url, {"confirm": "yes", "csrfmiddlewaretoken": token, **body})
            assert response.status_code == 403, (action, response.status_code)
    assert checkpoint(Ledger._meta.name, namespace).state == "failed"
    assert checkpoint(healthy._meta.name, namespace).state == "running"
    assert not ProjectionSkip.objects.exists()
    assert Applied.objects.count() == rows


def test_non_staff_anonymous_unconfirmed_and_forged_requests_change_nothing(failed):
    Ledger, healthy, namespace, _, _ = failed
    name = healthy._meta.name
    url = action_url(name, "pause")
    plain = User.objects.create_user(f"plain-{uuid.uuid4().hex[:6]}")
    NamespaceGrant.objects.create(user=plain, pattern=namespace, can_read=True)
    for client in (client_of(None), client_of(plain)):
        for response in (client.get(PAGE), client.get(url), client.post(url, {"confirm": "yes"})):
            assert response.status_code == 302
            assert response["Location"].startswith("/admin/login/?next=")

    root_user = superuser()
    root = client_of(root_user)
    # A POST without the confirmation shows the page again, with 400.
    unconfirmed = root.post(url, {})
    assert unconfirmed.status_code == 400
    assert "Not confirmed: nothing was done." in unconfirmed.content.decode()
    # Without its CSRF token (a forged form on another site): refused by the admin.
    forged = client_of(root_user, csrf=True).post(url, {"confirm": "yes"})
    assert forged.status_code == 403
    # Methods other than GET, HEAD and POST; a projection that does not exist.
    assert root.put(url).status_code == 405
    assert root.get(action_url("no-such-projection", "pause")).status_code == 404
    # Django's add, change, delete and history URLs of the entry: refused.
    for path in ("add/", "x/change/", "x/delete/", "x/history/"):
        assert root.get(PAGE + path).status_code == 403
    # The page itself is read-only.
    assert root.post(PAGE, {"confirm": "yes"}).status_code == 405
    assert checkpoint(name, namespace).state == "running"
    assert checkpoint(Ledger._meta.name, namespace).state == "failed"
    # With the token, the same form works: the refusals above were the token's.
    client, token = _csrf_client(root_user)
    assert client.post(url, {"confirm": "yes", "csrfmiddlewaretoken": token}).status_code == 302
    assert checkpoint(name, namespace).state == "paused"
    operations.resume(healthy)
