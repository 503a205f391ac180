"""Settings of the example project (development defaults; see docker-compose.yml for production).

The NATS server comes from the ``AETHER_NATS_URL`` environment variable, which
``python3 dev.py demo`` sets to the nats-server it starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
# Everything the project writes at run time (database, NATS store) lives here.
VAR_DIR = BASE_DIR / "var"
# SQLite cannot create the directory of its database file itself.
VAR_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-project-insecure-development-key")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")

INSTALLED_APPS = [
    # daphne first: its runserver (which replaces the one of django.contrib.staticfiles)
    # serves the ASGI application, WebSockets included, so `manage.py runserver` can
    # show the live page too. The demo serves the project with uvicorn.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    # The filters of the shop's order API (/api/shop/orders/), and their form in
    # DRF's browsable API.
    "django_filters",
    "drf_spectacular",
    "channels",
    "aether_django",
    "example_project.shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"
ASGI_APPLICATION = "example_project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES: dict[str, dict[str, Any]] = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        # AETHER_DEMO_DB points the demo at another SQLite file (a fresh one is
        # migrated on start), so a second demo need not share var/db.sqlite3.
        "NAME": os.environ.get("AETHER_DEMO_DB") or VAR_DIR / "db.sqlite3",
        # The projection's node writes the read model while the web server reads it:
        # WAL mode lets reads go on during its transactions, and the timeout lets a
        # writer wait for another instead of failing at once (docs/projections.md).
        "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL;", "timeout": 20},
    }
}
if os.environ.get("POSTGRES_HOST"):
    # The production shape (docker-compose.yml) keeps Django's own tables in Postgres.
    DATABASES["default"] = {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ["POSTGRES_HOST"],
        "PORT": os.environ.get("POSTGRES_PORT", ""),
        "NAME": os.environ.get("POSTGRES_DB", "aether"),
        "USER": os.environ.get("POSTGRES_USER", "aether"),
        "PASSWORD": os.environ.get("POSTGRES_PASSWORD", ""),
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

LOGIN_URL = "admin:login"

# aether_django at its defaults: one JetStream stream per namespace on the server
# named by AETHER_NATS_URL. See docs/settings.md for every key.
# The NATS URL comes from AETHER_NATS_URL (the demo, docker-compose); the number of
# replicas of each stream from AETHER_REPLICAS (3 on docker-compose's 3-server cluster).
# The demo's server and docker-compose's servers sync every write to disk before
# acknowledging it (sync_interval: always); NATS_SYNC_ALWAYS says so, for the
# system check aether_django.W301.
AETHER: dict[str, Any] = {
    "REPLICAS": int(os.environ.get("AETHER_REPLICAS", "1")),
    "NATS_SYNC_ALWAYS": True,
    # The demo's Celery worker is a cluster node (example_project/celery.py), and runs
    # the shop's OrderSummaryProjection (shop/projections.py) that feeds the orders
    # page and /api/shop/orders/. True is the default; said here because the read
    # model depends on it: with it off, run `manage.py aether_projections run`.
    "PROJECTIONS_IN_NODES": True,
}
# NATS credentials, from AETHER_NATS_USER and AETHER_NATS_PASSWORD: docker-compose gives
# the web app and the workers users of their own (docs/security.md).
if os.environ.get("AETHER_NATS_USER"):
    AETHER["NATS_OPTIONS"] = {
        "user": os.environ["AETHER_NATS_USER"],
        "password": os.environ.get("AETHER_NATS_PASSWORD", ""),
    }

# The API (``/api/aether/``): session login (the admin's) or HTTP basic auth; every
# caller must be authenticated and is limited by NamespaceGrants (see docs/api.md).
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.BasicAuthentication",
    ],
}
SPECTACULAR_SETTINGS = {"TITLE": "aether_django API", "VERSION": "0.1"}

# Celery (example_project/celery.py): the demo passes the broker it starts in CELERY_BROKER_URL.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "memory://")
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND") or None
