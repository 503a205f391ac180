"""Projections in the operations endpoints: the /metrics exposition after a runner applied
events and after a poison event, and readyz requiring projections (ready, failed, paused,
lag, a wrong setting). A real nats-server and real runners, read through HTTP."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connections
from django.test import Client, override_settings

from aether_django.checks import check_projections
from aether_django.models import ProjectionCheckpoint
from aether_django.projections import operations

from .app import projections as app_projections
from .app.projections import ledger
from .conftest import eventually, save_ticks

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("scratch_projections"),
]


@pytest.fixture
def staff() -> Client:
    """A staff session."""
    client = Client()
    client.force_login(User.objects.create_user(f"ops-{uuid.uuid4().hex[:6]}", is_staff=True))
    return client


def scrape(client: Client) -> str:
    """The metrics page, which must have read the projections' checkpoints (a page that
    could not read them leaves their samples out)."""
    response = client.get("/aether/metrics/")
    assert response.status_code == 200
    text: str = response.content.decode()
    assert "aether_projection_state{" in text, text
    return text


def value(text: str, key: str) -> float | None:
    """The value of the exposition line ``key value``; None when there is none."""
    found = [line.rpartition(" ")[2] for line in text.splitlines() if line.startswith(key + " ")]
    assert len(found) <= 1, found
    return float(found[0]) if found else None


def state(name: str, namespace: str) -> str | None:
    return (
        ProjectionCheckpoint.objects.filter(projection=name, namespace=namespace)
        .values_list("state", flat=True)
        .first()
    )


def test_metrics_show_events_applied_batches_lag_and_state(unique, runners, staff):
    namespace = unique("proj-met")
    Ledger = ledger(namespace, unique("met"), batch_size=4)
    name = Ledger._meta.name
    labels = f'namespace="{namespace}",projection="{name}"'  # sorted, as exposed
    events = save_ticks(namespace, 10)

    # Nothing applied yet: the whole stream is the lag, and the projection is new.
    text = scrape(staff)
    assert value(text, f"aether_projection_lag{{{labels}}}") == 10
    assert value(text, f'aether_projection_state{{{labels},state="new"}}') == 1
    assert value(text, f'aether_projection_state{{{labels},state="running"}}') == 0
    assert value(text, f"aether_projection_events_total{{{labels}}}") is None

    runners(Ledger)
    Ledger.wait_for(events[-1], timeout=15)
    text = scrape(staff)
    assert value(text, f"aether_projection_events_total{{{labels}}}") == 10
    assert value(text, f"aether_projection_lag{{{labels}}}") == 0
    assert value(text, f'aether_projection_state{{{labels},state="running"}}') == 1
    assert value(text, f'aether_projection_state{{{labels},state="new"}}') == 0
    # At least 3 batches of at most 4 events, each timed once it committed.
    batches = value(text, f'aether_projection_batch_seconds_count{{projection="{name}"}}')
    assert batches is not None and batches >= 3
    assert (
        value(text, f'aether_projection_batch_seconds_bucket{{le="+Inf",projection="{name}"}}')
        == batches
    )
    assert value(text, f"aether_projection_failures_total{{{labels}}}") is None
    for family in ("aether_projection_lag", "aether_projection_state"):
        assert f"# TYPE {family} gauge" in text
    assert "# TYPE aether_projection_batch_seconds histogram" in text

    # Live events count on, and a paused projection's lag grows and shows its state.
    operations.pause(Ledger)
    save_ticks(namespace, 3, first_version=11)
    eventually(lambda: state(name, namespace) == "paused", what="the pause")
    text = scrape(staff)
    assert value(text, f"aether_projection_lag{{{labels}}}") == 3
    assert value(text, f'aether_projection_state{{{labels},state="paused"}}') == 1


def test_metrics_after_a_poison_event(unique, runners, staff):
    namespace = unique("proj-metp")
    Ledger = ledger(namespace, unique("metp"), batch_size=50)
    name = Ledger._meta.name
    labels = f'namespace="{namespace}",projection="{name}"'  # sorted, as exposed
    events = save_ticks(namespace, 8)
    app_projections.POISON.add((namespace, events[5].sequence))
    runners(Ledger)
    eventually(lambda: state(name, namespace) == "failed", what="the projection to fail")

    text = scrape(staff)
    assert value(text, f"aether_projection_failures_total{{{labels}}}") == 1
    # The batch of 8 failed at its 6th event, the 5 before it were committed alone, and
    # the poison event was tried 1 + retries (2) times on its own: 4 rolled-back tries.
    assert value(text, f"aether_projection_handler_errors_total{{{labels}}}") == 4
    assert value(text, f"aether_projection_events_total{{{labels}}}") == 5
    assert value(text, f"aether_projection_lag{{{labels}}}") == 3
    assert value(text, f'aether_projection_state{{{labels},state="failed"}}') == 1
    assert value(text, f'aether_projection_state{{{labels},state="running"}}') == 0


@pytest.fixture
def unreadable_database(tmp_path) -> Iterator[str]:
    """A database alias whose SQLite file cannot be opened (its directory is missing),
    as a projection's database that is down."""
    from django.db.backends.sqlite3.base import DatabaseWrapper

    alias = "unreadable"
    missing = str(tmp_path / "missing" / "db.sqlite3")
    connections[alias] = DatabaseWrapper(
        {**connections["default"].settings_dict, "NAME": missing}, alias
    )
    try:
        yield alias
    finally:
        connections[alias].close()
        del connections[alias]


def test_metrics_leave_the_projections_out_when_the_checkpoints_cannot_be_read(
    unique, staff, unreadable_database, caplog
):
    ledger(unique("proj-metdown"), unique("metdown"), database=unreadable_database)
    with caplog.at_level(logging.WARNING, logger="aether_django.views"):
        response = staff.get("/aether/metrics/")
    # The page still answers: the families are there, without samples, and the log says why.
    assert response.status_code == 200
    text = response.content.decode()
    assert "# TYPE aether_projection_state gauge" in text
    assert "aether_projection_state{" not in text and "aether_projection_lag{" not in text
    assert "could not read the projections' checkpoints for metrics" in caplog.text


def required(*names: str, max_lag: int | None = None):
    return override_settings(
        AETHER={
            **settings.AETHER,
            "READYZ_PROJECTIONS": list(names),
            "READYZ_PROJECTION_MAX_LAG": max_lag,
        }
    )


def readyz() -> tuple[int, dict]:
    response = Client().get("/aether/readyz/")
    return response.status_code, response.json()


def test_readyz_is_ready_when_the_required_projections_run(unique, runners):
    namespace = unique("proj-ready")
    Ledger = ledger(namespace, unique("ready"))
    events = save_ticks(namespace, 3)
    runners(Ledger)
    Ledger.wait_for(events[-1], timeout=15)
    with required(Ledger._meta.name, max_lag=0):
        status, body = readyz()
    assert status == 200, body
    assert body["status"] == "ready" and body["projections"] == [Ledger._meta.name]
    # Without the setting nothing about projections is asked or said.
    status, body = readyz()
    assert status == 200 and "projections" not in body


def test_readyz_is_not_ready_while_a_required_projection_is_failed(unique, runners):
    namespace = unique("proj-rfail")
    Ledger = ledger(namespace, unique("rfail"))
    name = Ledger._meta.name
    events = save_ticks(namespace, 4)
    poison = events[1].sequence
    app_projections.POISON.add((namespace, poison))
    runners(Ledger)
    eventually(lambda: state(name, namespace) == "failed", what="the projection to fail")
    with required(name):
        status, body = readyz()
    assert status == 503 and body["status"] == "unavailable"
    assert body["detail"] == f"{name} failed in {namespace} at sequence {poison}"
    (row,) = body["projections"]
    assert row == {
        "projection": name,
        "namespace": namespace,
        "state": "failed",
        "position": poison - 1,
        "head": events[-1].sequence,
        "lag": 3,
        "reason": body["detail"],
    }
    # readyz answers anyone: the handler's message (it may quote event data) stays out.
    assert "cannot handle" not in str(body)
    # "__all__" requires it too; skipping the event makes it ready again.
    with override_settings(AETHER={**settings.AETHER, "READYZ_PROJECTIONS": "__all__"}):
        assert readyz()[0] == 503
        operations.skip(Ledger, namespace, poison, reason="test", by="ops")
        Ledger.wait_for(events[-1], timeout=15)
        status, body = readyz()
    assert status == 200, body
    assert name in body["projections"]


def test_readyz_is_not_ready_while_a_required_projection_is_paused(unique, runners):
    namespace = unique("proj-rpause")
    Ledger = ledger(namespace, unique("rpause"))
    name = Ledger._meta.name
    save_ticks(namespace, 2)
    operations.pause(Ledger)
    other = ledger(unique("proj-rother"), unique("rother"))
    with required(other._meta.name):
        assert readyz()[0] == 200  # only the required ones count
    with required(name, other._meta.name):
        status, body = readyz()
    assert status == 503
    assert body["detail"] == f"{name} is paused in {namespace}"
    assert [r["state"] for r in body["projections"]] == ["paused"]
    call_command("aether_projections", "resume", name, stdout=None)
    with required(name):
        assert readyz()[0] == 200


def test_readyz_is_not_ready_when_the_checkpoints_cannot_be_read(unique, unreadable_database):
    Ledger = ledger(unique("proj-rdown"), unique("rdown"), database=unreadable_database)
    with required(Ledger._meta.name):
        status, body = readyz()
    assert status == 503
    assert body["detail"] == "the projections' checkpoints could not be read (OperationalError)"


def test_readyz_can_require_a_most_lag(unique, runners):
    namespace = unique("proj-rlag")
    Ledger = ledger(namespace, unique("rlag"))
    name = Ledger._meta.name
    events = save_ticks(namespace, 5)  # no runner yet: 5 behind
    with required(name, max_lag=4):
        status, body = readyz()
    assert status == 503
    assert body["detail"] == (
        f"{name} is 5 events behind in {namespace} (READYZ_PROJECTION_MAX_LAG is 4)"
    )
    assert body["projections"][0]["state"] == "new"
    with required(name, max_lag=5):
        assert readyz()[0] == 200
    with required(name):  # no most lag: a lagging projection that runs is ready
        assert readyz()[0] == 200
    runners(Ledger)
    Ledger.wait_for(events[-1], timeout=15)
    with required(name, max_lag=0):
        assert readyz()[0] == 200


def test_readyz_with_a_wrong_setting_is_not_ready_and_the_check_says_why(unique):
    with required("no-such-projection"):
        status, body = readyz()
        assert status == 503 and "no projection called 'no-such-projection'" in body["detail"]
        problems = [m for m in check_projections() if m.id == "aether_django.E504"]
        assert len(problems) == 1 and "'no-such-projection'" in problems[0].msg
    with override_settings(
        AETHER={
            **settings.AETHER,
            "READYZ_PROJECTIONS": "order-summary",
            "READYZ_PROJECTION_MAX_LAG": -1,
        }
    ):
        assert readyz()[0] == 503
        messages = [m.msg for m in check_projections() if m.id == "aether_django.E504"]
        assert len(messages) == 2
        assert "must be a list of projection names" in messages[0]
        assert "READYZ_PROJECTION_MAX_LAG must be None or an integer" in messages[1]
    assert not [m for m in check_projections() if m.id == "aether_django.E504"]
