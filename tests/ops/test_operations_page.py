"""docs/operations.md stays true to the code: its list of loggers (its metric table and
command synopses are checked in tests/docs)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = (ROOT / "docs" / "operations.md").read_text()


def table_rows(heading: str) -> list[list[str]]:
    """The body rows of the first table after ``heading``, as lists of cell texts."""
    section = OPERATIONS.split(heading, 1)[1]
    rows = []
    for line in section.splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # past the header and its separator


def test_the_logger_list_names_every_module_that_logs():
    logging_modules = set()
    for path in (ROOT / "aether_django").rglob("*.py"):
        source = path.read_text()
        # A module that calls its logger above debug level is one an operator may see.
        if re.search(r"\blogger\.(info|warning|error|exception)\(", source):
            # The logger's name: the module's, unless it names itself (sharding's
            # modules keep the names they had in cluster/).
            named = re.search(r"\blogger = logging\.getLogger\(\"([\w.]+)\"\)", source)
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]  # a package's logger has the package's name
            logging_modules.add(named.group(1) if named else ".".join(parts))
    documented = set()
    for first_cell, *_ in table_rows("The loggers, all under"):
        documented |= set(re.findall(r"`(aether_django[\w.]*)`", first_cell))
    assert documented == logging_modules
