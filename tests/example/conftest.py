"""What the example project's pages need on top of the test settings."""

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
    # The admin app too: the page links to the admin, and reversing that URL needs it.
    with (
        override_settings(ROOT_URLCONF="example_project.urls", TEMPLATES=TEMPLATES),
        modify_settings(
            INSTALLED_APPS={"append": ["django.contrib.admin", "example_project.shop"]}
        ),
    ):
        yield


# Runners of projections in threads (stopped after each test), as the projection tests
# start them: the orders list tests run the shop's OrderSummaryProjection.
from tests.projections.conftest import runners  # noqa: E402

__all__ = ["example_project_settings", "runners"]
