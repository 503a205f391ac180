"""The demo's seed (example_project.demo_seed) and the orders list: orders seeded before
the projection runs are listed once it does, as in the demo, whose worker node may
start the projection before or after the seed; the seed's dispatch of order-1's
shipment, once the process managers run, ships the order.

Real processes on the example project's own settings: ``manage.py migrate`` on a fresh
SQLite file, the seed, then ``manage.py aether_projections run`` (what the demo's worker
node does with ``AETHER["PROJECTIONS_IN_NODES"]``), on a nats-server of the test's own
(the seed seeds only an empty orders namespace).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aether_django.testing.processes import start_process, stop_process

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SEEDED = {
    ("order-1", "Ann", "shipped", 2, 3097, 5),  # by ShipDispatchedOrders, after the dispatch
    ("order-2", "Bob", "paid", 1, 899, 3),
    ("order-3", "Cleo", "placed", 2, 4899, 3),
    ("order-4", "Dan", "cancelled", 1, 9998, 3),
}


DISPATCH = """
import django
django.setup()
from example_project import demo_seed
print(demo_seed.dispatch(["order-1"], timeout=60))
"""


def summaries(db: Path) -> set[tuple[object, ...]]:
    with sqlite3.connect(db, timeout=20) as conn:
        return set(
            conn.execute(
                "SELECT order_id, customer, status, line_count, total_cents, version "
                "FROM shop_ordersummary"
            ).fetchall()
        )


def test_seeded_orders_are_listed_once_the_projection_runs(
    tmp_path: Path, aether_nats_server_factory
) -> None:
    server = aether_nats_server_factory()
    db = tmp_path / "db.sqlite3"
    env = {
        **os.environ,
        "AETHER_NATS_URL": server.url,
        "AETHER_DEMO_DB": str(db),
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("AETHER_TEST_PG_DATABASE", None)

    def run(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    run("manage.py", "migrate", "--no-input", "--verbosity", "0")
    # No projection runs yet: the seed says the list does not show its orders.
    out = run("-c", "from example_project import demo_seed as s; s.LIST_WAIT = 0.5; s.main()")
    assert "Seeded the orders namespace with order-1, order-2, order-3, order-4." in out
    assert "The orders list does not show them yet" in out
    assert "aether_projections run" in out
    # Nor has StartShipments started order-1's shipment: not dispatched.
    assert "The shipment of order-1 is not started yet" in out
    assert summaries(db) == set()

    log = tmp_path / "runner.log"
    # Every projection of the shop: the list's, and the two process managers.
    runner = start_process(
        [sys.executable, "manage.py", "aether_projections", "run"],
        env=env,
        cwd=ROOT,
        log=log,
    )
    try:
        # What the seed does when the process managers run: StartShipments starts the
        # shipment of order-1 (paid), the seed dispatches it, ShipDispatchedOrders ships
        # the order.
        out = run("-c", DISPATCH)
        assert "Dispatched the shipment of order-1; shop.ship-dispatched-orders ships" in out
        deadline = time.monotonic() + 60
        while summaries(db) != SEEDED:
            assert runner.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"{summaries(db)}\n{log.read_text()}"
            time.sleep(0.2)
        # A seed after the projection started: it is listed as it is saved; the seed
        # of a namespace with orders does nothing (and waits for nothing).
        out = run("-m", "example_project.demo_seed")
        assert "The orders namespace has orders already; not seeding." in out
    finally:
        stop_process(runner, timeout=30)
    assert runner.returncode == 0, log.read_text()
