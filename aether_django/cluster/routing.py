"""Deprecated: moved to :mod:`aether_django.sharding.routing`.

Every name is handed on from there with a DeprecationWarning; import it from
``aether_django.sharding.routing`` instead. Nothing is imported until a name is asked
for, so importing the cluster primitives never pulls in the sharding layer.
"""

from __future__ import annotations

import warnings
from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # A plain import, so the import linter sees this one upward edge (it is listed,
    # with this reason, in pyproject.toml's ignore_imports).
    from ..sharding import routing as moved

    if not hasattr(moved, name):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"{__name__}.{name} moved to {moved.__name__}.{name}", DeprecationWarning, stacklevel=2
    )
    return getattr(moved, name)
