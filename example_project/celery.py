"""The example project's Celery app (``celery -A example_project.celery worker``).

Configured from the ``CELERY_*`` Django settings; tasks are found in the
installed apps' ``tasks`` modules. The last two lines make every worker a
cluster node (heartbeats, leader election, shard rebalancing, shard hosting).
"""

import os

import django
from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
django.setup()

app = Celery("example_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

from aether_django.tasks import setup_cluster  # noqa: E402

setup_cluster(app)
