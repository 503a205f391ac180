"""What the browser tests need: the example project's URLs and templates on top of the
test settings (as tests/example/conftest.py), served by a real uvicorn."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.test import modify_settings, override_settings

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]


@pytest.fixture(autouse=True)
def example_project_settings() -> Iterator[None]:
    """Serve example_project's URLs and templates on top of the test settings."""
    with (
        override_settings(ROOT_URLCONF="example_project.urls", TEMPLATES=TEMPLATES),
        modify_settings(
            INSTALLED_APPS={"append": ["django.contrib.admin", "example_project.shop"]}
        ),
    ):
        yield
