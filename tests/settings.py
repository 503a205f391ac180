"""Django settings for the test suite."""

import json
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
    "django.contrib.messages",
    "django.contrib.admin",
    "rest_framework",
    "drf_spectacular",
    "aether_django",
    # Read models and projections of tests/projections.
    "tests.projections.app",
    # The example project's app: its read model (OrderSummary) needs a table in the
    # test database, which is made before any test (tests/example adds its URLs).
    "example_project.shop",
]
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.BasicAuthentication",
    ],
}
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "tests.urls"
DATABASES = {
    # The tests' own database is a SQLite file in WAL mode with a busy timeout, made
    # per session by tests/conftest.py (use_sqlite_file). The in-memory NAME here is
    # what a test's child process gets unless it is handed a file.
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
    # A real PostgreSQL for the tests that ask for it with
    # @pytest.mark.django_db(databases=["default", "pg"]) and use .using("pg").
    # tests/conftest.py points it at the session's aether_postgres server only when
    # such a test is collected; until then HOST names no server, so nothing here can
    # reach a PostgreSQL the suite did not start (such as a system one on 5432).
    "pg": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "aether_tests",
        "HOST": "/nonexistent/aether-postgres-not-started",
    },
}
# A test's child process (a runner, a node) uses the test's "pg" database, which the
# parent names here once its server runs.
if os.environ.get("AETHER_TEST_PG_DATABASE"):
    DATABASES["pg"] = json.loads(os.environ["AETHER_TEST_PG_DATABASE"])
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# The URL comes from the session's aether_nats_server fixture (AETHER_NATS_URL). Cluster
# tests run node processes with a bucket of their own and the seed's 100 shards.
AETHER = {
    "TIMEOUT": 5.0,
    "NUM_SHARDS": int(os.environ.get("AETHER_TEST_NUM_SHARDS", "100")),
    # The node processes of the cluster tests have no tables for the test projections
    # (an in-memory database of their own): only the placement tests' nodes run them
    # (tests/projections/nodeproc.py turns this on).
    "PROJECTIONS_IN_NODES": False,
    "CLUSTER_BUCKET": os.environ.get("AETHER_TEST_CLUSTER_BUCKET", "aether_cluster"),
    # The master key of the personal data tests (tests/privacy): base64 of 32 bytes,
    # public on purpose (never use a key from a repository).
    "PRIVACY_MASTER_KEY": "dGVzdHMtb25seS1tYXN0ZXIta2V5LW5vdC1zZWNyZXQ=",
}
# A server process whose clients are all one user (the soak) lifts the per-user
# WebSocket limits with AETHER_TEST_WS_PER_USER.
if os.environ.get("AETHER_TEST_WS_PER_USER"):
    AETHER["WS_MAX_SOCKETS_PER_USER"] = int(os.environ["AETHER_TEST_WS_PER_USER"])
    AETHER["WS_MAX_SUBSCRIPTIONS_PER_USER"] = int(os.environ["AETHER_TEST_WS_PER_USER"])
# The test servers keep their store in a temporary directory and sync it at
# JetStream's default interval (aether_django.testing.NatsServer says why), so
# the warning for production with one replica on such a server does not apply.
SILENCED_SYSTEM_CHECKS = ["aether_django.W301"]
# Tests create many users; the default hasher is slow on purpose.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
