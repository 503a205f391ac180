#!/usr/bin/env python3
"""The project's two commands: ``python3 dev.py test`` and ``python3 dev.py demo``.

Runs with a plain system Python >= 3.11 and the standard library only. On first
use, and again whenever pyproject.toml changes, it creates ``.venv`` and installs
the project into it (``pip install -e '.[test]'``); everything else runs in that
virtualenv's Python.

    python3 dev.py test               ruff check, ruff format --check, mypy,
                                      lint-imports (the layer contract), the docs
                                      site (mkdocs build --strict), pytest
    python3 dev.py test -k store -x   only pytest, with these arguments
    python3 dev.py demo               the example project with everything it needs
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
# Hash of the pyproject.toml the virtualenv was last installed from.
STAMP = VENV / ".dev-py-stamp"

USAGE = """\
usage: python3 dev.py test [pytest args...]
       python3 dev.py demo

  test   ruff check, ruff format --check, mypy, lint-imports (the layer contract
         in pyproject.toml), mkdocs build --strict (the docs site, built into a
         temporary directory) and pytest (in that order);
         with pytest arguments, only pytest runs, with those arguments
  demo   start the example project (embedded nats-server, a Celery broker, worker
         and beat, migrations, a demo user, uvicorn, some seeded orders) and print
         where to look; Ctrl-C stops everything
"""


def say(message: str) -> None:
    """One short progress line, flushed so it appears before a child's output."""
    print(f"dev.py: {message}", flush=True)


def wanted_stamp() -> str:
    """What the stamp must say for the virtualenv to be up to date."""
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    return f"pyproject.toml sha256 {digest}\n"


def venv_works() -> bool:
    """Whether .venv has a Python that starts and has pip."""
    if not VENV_PYTHON.exists():
        return False
    probe = subprocess.run(
        [str(VENV_PYTHON), "-m", "pip", "--version"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return probe.returncode == 0


def ensure_venv() -> None:
    """Create .venv and install the project into it unless the stamp says it is current."""
    stamp = wanted_stamp()
    if venv_works() and STAMP.exists() and STAMP.read_text() == stamp:
        return
    if not venv_works():
        say(f"creating the virtualenv {VENV.relative_to(ROOT)}/")
        created = subprocess.run(
            [sys.executable, "-m", "venv", "--clear", str(VENV)], cwd=ROOT, check=False
        )
        if created.returncode != 0 or not venv_works():
            # Leave nothing half-made behind, so the next run starts clean.
            shutil.rmtree(VENV, ignore_errors=True)
            sys.exit(
                "dev.py: could not create a virtualenv with pip; install your system's "
                "venv support for this Python (on Debian/Ubuntu: the python3-venv package)"
            )
    say("installing the project and its test tools into .venv (takes a minute or two)")
    STAMP.unlink(missing_ok=True)
    installed = subprocess.run(
        [
            str(VENV_PYTHON),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--quiet",
            "-e",
            ".[test]",
        ],
        cwd=ROOT,
        check=False,
    )
    if installed.returncode != 0:
        sys.exit(f"dev.py: pip install failed (exit code {installed.returncode})")
    STAMP.write_text(stamp)


def run_step(command: Sequence[str], env: dict[str, str]) -> int:
    """Run one child to completion and return its exit code.

    Ctrl-C reaches the child too (same terminal), so on KeyboardInterrupt we give
    it time to clean up (pytest stops its nats-server) instead of killing it.
    SIGTERM sent to this process is passed on to the child as SIGINT.
    """
    child = subprocess.Popen(command, cwd=ROOT, env=env)
    terminated = False

    def forward(_signum: int, _frame: FrameType | None) -> None:
        nonlocal terminated
        terminated = True
        # As SIGINT: pytest then runs its teardown and stops the nats-server it
        # started, where a SIGTERM would end it on the spot and leave that behind.
        child.send_signal(signal.SIGINT)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        try:
            code = child.wait()
        except KeyboardInterrupt:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.terminate()
                child.wait()
            return 130
        return 128 + signal.SIGTERM if terminated else code
    finally:
        signal.signal(signal.SIGTERM, previous)


def test(pytest_args: Sequence[str]) -> int:
    """ruff, ruff format, mypy, lint-imports, the docs, pytest; stop at the first failure
    and return its exit code."""
    env = dict(os.environ)
    # The suite's settings module is fixed in pyproject.toml; a leftover
    # DJANGO_SETTINGS_MODULE in the shell would take precedence over it.
    env.pop("DJANGO_SETTINGS_MODULE", None)
    python = str(VENV_PYTHON)
    steps: list[tuple[str, list[str]]] = []
    if not pytest_args:
        steps += [
            ("ruff check .", [python, "-m", "ruff", "check", "."]),
            ("ruff format --check .", [python, "-m", "ruff", "format", "--check", "."]),
            # The tests, benchmarks and example too (more loosely: see pyproject.toml).
            ("mypy", [python, "-m", "mypy", "aether_django", "tests", "bench", "example_project"]),
            # The layers of DESIGN.md §3 ([tool.importlinter] in pyproject.toml).
            ("lint-imports", [str(VENV / "bin" / "lint-imports")]),
        ]
    # The docs site is built to find broken links and anchors (strict mode), not to be
    # kept: into a temporary directory, never into the checkout.
    site = tempfile.mkdtemp(prefix="aether-docs-")
    if not pytest_args:
        steps.append(
            (
                "mkdocs build --strict",
                [python, "-m", "mkdocs", "build", "--strict", "--site-dir", site],
            )
        )
    steps.append(("pytest " + " ".join(pytest_args), [python, "-m", "pytest", *pytest_args]))
    try:
        for title, command in steps:
            say(f"running {title.strip()}")
            code = run_step(command, env)
            if code != 0:
                say(f"{title.strip()} failed (exit code {code})")
                return code
    finally:
        shutil.rmtree(site, ignore_errors=True)
    say("all checks passed")
    return 0


def demo() -> None:
    """Replace this process by the demo supervisor running in the virtualenv's Python."""
    command = [str(VENV_PYTHON), "-m", "example_project.demo"]
    os.chdir(ROOT)
    sys.stdout.flush()
    sys.stderr.flush()
    # exec, not a child: Ctrl-C and SIGTERM then go straight to the supervisor,
    # which stops every process it started.
    os.execv(command[0], command)


def main(argv: Sequence[str]) -> int:
    # Runs on whatever python3 the system has, before any virtualenv exists.
    if sys.version_info < (3, 11):  # noqa: UP036
        sys.exit("dev.py needs Python 3.11 or newer")
    if not argv or argv[0] not in ("test", "demo") or (argv[0] == "demo" and len(argv) > 1):
        print(USAGE, file=sys.stderr)
        return 2
    ensure_venv()
    if argv[0] == "test":
        return test(argv[1:])
    demo()
    return 0  # not reached: demo() execs


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
