"""The documented cache bound across processes: after forget() in one process, another
with a warm key cache stops decrypting within PRIVACY_KEY_CACHE_SECONDS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aether_django import privacy
from aether_django.privacy import FORGOTTEN

from .conftest import new_id
from .domain import Order

ROOT = Path(__file__).resolve().parents[2]
CACHE_SECONDS = 3.0


@pytest.mark.slow
def test_another_process_stops_decrypting_within_the_cache_bound(aether_nats_url: str) -> None:
    subject, order = new_id("customer"), Order(new_id("order"))
    order.place(subject, "Dora Two-Process", "dora@example.org", 1)
    order.save()

    env = {**os.environ, "AETHER_NATS_URL": aether_nats_url, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.privacy.child", order.actor_id, str(CACHE_SECONDS)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert json.loads(child.stdout.readline()) == {"warm": "dora@example.org"}
        privacy.forget(subject)
        child.stdin.write("go\n")
        child.stdin.flush()
        report = json.loads(child.stdout.readline())
    finally:
        child.kill()
        child.wait(10)
    # Its cache was warm: right after the forget it still read the value (the bound is
    # a real bound, not a cache that never held anything) ...
    assert report["first"] == "dora@example.org"
    # ... and within the bound (plus the time of one load) it no longer could.
    assert report["last"] == FORGOTTEN
    assert report["elapsed"] <= CACHE_SECONDS + 1.0
