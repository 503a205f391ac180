"""One Idempotency-Key sent from several API processes at once: the command is applied once.

Each child process is a Django process of the test project that handles the request
with the API's own view (the URLconf resolved, DRF's request handling, the serializer,
the fingerprint, run_command running the command locally), as a web server process
would, for the same actor and key, all starting at the same moment. Every process must
answer 200 with the same body, and the actor must hold the command's event once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ..aggregates.domain import Order

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 6

CHILD = """
import json, os, sys, time
import django
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
django.setup()
from django.contrib.auth.models import User
from django.urls import resolve
from rest_framework.test import APIRequestFactory, force_authenticate

actor, key, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
path = f"/api/aether/aggregates/test-orders/{actor}/commands/add_line/"
body = {"sku": "pen", "quantity": 2, "price_cents": 150}
# A superuser needs no grant, so no database row: the child's database is its own.
user = User(username="root", is_superuser=True, is_staff=True)
request = APIRequestFactory().post(path, body, format="json", HTTP_IDEMPOTENCY_KEY=key)
force_authenticate(request, user=user)
match = resolve(path)
time.sleep(max(0.0, start - time.time()))
response = match.func(request, *match.args, **match.kwargs)
response.render()
print(json.dumps({"status": response.status_code, "body": json.loads(response.content),
                  "replayed": response.get("Idempotent-Replayed")}))
"""


def test_one_key_from_several_processes_at_once_applies_the_command_once():
    actor = f"order-{uuid.uuid4().hex[:8]}"
    Order.objects.update(actor, lambda o: o.place("ann"), create=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # AETHER_NATS_URL: the session's server
    # Time for every process to import Django and connect before the common start.
    start = time.time() + 8
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, actor, "same-key", str(start)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    answers = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err[-2000:]
        answers.append(json.loads(out.strip().splitlines()[-1]))
    assert [a["status"] for a in answers] == [200] * PROCESSES
    assert all(a["body"] == answers[0]["body"] for a in answers)
    assert answers[0]["body"]["version"] == 2
    # One process ran it; every other found it applied (the header says so).
    assert sorted(a["replayed"] or "" for a in answers) == [""] + ["true"] * (PROCESSES - 1)
    events = Order.get_store().get_events(actor)
    assert [e.command_id for e in events].count("same-key") == 1 and len(events) == 2
