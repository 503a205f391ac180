"""The example project's Celery app (``celery -A example_project.celery worker``).

Configured from the ``CELERY_*`` Django settings; tasks are found in the
installed apps' ``tasks`` modules.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

app = Celery("example_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
