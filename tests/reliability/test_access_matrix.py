"""Who may do what, in one place: every HTTP endpoint, WebSocket action and admin page of
aether_django against every kind of caller, and namespace isolation in storage.

The three tables below are the access rules of docs/api.md, docs/websocket.md,
docs/admin.md and docs/security.md written as data. Each row is one endpoint, action or
page; its seven columns are the outcomes for the seven caller kinds of ``KINDS``. Every
(row, caller) cell is a test of its own, run on the real parts: the session's
nats-server, DRF's APIClient and Django's test Client with real session logins, and
Channels' WebsocketCommunicator on the test project's ASGI application (origin check,
session authentication, URL router), authenticated by the session cookie as a browser is.

The callers, and the two namespaces every test uses:

* ``anonymous``: no login.
* ``no_grant``: a logged-in user without any NamespaceGrant.
* ``read_grant``: a user grant ``can_read`` on GRANTED.
* ``write_grant``: a user grant ``can_read`` and ``can_write`` on GRANTED.
* ``wildcard_grant``: member of a group whose grant (read and write) is the pattern
  ``<base>.eu.*``, which matches GRANTED and not HIDDEN.
* ``staff``: ``is_staff``, no grants, no model permissions.
* ``superuser``: needs no grant.

GRANTED (``<base>.eu.orders``) is what the grants name; HIDDEN (``<base>.us.orders``) is
matched by no grant, so only the superuser reaches it through the API and WebSockets.
Both hold the same actor id, with different data, so that a leak would show. In the
tables, ``{granted}``, ``{hidden}``, ``{actor}`` (fresh per test), ``{fresh}`` (a
namespace under the wildcard grant that does not exist yet), ``{both}`` (the
WebSocket pattern ``<base>.*.orders``), ``{bad}`` (an invalid name) and ``{grant}`` (a
NamespaceGrant of a bystander) are filled in when a test runs.

Besides its status, every HTTP cell checks that nothing was stored unless the cell is
a successful write, and that no answer to anyone but the superuser (and staff, where
the docs allow them everything) names HIDDEN or carries its data. Every admin cell
checks that event history is unchanged, and that its page names no namespace the
caller may not read (staff, having no grant, may read none) and carries nothing of
HIDDEN's data. Three more tests fail when an API or
operations URL, an HTTP method of one, an aether admin model or one of its pages, or a
WebSocket route exists that the tables do not cover.

Storage isolation is tested at the end. Already covered elsewhere, and not repeated
here:

* ``EventStoreContract.test_namespaces_are_isolated`` (aether_django/testing/contract.py,
  run on JetStream by tests/store/test_jetstream_contract.py): events, versions and
  snapshots saved in one namespace are invisible to another.
* In tests/store/test_jetstream.py,
  ``test_one_stream_per_namespace_with_server_side_guarantees`` (a stream holds only the
  subjects ``aether.events.<namespace>.*``) and
  ``test_namespaces_whose_stream_names_collide_are_refused`` (``a.b`` and ``a__b``).

This module adds the cases those leave open: a namespace and its child namespace,
whose subjects share a prefix, and actor ids shaped like subjects or wildcards
(``eu.x``, ``eu.>``, ``*``), checked against the streams on the server.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import nats
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib import admin
from django.contrib.auth.models import Group, User
from django.test import Client
from django.urls import URLPattern, URLResolver, resolve
from rest_framework.test import APIClient

from aether_django import aggregates
from aether_django.api import commands
from aether_django.conf import store_config
from aether_django.events import ActorSnapshot, Event
from aether_django.models import NamespaceGrant
from aether_django.runtime import get_runtime
from aether_django.store import get_event_store
from aether_django.store.jetstream import JetStreamEventStore
from aether_django.testing.contract import ev

KINDS = (
    "anonymous",
    "no_grant",
    "read_grant",
    "write_grant",
    "wildcard_grant",
    "staff",
    "superuser",
)

# One base per test process: the namespaces outlive a test (streams cannot be deleted,
# by design), so each test uses a fresh actor id in them instead.
BASE = f"acl{uuid.uuid4().hex[:8]}"
GRANTED = f"{BASE}.eu.orders"
HIDDEN = f"{BASE}.us.orders"
WILDCARD_GRANT = f"{BASE}.eu.*"
#: A WebSocket pattern that matches both namespaces; it is narrowed per caller.
BOTH = f"{BASE}.*.orders"
NAMESPACES = {"granted": GRANTED, "hidden": HIDDEN}
LABELS = {namespace: label for label, namespace in NAMESPACES.items()}
#: In the data of HIDDEN's events and snapshots: an answer that carries it leaks.
SECRET = f"secret-{uuid.uuid4().hex[:8]}"


# --- the HTTP table -------------------------------------------------------------------------


@dataclass(frozen=True)
class Http:
    """The expected answer: status, the error body's ``code``, and for ``GET namespaces/``
    which of GRANTED and HIDDEN the list holds."""

    status: int
    code: str | None = None
    lists: frozenset[str] | None = None


OK = Http(200)
CREATED = Http(201)
# tests.settings puts SessionAuthentication first, so anonymous callers get 403 (with
# BasicAuthentication first it would be 401 and a WWW-Authenticate header).
ANON = Http(403, "not_authenticated")
# No read grant: the same answer as for a namespace that does not exist.
HIDE = Http(404, "not_found")
# A write with a read-only grant; a cluster endpoint for a non-staff user.
DENY = Http(403, "permission_denied")
# An invalid namespace name, whoever asks (names are checked before grants).
BAD = Http(400, "invalid")
# The metrics view's own answer without a staff session or the bearer token.
NO_LOGIN = Http(401, "not_authenticated")
LISTS_0 = Http(200, lists=frozenset())
LISTS_G = Http(200, lists=frozenset({"granted"}))
LISTS_GH = Http(200, lists=frozenset({"granted", "hidden"}))


@dataclass(frozen=True)
class HttpRow:
    """``"METHOD /path/"`` with {granted}, {hidden}, {actor} and {bad} placeholders."""

    request: str
    expect: tuple[Http, ...]
    body: dict[str, Any] | None = None
    #: The namespace ("granted" or "hidden") whose history a successful call changes.
    writes: str | None = None
    #: Staff may see every namespace's name here (metrics are labelled by namespace).
    staff_sees_all: bool = False
    #: A successful call creates {fresh}; any other answer leaves it absent.
    creates: bool = False

    @property
    def method(self) -> str:
        return self.request.split()[0]

    @property
    def path(self) -> str:
        return self.request.split()[1]


APPEND = {"event_type": "Opened", "version": 2, "data": {"by": "caller"}}
SNAPSHOT = {"version": 1, "state": {"by": "caller"}}

# fmt: off
HTTP_TABLE: tuple[HttpRow, ...] = (
    #        anonymous  no_grant   read_grant  write_grant wildcard   staff      superuser
    HttpRow("GET /api/aether/namespaces/",
            (ANON,      LISTS_0,   LISTS_G,    LISTS_G,    LISTS_G,   LISTS_0,   LISTS_GH)),
    HttpRow("GET /api/aether/namespaces/{granted}/",
            (ANON,      HIDE,      OK,         OK,         OK,        HIDE,      OK)),
    HttpRow("GET /api/aether/namespaces/{hidden}/",
            (ANON,      HIDE,      HIDE,       HIDE,       HIDE,      HIDE,      OK)),
    HttpRow("GET /api/aether/namespaces/{bad}/",
            (ANON,      BAD,       BAD,        BAD,        BAD,       BAD,       BAD)),
    HttpRow("GET /api/aether/namespaces/{granted}/actors/",
            (ANON,      HIDE,      OK,         OK,         OK,        HIDE,      OK)),
    HttpRow("GET /api/aether/namespaces/{granted}/actors/{actor}/events/",
            (ANON,      HIDE,      OK,         OK,         OK,        HIDE,      OK)),
    HttpRow("POST /api/aether/namespaces/{granted}/actors/{actor}/events/",
            body=APPEND, writes="granted", expect=
            (ANON,      HIDE,      DENY,       CREATED,    CREATED,   HIDE,      CREATED)),
    # A namespace that does not exist yet ({fresh}, matched by the wildcard grant): a
    # write would create it, which takes can_create (no caller kind but the superuser
    # has it); the grant checks come first, so the others answer as for any write.
    HttpRow("POST /api/aether/namespaces/{fresh}/actors/{actor}/events/",
            body=APPEND, creates=True, expect=
            (ANON,      HIDE,      HIDE,       HIDE,       DENY,      HIDE,      CREATED)),
    HttpRow("POST /api/aether/namespaces/{hidden}/actors/{actor}/events/",
            body=APPEND, writes="hidden", expect=
            (ANON,      HIDE,      HIDE,       HIDE,       HIDE,      HIDE,      CREATED)),
    HttpRow("GET /api/aether/namespaces/{granted}/actors/{actor}/version/",
            (ANON,      HIDE,      OK,         OK,         OK,        HIDE,      OK)),
    HttpRow("GET /api/aether/namespaces/{granted}/actors/{actor}/snapshot/",
            (ANON,      HIDE,      OK,         OK,         OK,        HIDE,      OK)),
    # Off unless AETHER["API_SNAPSHOT_WRITES"]: a snapshot is loaded as state.
    HttpRow("PUT /api/aether/namespaces/{granted}/actors/{actor}/snapshot/",
            body=SNAPSHOT, writes="granted", expect=
            (ANON,      HIDE,      DENY,       DENY,       DENY,      HIDE,      DENY)),
    HttpRow("GET /api/aether/namespaces/{granted}/actors/{actor}/state/",
            (ANON,      HIDE,      OK,         OK,         OK,        HIDE,      OK)),
    # Aggregate commands (aether_django.api.commands): GRANTED's Ledger is served (the
    # ledger fixture registers it), HIDDEN has no aggregate; a command takes the grants
    # of an append, reading the aggregate those of a read.
    HttpRow("POST /api/aether/aggregates/{granted}/{actor}/commands/open/",
            body={}, writes="granted", expect=
            (ANON,      HIDE,      DENY,       OK,         OK,        HIDE,      OK)),
    HttpRow("POST /api/aether/aggregates/{hidden}/{actor}/commands/open/", body={}, expect=
            (ANON,      HIDE,      HIDE,       HIDE,       HIDE,      HIDE,      HIDE)),
    HttpRow("POST /api/aether/aggregates/{bad}/{actor}/commands/open/", body={}, expect=
            (ANON,      BAD,       BAD,        BAD,        BAD,       BAD,       BAD)),
    HttpRow("GET /api/aether/aggregates/{granted}/{actor}/",
            (ANON,      HIDE,      OK,         OK,         OK,        HIDE,      OK)),
    HttpRow("GET /api/aether/aggregates/{hidden}/{actor}/",
            (ANON,      HIDE,      HIDE,       HIDE,       HIDE,      HIDE,      HIDE)),
    # Forgetting a data subject (docs/privacy.md) takes the permission
    # aether_django.forget_subject, which only the superuser holds here: no grant and no
    # staff flag opens it. The subject is one nobody wrote for (forgetting it is harmless).
    HttpRow("POST /api/aether/privacy/forget/", body={"subject_id": "{actor}"}, expect=
            (ANON,      DENY,      DENY,       DENY,       DENY,      DENY,      OK)),
    HttpRow("GET /api/aether/cluster/",
            (ANON,      DENY,      DENY,       DENY,       DENY,      OK,        OK)),
    HttpRow("GET /api/aether/cluster/shards/",
            (ANON,      DENY,      DENY,       DENY,       DENY,      OK,        OK)),
    # Any logged-in user (AETHER["API_SCHEMA_PUBLIC"] opens it to anyone).
    HttpRow("GET /api/aether/schema/",
            (ANON,      OK,        OK,         OK,         OK,        OK,        OK)),
    # The schema's pages (Swagger UI, Redoc) follow the schema.
    HttpRow("GET /api/aether/schema/swagger-ui/",
            (ANON,      OK,        OK,         OK,         OK,        OK,        OK)),
    HttpRow("GET /api/aether/schema/redoc/",
            (ANON,      OK,        OK,         OK,         OK,        OK,        OK)),
    # Operations endpoints (aether_django.urls): load balancers call these two.
    HttpRow("GET /aether/healthz/",
            (OK,        OK,        OK,         OK,         OK,        OK,        OK)),
    HttpRow("GET /aether/readyz/",
            (OK,        OK,        OK,         OK,         OK,        OK,        OK)),
    HttpRow("GET /aether/metrics/", staff_sees_all=True, expect=
            (NO_LOGIN,  NO_LOGIN,  NO_LOGIN,   NO_LOGIN,   NO_LOGIN,  OK,        OK)),
)
# fmt: on


# --- the WebSocket table --------------------------------------------------------------------


@dataclass(frozen=True)
class Ws:
    """The expected answer to the row's last frame (or to the handshake), and the
    namespaces whose events, saved afterwards, reach the socket."""

    reply: str  # "refused", "accepted", or the type of the server frame
    code: str | int | None = None  # the close code of a refused socket, or the error code
    delivers: frozenset[str] = field(default_factory=frozenset)


# Not logged in: closed with 4401 before it is accepted (HTTP 403 behind a real server).
REFUSED = Ws("refused", 4401)
ACCEPTED = Ws("accepted")
NOT_FOUND = Ws("error", "not_found")
SUB_G = Ws("subscribed", delivers=frozenset({"granted"}))
SUB_H = Ws("subscribed", delivers=frozenset({"hidden"}))
SUB_GH = Ws("subscribed", delivers=frozenset({"granted", "hidden"}))
UNSUB = Ws("unsubscribed")
UNKNOWN = Ws("error", "unknown_id")


@dataclass(frozen=True)
class WsRow:
    """Frames sent on a fresh socket, ``{granted}``, ``{hidden}`` and ``{both}`` filled in."""

    action: str
    frames: tuple[dict[str, Any], ...]
    expect: tuple[Ws, ...]


def _subscribe(namespace: str) -> dict[str, Any]:
    return {"action": "subscribe", "id": "s", "namespace": namespace}


# fmt: off
WS_TABLE: tuple[WsRow, ...] = (
    #      anonymous no_grant   read_grant write_grant wildcard  staff      superuser
    WsRow("connect", (),
          (REFUSED,  ACCEPTED,  ACCEPTED,  ACCEPTED,  ACCEPTED,  ACCEPTED,  ACCEPTED)),
    WsRow("subscribe {granted}", (_subscribe("{granted}"),),
          (REFUSED,  NOT_FOUND, SUB_G,     SUB_G,     SUB_G,     NOT_FOUND, SUB_G)),
    WsRow("subscribe {hidden}", (_subscribe("{hidden}"),),
          (REFUSED,  NOT_FOUND, NOT_FOUND, NOT_FOUND, NOT_FOUND, NOT_FOUND, SUB_H)),
    # A pattern is narrowed to what the caller may read; one that no read grant of the
    # caller can match is refused like a namespace without a grant.
    WsRow("subscribe {both} (a pattern)", (_subscribe("{both}"),),
          (REFUSED,  NOT_FOUND, SUB_G,     SUB_G,     SUB_G,     NOT_FOUND, SUB_GH)),
    # Callers whose subscribe was refused have nothing to unsubscribe.
    WsRow("unsubscribe", (_subscribe("{granted}"), {"action": "unsubscribe", "id": "s"}),
          (REFUSED,  UNKNOWN,   UNSUB,     UNSUB,     UNSUB,     UNKNOWN,   UNSUB)),
)
# fmt: on


# --- the admin table ------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    """The expected answer: status, where a redirect goes, and for the namespace list
    which of GRANTED and HIDDEN it links to."""

    status: int
    redirect: str | None = None  # "login" or "saved" (back to the changelist)
    lists: frozenset[str] | None = None


LOGIN = Page(302, "login")  # to /admin/login/?next=...: the admin is for staff only
SHOWN = Page(200)
FORBID = Page(403)  # staff without the model permission
# No read grant: the same answer as for a namespace that does not exist.
ABSENT = Page(404)
# Inspection pages are read-only: any method but GET and HEAD, whatever the namespace.
NOT_ALLOWED = Page(405)
# Django's add, change, delete and history URLs of an inspection model, refused on
# purpose for everyone, the superuser included.
READ_ONLY = Page(403)
SAVED = Page(302, "saved")
# A projection action taken (by a superuser): back to the projections page.
DONE = Page(302, "done")
# A projection action that cannot be done (a skip of an event it did not stop at).
INVALID = Page(400)
SHOWS_0 = Page(200, lists=frozenset())
SHOWS_GH = Page(200, lists=frozenset({"granted", "hidden"}))

#: The namespaces each kind of caller may read (the admin lets only staff in).
READABLE: dict[str, frozenset[str]] = {
    "read_grant": frozenset({"granted"}),
    "write_grant": frozenset({"granted"}),
    "wildcard_grant": frozenset({"granted"}),
    "superuser": frozenset({"granted", "hidden"}),
}


@dataclass(frozen=True)
class AdminRow:
    """``"METHOD path"`` under /admin/aether_django/, with {granted}, {hidden}, {actor} and
    {grant} (a grant of a bystander) filled in; str values of ``body`` too."""

    request: str
    expect: tuple[Page, ...]
    body: dict[str, str] | None = None

    @property
    def method(self) -> str:
        return self.request.split()[0]

    @property
    def path(self) -> str:
        return "/admin/aether_django/" + self.request.split()[1].lstrip("/")


NEW_GRANT = {"user": "{bystander}", "pattern": HIDDEN, "can_read": "on", "can_write": "on"}

# fmt: off
ADMIN_TABLE: tuple[AdminRow, ...] = (
    #         anonymous no_grant read_grant write_grant wildcard staff   superuser
    AdminRow("GET /",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   SHOWN,  SHOWN)),
    # Namespace pages follow the grants, as the API does: staff, with no grant, see
    # none; a non-staff user's grants do not open the admin.
    AdminRow("GET streaminspection/",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   SHOWS_0, SHOWS_GH)),
    AdminRow("GET streaminspection/ns/{granted}/",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   ABSENT, SHOWN)),
    AdminRow("GET streaminspection/ns/{hidden}/",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   ABSENT, SHOWN)),
    AdminRow("GET streaminspection/ns/{granted}/{actor}/",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   ABSENT, SHOWN)),
    AdminRow("GET streaminspection/ns/{hidden}/{actor}/",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   ABSENT, SHOWN)),
    AdminRow("HEAD streaminspection/ns/{hidden}/{actor}/",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   ABSENT, SHOWN)),
    # A correlation's events: in the namespaces the caller may read, or in the one named.
    AdminRow("GET streaminspection/correlation/?id={actor}",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   SHOWN,  SHOWN)),
    AdminRow("GET streaminspection/correlation/?id={actor}&ns={hidden}",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   ABSENT, SHOWN)),
    AdminRow("POST streaminspection/correlation/", body={"id": "x"}, expect=
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   NOT_ALLOWED, NOT_ALLOWED)),
    # History is read-only for everyone, the superuser included: any method but GET and
    # HEAD is refused before the namespace is looked at, so it tells nothing about it.
    AdminRow("POST streaminspection/", body={"q": "x"}, expect=
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   NOT_ALLOWED, NOT_ALLOWED)),
    AdminRow("POST streaminspection/ns/{hidden}/", body={"q": "x"}, expect=
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   NOT_ALLOWED, NOT_ALLOWED)),
    AdminRow("POST streaminspection/ns/{granted}/{actor}/", body={"version": "2"}, expect=
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   NOT_ALLOWED, NOT_ALLOWED)),
    # Django's add, change, delete and history URLs: 403 whatever the object id. A
    # namespace called "add" is at streaminspection/ns/add/ (tests/admin/test_admin.py).
    AdminRow("GET streaminspection/add/",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   READ_ONLY, READ_ONLY)),
    AdminRow("POST streaminspection/add/", body={"namespace": "{hidden}"}, expect=
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   READ_ONLY, READ_ONLY)),
    AdminRow("GET streaminspection/{granted}/change/",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   READ_ONLY, READ_ONLY)),
    AdminRow("POST streaminspection/{hidden}/delete/", body={"post": "yes"}, expect=
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   READ_ONLY, READ_ONLY)),
    AdminRow("GET streaminspection/{hidden}/history/",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   READ_ONLY, READ_ONLY)),
    # Forgetting a data subject: staff holding aether_django.forget_subject (here the
    # superuser only); Django's add, change, delete and history URLs are refused.
    AdminRow("GET datasubject/",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   FORBID, SHOWN)),
    AdminRow("POST datasubject/", body={"subject_id": "{actor}"}, expect=
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   FORBID, SHOWN)),
    AdminRow("GET datasubject/add/",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   READ_ONLY, READ_ONLY)),
    AdminRow("GET datasubject/x/change/",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   READ_ONLY, READ_ONLY)),
    AdminRow("POST datasubject/x/delete/", body={"post": "yes"}, expect=
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   READ_ONLY, READ_ONLY)),
    AdminRow("GET datasubject/x/history/",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   READ_ONLY, READ_ONLY)),
    # The cluster pages hold no namespace data: every staff user sees them.
    AdminRow("GET clusterinspection/",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   SHOWN,  SHOWN)),
    AdminRow("GET clusterinspection/shards/",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   SHOWN,  SHOWN)),
    AdminRow("POST clusterinspection/", body={}, expect=
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   NOT_ALLOWED, NOT_ALLOWED)),
    AdminRow("POST clusterinspection/shards/", body={}, expect=
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   NOT_ALLOWED, NOT_ALLOWED)),
    AdminRow("GET clusterinspection/add/",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   READ_ONLY, READ_ONLY)),
    AdminRow("GET clusterinspection/shards/change/",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   READ_ONLY, READ_ONLY)),
    AdminRow("POST clusterinspection/shards/delete/", body={"post": "yes"}, expect=
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   READ_ONLY, READ_ONLY)),
    AdminRow("GET clusterinspection/shards/history/",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   READ_ONLY, READ_ONLY)),
    # Projections: all staff read the page (the rows of namespaces they may read); only
    # superusers act, through a confirmation page and its POST. "order-summary" is the
    # test app's projection (tests/projections/app).
    AdminRow("GET projectioninspection/",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   SHOWN,  SHOWN)),
    AdminRow("POST projectioninspection/", body={}, expect=
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   NOT_ALLOWED, NOT_ALLOWED)),
    AdminRow("GET projectioninspection/p/order-summary/rebuild/",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   FORBID, SHOWN)),
    AdminRow("POST projectioninspection/p/order-summary/rebuild/", body={"confirm": "yes"}, expect=
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   FORBID, DONE)),
    AdminRow("GET projectioninspection/p/order-summary/pause/",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   FORBID, SHOWN)),
    AdminRow("POST projectioninspection/p/order-summary/pause/", body={"confirm": "yes"}, expect=
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   FORBID, DONE)),
    AdminRow("GET projectioninspection/p/order-summary/resume/",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   FORBID, SHOWN)),
    AdminRow("POST projectioninspection/p/order-summary/resume/", body={"confirm": "yes"}, expect=
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   FORBID, DONE)),
    AdminRow("GET projectioninspection/p/order-summary/skip/?namespace={hidden}",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   FORBID, SHOWN)),
    AdminRow("POST projectioninspection/p/order-summary/skip/",
             body={"confirm": "yes", "namespace": "{hidden}", "sequence": "1", "reason": "x"},
             expect=
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   FORBID, INVALID)),
    AdminRow("GET projectioninspection/add/",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   READ_ONLY, READ_ONLY)),
    AdminRow("GET projectioninspection/order-summary/change/",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   READ_ONLY, READ_ONLY)),
    AdminRow("POST projectioninspection/order-summary/delete/", body={"post": "yes"}, expect=
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   READ_ONLY, READ_ONLY)),
    AdminRow("GET projectioninspection/order-summary/history/",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   READ_ONLY, READ_ONLY)),
    # Grants: Django's model permissions, which a superuser has and plain staff has not.
    AdminRow("GET namespacegrant/",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   FORBID, SHOWN)),
    AdminRow("GET namespacegrant/add/",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   FORBID, SHOWN)),
    AdminRow("POST namespacegrant/add/", body=NEW_GRANT, expect=
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   FORBID, SAVED)),
    AdminRow("GET namespacegrant/{grant}/change/",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   FORBID, SHOWN)),
    AdminRow("GET namespacegrant/{grant}/history/",
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   FORBID, SHOWN)),
    AdminRow("POST namespacegrant/{grant}/delete/", body={"post": "yes"}, expect=
             (LOGIN,    LOGIN,   LOGIN,     LOGIN,      LOGIN,   FORBID, SAVED)),
)
# fmt: on


def cells(table: tuple[Any, ...]) -> list[Any]:
    """One pytest param per (row, caller kind), with an id that names both."""
    params = []
    for row in table:
        name = getattr(row, "request", None) or row.action
        assert len(row.expect) == len(KINDS), name
        for kind, expected in zip(KINDS, row.expect, strict=True):
            params.append(pytest.param(row, kind, expected, id=f"{name} | {kind}"))
    return params


# --- callers and data -----------------------------------------------------------------------


def make_caller(kind: str) -> User | None:
    """A user of ``kind`` with its grants (None for anonymous)."""
    if kind == "anonymous":
        return None
    name = f"{kind}-{uuid.uuid4().hex[:6]}"
    if kind == "superuser":
        return User.objects.create_superuser(name, password="pw")
    user = User.objects.create_user(name, password="pw", is_staff=kind == "staff")
    if kind == "read_grant":
        NamespaceGrant.objects.create(user=user, pattern=GRANTED, can_read=True, can_write=False)
    elif kind == "write_grant":
        NamespaceGrant.objects.create(user=user, pattern=GRANTED, can_read=True, can_write=True)
    elif kind == "wildcard_grant":
        group = Group.objects.create(name=f"eu-{name}")
        group.user_set.add(user)
        NamespaceGrant.objects.create(
            group=group, pattern=WILDCARD_GRANT, can_read=True, can_write=True
        )
    return user


@pytest.fixture(scope="module", autouse=True)
def ledger() -> Iterator[type[aggregates.Aggregate]]:
    """An aggregate class for GRANTED, so that its state endpoint has something to build,
    with a command served by the API's command endpoints."""

    class Ledger(aggregates.Aggregate):
        opened: int = 0

        class Meta:
            namespace = GRANTED

        @aggregates.command
        def open(self) -> None:
            self.record("Opened")

        @aggregates.apply("Opened")
        def _opened(self, event: Event) -> None:
            self.opened += 1

    commands.register(Ledger)
    yield Ledger
    commands.unregister(Ledger)
    aggregates._registry.pop(Ledger._meta.label, None)


@pytest.fixture
def actor() -> str:
    """A fresh actor with one event and a snapshot in each namespace, its data naming it."""
    actor_id = f"order-{uuid.uuid4().hex[:8]}"
    for label, namespace in NAMESPACES.items():
        mark = SECRET if label == "hidden" else label
        store = get_event_store(namespace)
        store.save_event(ev(actor_id, 1, "Opened", ns=mark))
        store.save_snapshot(ActorSnapshot(actor_id=actor_id, version=1, state={"ns": mark}))
    return actor_id


def history(actor_id: str) -> dict[str, tuple[int, Any]]:
    """Per namespace: the actor's version and its snapshot's state."""
    result = {}
    for label, namespace in NAMESPACES.items():
        store = get_event_store(namespace)
        snapshot = store.get_latest_snapshot(actor_id)
        result[label] = (store.get_latest_version(actor_id), snapshot and dict(snapshot.state))
    return result


def fill(template: str, **values: Any) -> str:
    return template.format(granted=GRANTED, hidden=HIDDEN, both=BOTH, bad="bad..name", **values)


# --- HTTP -----------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(("row", "kind", "expected"), cells(HTTP_TABLE))
def test_http(row: HttpRow, kind: str, expected: Http, actor: str) -> None:
    client = APIClient()
    user = make_caller(kind)
    if user is not None:
        # A real session login, so DRF's SessionAuthentication does the work.
        client.force_login(user)
    before = history(actor)
    fresh = f"{BASE}.eu.new-{uuid.uuid4().hex[:8]}"
    response = client.generic(
        row.method,
        fill(row.path, actor=actor, fresh=fresh),
        json.dumps(row.body) if row.body is not None else "",
        content_type="application/json",
    )
    text = response.content.decode()
    assert response.status_code == expected.status, text[:500]
    if expected.code is not None:
        assert response.json()["code"] == expected.code, text[:500]
    if expected.lists is not None:
        listed = {n["name"] for n in response.json()}
        assert {label for label, ns in NAMESPACES.items() if ns in listed} == expected.lists

    # Nothing is stored unless this cell is a successful write.
    after = history(actor)
    succeeded = 200 <= response.status_code < 300
    for label in NAMESPACES:
        assert (before[label] != after[label]) == (succeeded and row.writes == label), label
    if row.creates:
        created = JetStreamEventStore(fresh, runtime=get_runtime(), config=store_config())
        assert created.exists() == succeeded

    if kind != "superuser" and not (kind == "staff" and row.staff_sees_all):
        assert HIDDEN not in text and SECRET not in text


# --- WebSockets -----------------------------------------------------------------------------


def session_cookie(user: User) -> bytes:
    client = Client()
    client.force_login(user)
    name = settings.SESSION_COOKIE_NAME
    return f"{name}={client.cookies[name].value}".encode()


async def open_socket(user: User | None) -> tuple[WebsocketCommunicator, bool, Any]:
    """A socket through the test project's whole ASGI stack, as a browser opens it."""
    from tests.asgi import application

    headers = [(b"origin", b"http://testserver")]
    if user is not None:
        headers.append((b"cookie", await sync_to_async(session_cookie)(user)))
    communicator = WebsocketCommunicator(application, "/ws/aether/", headers=headers)
    connected, code = await communicator.connect()
    return communicator, connected, code


async def next_frame(communicator: WebsocketCommunicator) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await communicator.receive_from(10))
    return frame


async def save_in_both(actor_id: str, version: int) -> None:
    # HIDDEN first: by the time GRANTED's event arrives, a leaked one would be on its way.
    for label in ("hidden", "granted"):
        await get_event_store(NAMESPACES[label]).asave_event(ev(actor_id, version, "Opened"))


async def assert_deliveries(
    communicator: WebsocketCommunicator, actor_id: str, expected: frozenset[str]
) -> None:
    """The events of exactly the ``expected`` namespaces arrive, and nothing else."""
    seen: set[str] = set()
    while seen != expected:
        frame = await next_frame(communicator)
        assert frame["type"] == "event", frame
        label = LABELS.get(frame["namespace"])
        assert label in expected - seen, frame
        assert frame["event"]["actor_id"] == actor_id, frame
        seen.add(label)
    assert await communicator.receive_nothing(0.5)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("row", "kind", "expected"), cells(WS_TABLE))
async def test_websocket(row: WsRow, kind: str, expected: Ws, actor: str) -> None:
    user = await sync_to_async(make_caller)(kind)
    communicator, connected, code = await open_socket(user)
    try:
        if expected.reply == "refused":
            assert (connected, code) == (False, expected.code)
            return
        assert connected
        reply: dict[str, Any] = {"type": "accepted"}
        for frame in row.frames:
            filled = {k: fill(v) if isinstance(v, str) else v for k, v in frame.items()}
            await communicator.send_to(json.dumps(filled))
            reply = await next_frame(communicator)
        assert reply["type"] == expected.reply, reply
        if expected.code is not None:
            assert reply["code"] == expected.code, reply
        if row.frames:
            assert reply["id"] == "s"
        await save_in_both(actor, 2)
        await assert_deliveries(communicator, actor, expected.delivers)
    finally:
        await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_narrowing_holds_when_sockets_of_different_callers_share_a_pattern(
    actor: str,
) -> None:
    """Sockets following the same pattern from "new" may share one bus consumer in a
    process; each must still get only what its own user may read."""
    sockets = {}
    for kind in ("superuser", "read_grant", "wildcard_grant", "no_grant"):
        communicator, connected, _ = await open_socket(await sync_to_async(make_caller)(kind))
        assert connected
        await communicator.send_to(json.dumps(_subscribe(BOTH)))
        expected = "error" if kind == "no_grant" else "subscribed"
        assert (await next_frame(communicator))["type"] == expected
        sockets[kind] = communicator
    try:
        await save_in_both(actor, 2)
        await assert_deliveries(sockets["superuser"], actor, frozenset({"granted", "hidden"}))
        await assert_deliveries(sockets["read_grant"], actor, frozenset({"granted"}))
        await assert_deliveries(sockets["wildcard_grant"], actor, frozenset({"granted"}))
        await assert_deliveries(sockets["no_grant"], actor, frozenset())
    finally:
        for communicator in sockets.values():
            await communicator.disconnect()


# --- admin ----------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(("row", "kind", "expected"), cells(ADMIN_TABLE))
def test_admin(row: AdminRow, kind: str, expected: Page, actor: str) -> None:
    client = Client()
    user = make_caller(kind)
    if user is not None:
        client.force_login(user)
    bystander = User.objects.create_user(f"bystander-{uuid.uuid4().hex[:6]}")
    grant = NamespaceGrant.objects.create(user=bystander, pattern=GRANTED, can_read=True)
    values = {"actor": actor, "grant": grant.pk, "bystander": bystander.pk}
    body = {k: fill(v, **values) for k, v in (row.body or {}).items()}
    before, grants = history(actor), NamespaceGrant.objects.count()

    path = fill(row.path, **values)
    response = getattr(client, row.method.lower())(path, body)
    text = response.content.decode()
    assert response.status_code == expected.status, text[:500]
    if expected.redirect == "login":
        assert response["Location"].startswith("/admin/login/?next="), response["Location"]
    elif expected.redirect == "saved":
        assert response["Location"] == "/admin/aether_django/namespacegrant/"
    elif expected.redirect == "done":
        assert response["Location"] == "/admin/aether_django/projectioninspection/"
    if expected.lists is not None:
        linked = {label for label, ns in NAMESPACES.items() if f"/ns/{ns}/" in text}
        assert linked == expected.lists

    # No name of a namespace the caller may not read, and none of HIDDEN's data.
    for label, namespace in NAMESPACES.items():
        if label not in READABLE.get(kind, frozenset()):
            assert namespace not in text, label
    if kind != "superuser":
        assert SECRET not in text
    assert history(actor) == before  # the admin never changes event history
    assert (NamespaceGrant.objects.count() != grants) == (expected == SAVED)


# --- the tables cover everything ------------------------------------------------------------


def _methods(pattern: URLPattern) -> set[str]:
    """The HTTP methods a URL pattern's view handles; a function view counts as GET, the
    one method the operations views are called with."""
    view_class = getattr(pattern.callback, "view_class", None)
    if view_class is None:
        return {"GET"}
    return {
        m.upper()
        for m in view_class.http_method_names
        if m not in ("head", "options") and hasattr(view_class, m)
    }


def test_every_http_endpoint_and_method_is_in_the_table() -> None:
    from aether_django import urls as ops_urls
    from aether_django.api import urls as api_urls

    def endpoint_name(name: str) -> str:
        # A registered command has a route of its own (for the schema), served by the
        # general command route's view: the rows of that route cover them all.
        prefix, _, rest = name.partition(":")
        return f"{prefix}:aggregate-command" if rest.startswith("command-") else name

    covered = {
        (endpoint_name(resolve(fill(row.path, actor="a", fresh="f")).view_name), row.method)
        for row in HTTP_TABLE
    }
    for module in (api_urls, ops_urls):
        patterns: list[Any] = list(module.urlpatterns)
        while patterns:
            pattern = patterns.pop(0)
            if isinstance(pattern, URLResolver):  # aggregates/: the command router's URLs
                patterns += pattern.url_patterns
                continue
            assert isinstance(pattern, URLPattern) and pattern.name, pattern
            for method in _methods(pattern):
                endpoint = (endpoint_name(f"{module.app_name}:{pattern.name}"), method)
                assert endpoint in covered, f"{endpoint} is missing from HTTP_TABLE"


def test_every_aether_admin_model_and_page_is_in_the_table() -> None:
    covered = {resolve(fill(row.path, actor="a", grant=1)).view_name for row in ADMIN_TABLE}
    registered = {
        model: model_admin
        for model, model_admin in admin.site._registry.items()
        if model._meta.app_label == "aether_django"
    }
    assert registered
    for model, model_admin in registered.items():
        names = {p.name for p in model_admin.get_urls() if isinstance(p, URLPattern) and p.name}
        assert names, model
        missing = {f"admin:{name}" for name in names} - covered
        assert not missing, f"{model.__name__}: {sorted(missing)} are missing from ADMIN_TABLE"


def test_every_websocket_route_is_the_consumer_the_table_drives() -> None:
    from aether_django.consumers import EventsConsumer
    from aether_django.routing import websocket_urlpatterns

    routes = {(str(p.pattern), p.callback.consumer_class) for p in websocket_urlpatterns}
    assert routes == {("ws/aether/", EventsConsumer)}


# --- isolation in storage -------------------------------------------------------------------

PARENT = f"{BASE}-iso"
CHILD = f"{PARENT}.eu"  # its subjects start with the subject of PARENT's actor "eu"


@pytest.fixture(scope="module")
def family() -> tuple[JetStreamEventStore, JetStreamEventStore]:
    parent, child = get_event_store(PARENT), get_event_store(CHILD)
    assert isinstance(parent, JetStreamEventStore) and isinstance(child, JetStreamEventStore)
    for actor_id in ("x", "child-only"):
        child.save_event(ev(actor_id, 1, ns="child"))
        child.save_snapshot(ActorSnapshot(actor_id=actor_id, version=1, state={"ns": "child"}))
    return parent, child


async def _stream(aether_nats_url: str, store: JetStreamEventStore) -> tuple[list[str], int]:
    nc = await nats.connect(aether_nats_url)
    try:
        info = await nc.jetstream().stream_info(store.stream_name)
        return list(info.config.subjects or ()), info.state.messages
    finally:
        await nc.close()


async def test_a_store_reads_nothing_of_another_namespace(family: Any) -> None:
    parent, child = family
    # "child-only" exists only in CHILD: PARENT's store finds no event, version or snapshot.
    assert await parent.aget_events("child-only") == []
    assert await parent.aget_latest_version("child-only") == 0
    assert await parent.aget_latest_snapshot("child-only") is None
    assert "child-only" not in await parent.aget_actor_ids()
    assert [e.data["ns"] for e in await child.aget_events("child-only")] == ["child"]


@pytest.mark.parametrize("actor_id", ["eu", "eu.x", "eu.*", "eu.>", "*", ">", "eu x"])
async def test_saving_through_one_store_never_reaches_another_stream(
    family: Any, aether_nats_url: str, actor_id: str
) -> None:
    """Actor ids shaped like CHILD's subjects, or like wildcards, stay in PARENT's stream:
    ids that are not plain tokens are encoded into one subject token."""
    parent, child = family
    child_subjects, child_messages = await _stream(aether_nats_url, child)
    before = await parent.aget_latest_version(actor_id)
    stored = await parent.asave_event(ev(actor_id, before + 1, ns="parent"))

    assert [e.id for e in await parent.aget_events(actor_id, before + 1)] == [stored.id]
    # One subject token after PARENT's prefix, whatever the id: never a CHILD subject.
    prefix, token = parent.subject_for(actor_id).rsplit(".", 1)
    subjects = parent.config.subject_prefix
    assert prefix == f"{subjects}.{PARENT}" and "*" not in token and ">" not in token
    assert await _stream(aether_nats_url, child) == (child_subjects, child_messages)
    assert child_subjects == [f"{subjects}.{CHILD}.*"]
    assert (await _stream(aether_nats_url, parent))[0] == [f"{subjects}.{PARENT}.*"]
    assert [e.data["ns"] for e in await child.aget_events("x")] == ["child"]
    assert sorted(await child.aget_actor_ids()) == ["child-only", "x"]
    # A snapshot of the same actor id through PARENT leaves CHILD's snapshot alone.
    await parent.asave_snapshot(ActorSnapshot(actor_id="x", version=9, state={"ns": "parent"}))
    snapshot = await child.aget_latest_snapshot("x")
    assert snapshot is not None and dict(snapshot.state) == {"ns": "child"}
