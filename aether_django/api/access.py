"""Deprecated location of :mod:`aether_django.access`.

The grant rules serve every surface (API, WebSocket consumer, admin), so they live at
the top level now. Importing a name from here still works and warns.
"""

from __future__ import annotations

import warnings
from typing import Any

from .. import access as _access

_MOVED = ("NamespaceAccess", "access_for", "Verdict")


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        warnings.warn(
            f"aether_django.api.access.{name} moved to aether_django.access.{name}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(_access, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
