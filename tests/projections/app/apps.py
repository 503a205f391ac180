"""The projection tests' app."""

from django.apps import AppConfig


class ProjectionTestsConfig(AppConfig):
    name = "tests.projections.app"
    label = "projection_tests"
    default_auto_field = "django.db.models.BigAutoField"
