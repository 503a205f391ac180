"""Deprecated: ``send``, ``ShardHost`` and the rest of this module are in
:mod:`aether_django.sharding.routing` now, and found here with a DeprecationWarning.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from ..deprecation import moved_attribute


def _new_home() -> ModuleType:
    # A plain import, so the import linter sees this one upward edge (it is listed,
    # with this reason, in pyproject.toml's ignore_imports).
    from ..sharding import routing

    return routing


def __getattr__(name: str) -> Any:
    return moved_attribute(__name__, name, _new_home)
