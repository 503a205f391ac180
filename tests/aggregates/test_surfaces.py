"""Aggregates work the same from sync views, async views, a Celery worker and the shell."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.test import AsyncClient, Client

from .domain import Order

ROOT = Path(__file__).resolve().parents[2]


def new_id() -> str:
    return f"order-{uuid.uuid4().hex[:10]}"


def test_from_a_sync_view():
    actor = new_id()
    response = Client().get(f"/orders/{actor}/place/", {"customer": "ann"})
    assert response.json() == {"status": "placed", "version": 1}
    assert Order.objects.get(actor).customer == "ann"


async def test_from_an_async_view():
    actor = new_id()
    order = await Order.objects.acreate(actor)
    order.place("ann")
    await order.asave()
    response = await AsyncClient().get(f"/orders/{actor}/add-line/", {"sku": "pen"})
    assert response.json() == {"total": 10, "version": 2}
    assert (await Order.objects.aget(actor)).lines[0]["sku"] == "pen"


def test_from_the_shell():
    actor = new_id()
    code = (
        "from tests.aggregates.domain import Order\n"
        f"o = Order.objects.update({actor!r}, lambda o: o.place('shell'), create=True)\n"
        "print(o.status, o.version)\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "django", "shell", "--settings=tests.settings", "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].split() == ["placed", "1"]
    assert Order.objects.get(actor).customer == "shell"


@pytest.mark.slow
def test_from_a_celery_worker(tmp_path, monkeypatch):
    monkeypatch.setenv("AETHER_TEST_BROKER_DIR", str(tmp_path))
    import importlib

    import tests.celery_app as celery_module

    celery_module = importlib.reload(celery_module)
    actor = new_id()
    order = Order.objects.create(actor)
    order.place("ann")
    order.save()

    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.celery_app",
            "worker",
            "--pool=solo",
            "--loglevel=WARNING",
            "--without-heartbeat",
            "--without-mingle",
            "--without-gossip",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        results = [celery_module.add_line.delay(actor, f"sku-{i}") for i in range(3)]
        versions = sorted(r.get(timeout=60) for r in results)
    finally:
        worker.terminate()
        output, _ = worker.communicate(timeout=30)
    assert versions == [2, 3, 4], output
    loaded = Order.objects.get(actor)
    assert sorted(line["sku"] for line in loaded.lines) == ["sku-0", "sku-1", "sku-2"]
