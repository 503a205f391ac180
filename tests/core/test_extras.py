"""Without its extras, the app still loads: a plain install has Django, DRF and nats-py
(and prometheus-client and tqdm).

Each check runs a fresh interpreter in which the extras' packages cannot be imported
(a ``sys.meta_path`` finder refuses them, as if they were not installed).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aether_django.extras import EXTRAS

ROOT = Path(__file__).resolve().parents[2]

#: Every package an extra brings, refused in the child interpreter.
BLOCKED = sorted({name for names in EXTRAS.values() for name in names})

_PRELUDE = f"""
import importlib.abc, json, sys

BLOCKED = {BLOCKED!r}


class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{fullname!r}}", name=fullname)
        return None


sys.meta_path.insert(0, Refuse())
sys.path.insert(0, {str(ROOT)!r})

from django.conf import settings

settings.configure(
    SECRET_KEY="tests-only-not-secret",
    INSTALLED_APPS=[
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
        "django.contrib.messages",
        "django.contrib.admin",
        "rest_framework",
        "aether_django",
    ],
    DATABASES={{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}}},
    ROOT_URLCONF="extras_urls",
    TEMPLATES=[{{
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {{"context_processors": [
            "django.contrib.auth.context_processors.auth",
            "django.contrib.messages.context_processors.messages",
            "django.template.context_processors.request",
        ]}},
    }}],
    MIDDLEWARE=[
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
    ],
)
"""

_URLS = """
from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("aether/", include("aether_django.urls")),
    path("api/aether/", include("aether_django.api.urls")),
]
"""


def _run(tmp_path: Path, code: str) -> dict[str, object]:
    (tmp_path / "extras_urls.py").write_text(_URLS)
    result = subprocess.run(
        [sys.executable, "-c", _PRELUDE + code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


def test_the_app_its_admin_and_the_api_load_without_any_extra(tmp_path: Path) -> None:
    answer = _run(
        tmp_path,
        """
import django
django.setup()

from django.core.management import call_command
from django.urls import NoReverseMatch, get_resolver, reverse

import aether_django.admin, aether_django.models, aether_django.api.views

get_resolver().url_patterns  # loads every URLconf
call_command("check")
try:
    reverse("aether_api:schema")
    schema = "mounted"
except NoReverseMatch:
    schema = "absent"
loaded = sorted({name.split(".")[0] for name in sys.modules} & set(BLOCKED))
print(json.dumps({"namespaces": reverse("aether_api:namespaces"), "schema": schema,
                  "loaded": loaded}))
""",
    )
    assert answer == {"namespaces": "/api/aether/namespaces/", "schema": "absent", "loaded": []}


@pytest.mark.parametrize(
    ("module", "message"),
    [
        ("aether_django.consumers", "aether_django.consumers needs Channels"),
        ("aether_django.routing", "aether_django.consumers needs Channels"),
        ("aether_django.tasks", "aether_django.tasks needs Celery"),
        ("aether_django.beat", "aether_django.beat needs Celery"),
        ("aether_django.api.schema", "aether_django.api.schema needs drf-spectacular"),
    ],
)
def test_a_module_that_needs_a_missing_extra_names_it(
    tmp_path: Path, module: str, message: str
) -> None:
    answer = _run(
        tmp_path,
        f"""
import django
django.setup()

from aether_django.extras import MissingExtraError
try:
    import {module}
except MissingExtraError as exc:
    print(json.dumps({{"error": str(exc)}}))
""",
    )
    extra = {"Channels": "ws", "Celery": "celery", "drf-spectacular": "api-schema"}[
        message.rsplit(" ", 1)[1]
    ]
    assert answer == {"error": f"{message}: pip install 'aether-django[{extra}]'"}


def test_the_extras_match_what_pyproject_declares() -> None:
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {extra.removeprefix("api-") for extra in declared["optional-dependencies"]}
    assert {"ws", "celery", "schema", "testing", "all", "test"} <= names
    # A plain install: Django, DRF and nats-py, the two small pure-Python libraries of
    # the metrics and the progress bars, and cryptography for personal data
    # (docs/architecture.md, "Optional dependencies"); nothing an extra brings.
    plain = {dep.split(">")[0].split("=")[0].split("[")[0] for dep in declared["dependencies"]}
    assert plain == {
        "Django",
        "djangorestframework",
        "nats-py",
        "prometheus-client",
        "tqdm",
        "cryptography",
    }
