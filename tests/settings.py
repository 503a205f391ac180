"""Django settings for the test suite."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent
SECRET_KEY = "tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "aether_django",
]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "tests.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# The URL comes from the session's nats_server fixture (AETHER_NATS_URL). Cluster
# tests run node processes with a bucket of their own and the seed's 100 shards.
AETHER = {
    "TIMEOUT": 5.0,
    "NUM_SHARDS": int(os.environ.get("AETHER_TEST_NUM_SHARDS", "100")),
    "CLUSTER_BUCKET": os.environ.get("AETHER_TEST_CLUSTER_BUCKET", "aether_cluster"),
}
