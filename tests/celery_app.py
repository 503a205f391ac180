"""A Celery app for tests: a real worker process and a real broker on the file system.

The broker is kombu's filesystem transport in a folder the test chooses
(``AETHER_TEST_BROKER_DIR``), so no broker server is needed; results go to a
file backend in the same folder.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

_folder = os.environ.get("AETHER_TEST_BROKER_DIR", "/tmp/aether-test-broker")
for sub in ("queue", "processed", "results", "control"):
    os.makedirs(os.path.join(_folder, sub), exist_ok=True)

app = Celery("tests")
app.conf.update(
    broker_url="filesystem://",
    broker_transport_options={
        "data_folder_in": os.path.join(_folder, "queue"),
        "data_folder_out": os.path.join(_folder, "queue"),
        "processed_folder": os.path.join(_folder, "processed"),
        # Without this kombu writes its control exchange files into the working directory.
        "control_folder": os.path.join(_folder, "control"),
        "polling_interval": 0.1,
    },
    result_backend=f"file://{os.path.join(_folder, 'results')}",
    task_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
)


@app.task(name="tests.add_line")
def add_line(actor_id: str, sku: str) -> int:
    """Run an aggregate command inside a Celery worker; return the new version."""
    import django

    django.setup()
    from tests.aggregates.domain import Order

    order = Order.objects.update(actor_id, lambda o: o.add_line(sku, 1, 10), retries=10)
    return order.version
