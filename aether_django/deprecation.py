"""Old import paths of names that moved: found where they were, with a DeprecationWarning.

A module whose names moved keeps a module-level ``__getattr__`` that calls
:func:`moved_attribute`. Python calls that ``__getattr__`` only for names the module
does not define, so the new home is imported on first use of an old name, not when
the old module is imported (which keeps the layers' import edges out of ordinary
imports).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection
from types import ModuleType
from typing import Any


def moved_attribute(
    old: str,
    name: str,
    new_home: Callable[[], ModuleType],
    names: Collection[str] | None = None,
) -> Any:
    """``name`` asked of the module ``old``, taken from ``new_home()`` with a warning.

    ``names`` lists the names that moved; without it, every public name of the new
    home counts. Any other name is an AttributeError, as it would be without the
    ``__getattr__``. The warning names the caller's line: the caller's access calls
    the module's ``__getattr__``, which calls this, hence ``stacklevel=3``.
    """
    missing = AttributeError(f"module {old!r} has no attribute {name!r}")
    if name.startswith("__") if names is None else name not in names:
        raise missing
    moved = new_home()
    if not hasattr(moved, name):
        raise missing
    warnings.warn(
        f"{old}.{name} moved to {moved.__name__}.{name}", DeprecationWarning, stacklevel=3
    )
    return getattr(moved, name)
