"""Deprecated location of :mod:`aether_django.access`.

The grant rules serve every surface (API, WebSocket consumer, admin), so they live at
the top level now. Importing a name from here still works and warns.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from .. import access as _access
from ..deprecation import moved_attribute

_MOVED = ("NamespaceAccess", "access_for", "Verdict")


def _new_home() -> ModuleType:
    return _access


def __getattr__(name: str) -> Any:
    return moved_attribute(__name__, name, _new_home, _MOVED)
