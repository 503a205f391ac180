"""What the browser tests need: the example project's URLs and templates on top of the
test settings, exactly as for tests/example (the fixture is shared from there)."""

from tests.example.conftest import example_project_settings

__all__ = ["example_project_settings"]
