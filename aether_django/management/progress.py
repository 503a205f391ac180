"""Progress bars (``tqdm``) for the long management commands.

A bar shows the count, the rate and the time left, on standard error, when a person
watches: standard error is a terminal and ``--verbosity`` is not 0. Off a terminal
(a pipe, a log file, ``call_command`` into a buffer) it draws nothing, since a log
would fill with carriage returns; ``--progress`` draws it anyway, ``--no-progress``
never.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

from django.core.management.base import BaseCommand, CommandParser, OutputWrapper
from tqdm import tqdm

__all__ = ["ProgressBar", "add_progress_arguments"]

T = TypeVar("T")


def add_progress_arguments(parser: CommandParser) -> None:
    """``--progress`` and ``--no-progress``, which override the terminal test."""
    bar = parser.add_mutually_exclusive_group()
    bar.add_argument(
        "--progress", action="store_true", help="draw the progress bar even off a terminal"
    )
    bar.add_argument("--no-progress", action="store_true", help="no progress bar")


def _plain(text: str) -> str:
    # A command's stderr is styled as errors (red) on a terminal; the bar is no error.
    return text


class _Stream:
    """A command's stderr as the file tqdm writes to: as written, with no newline added
    (``OutputWrapper.write`` ends every write with one) and no error style."""

    def __init__(self, out: OutputWrapper) -> None:
        self.out = out

    def write(self, text: str) -> None:
        self.out.write(text, style_func=_plain, ending="")

    def flush(self) -> None:
        self.out.flush()

    def fileno(self) -> int:
        # tqdm asks the terminal for its width through the file descriptor.
        return int(self.out.fileno())


class ProgressBar(Generic[T]):
    """A bar over ``items`` for ``command``, drawn or not as the module docstring says.

    Iterate over it as over ``items``; print what goes to standard output meanwhile with
    :meth:`echo`, which takes the bar off the line first and draws it again after.
    """

    def __init__(
        self, command: BaseCommand, items: Iterable[T], total: int, unit: str, **options: Any
    ) -> None:
        self.command = command
        if options.get("progress"):
            shown = True
        elif options.get("no_progress") or int(options.get("verbosity", 1)) == 0:
            shown = False
        else:
            shown = command.stderr.isatty()
        self.bar = tqdm(
            items,
            total=total,
            unit=unit,
            file=_Stream(command.stderr),
            disable=not shown,
            dynamic_ncols=shown,
            # Redraw at most ten times a second: a fast loop must not spend its time drawing.
            mininterval=0.1,
        )

    def __iter__(self) -> Iterator[T]:
        return iter(self.bar)

    def echo(self, line: str, error: bool = False) -> None:
        """Write ``line`` to the command's standard output (standard error with ``error``)
        without tearing the bar."""
        out = self.command.stderr if error else self.command.stdout
        if self.bar.disable:
            out.write(line)
            return
        self.bar.clear()
        out.write(line)
        out.flush()
        self.bar.refresh()

    def close(self) -> None:
        """Draw the final state and end the bar's line."""
        self.bar.close()
