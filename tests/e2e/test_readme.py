"""The README's set-up commands and quickstart, and docs/quickstart.md, followed literally
by someone who starts from an empty Django project.

Each quickstart test makes a fresh project with ``django-admin startproject``, adds
the page's ``# settings.py`` block unchanged at the end of its settings.py (as the
page says), and runs the page's other Python blocks, in order and unchanged, through
``manage.py shell`` against a nats-server of its own with no events yet. The server's
URL reaches the project through ``AETHER_NATS_URL``, which the pages say wins over
``AETHER["NATS_URL"]``. Blocks that only define a function are followed by a call of
it, to show it works too. ``python3 dev.py demo`` itself is run by test_demo.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from aether_django.testing import NatsServer

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
QUICKSTART = ROOT / "docs" / "quickstart.md"
# Where a reader's own tests go; docs/quickstart.md's pytest blocks are not shell code.
NOT_SHELL_CODE = "Testing your code"


def section(path: Path, title: str) -> str:
    """The text of the section ``## title`` of ``path``, up to the next ``## `` heading."""
    text = path.read_text() + "\n## "
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.M | re.S)
    assert match, f"{path.name} has no section {title!r}"
    return match.group(1)


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.M | re.S)


def run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, f"{command}:\n{done.stdout}{done.stderr}"
    return done.stdout


def run_in_a_fresh_project(tmp_path: Path, settings_block: str, code: str, nats: NatsServer) -> str:
    """startproject, the settings block appended unchanged, then ``code`` in manage.py shell."""
    project = tmp_path / "project"
    project.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")
    }
    env["AETHER_NATS_URL"] = nats.url
    # The project's environment: the one aether_django is installed in.
    django_admin = str(Path(sys.executable).parent / "django-admin")
    run([django_admin, "startproject", "mysite", str(project)], tmp_path, env)
    settings = project / "mysite" / "settings.py"
    settings.write_text(settings.read_text() + "\n" + settings_block)
    python = sys.executable
    # No unknown AETHER key (aether_django.E001), nothing else wrong either.
    run([python, "manage.py", "check", "--fail-level", "WARNING"], project, env)
    return run([python, "manage.py", "shell", "--no-imports", "-c", code], project, env)


@pytest.fixture
def fresh_nats(aether_nats_server_factory: Callable[..., NatsServer]) -> NatsServer:
    """A nats-server of the test's own, so the pages' ``order-42`` has no events yet."""
    return aether_nats_server_factory()


def test_the_two_set_up_commands_are_dev_py_demo_and_test() -> None:
    blocks = code_blocks(section(README, "Set-up: two commands"), "sh")
    assert len(blocks) == 1
    commands = [line.split("#")[0].strip() for line in blocks[0].splitlines() if line.strip()]
    assert commands == ["python3 dev.py demo", "python3 dev.py test"]


def test_the_readme_quickstart_works_in_a_fresh_startproject(
    tmp_path: Path, fresh_nats: NatsServer
) -> None:
    blocks = code_blocks(section(README, "Quickstart"), "python")
    # What the quickstart shows, in order: settings, sync save and read, the async
    # twin, the retry on a version conflict.
    assert [block.splitlines()[0] for block in blocks] == [
        "# settings.py",
        "from aether_django.events import Event",
        "async def place_order(order_id: str, total: int) -> Event:",
        "from aether_django.errors import VersionConflictError",
    ]
    settings_block, *code = blocks
    calls = (
        "import asyncio\n"
        "placed = asyncio.run(place_order('order-43', 12))\n"
        "print('placed', placed.actor_id, placed.version)\n"
        "added = add_item('order-42', 'book-1')\n"
        "print('added', added.event_type, added.version)\n"
    )
    out = run_in_a_fresh_project(tmp_path, settings_block, "\n\n".join([*code, calls]), fresh_nats)
    lines = out.splitlines()
    # The sync block prints order-42's history: the one event it saved.
    history = [line for line in lines if re.match(r"^\d+ \w+ \{", line)]
    assert history == ["1 OrderPlaced {'total': 30} 1"], out
    assert "placed order-43 1" in lines, out
    assert "added ItemAdded 2" in lines, out


def test_the_docs_quickstart_works_in_a_fresh_startproject(
    tmp_path: Path, fresh_nats: NatsServer
) -> None:
    text = QUICKSTART.read_text()
    assert f"## {NOT_SHELL_CODE}\n" in text
    runnable = text.split(f"## {NOT_SHELL_CODE}\n")[0]
    blocks = code_blocks(runnable, "python")
    assert blocks[0].startswith("# settings.py\n")
    settings_block, *code = blocks
    # The page's comments say what each call gives; the script checks they do.
    checks = """
import asyncio
shipped = asyncio.run(ship("order-42"))
assert [e.version for e in events] == [1, 2]
assert [e.version for e in recent] == [2]
assert [e.version for e in page] == [1, 2]
assert store.get_actor_ids() == ["order-42"]
assert (snapshot.version, snapshot.state) == (4, {"total": 30, "items": 3})
assert newer == []
assert [e.event_type for e in store.get_events("order-42")] == [
    "OrderPlaced", "ItemAdded", "ItemAdded", "ItemAdded", "ItemRemoved", "OrderShipped"
]
assert store.get_latest_version("order-42") == shipped.version == 6
print("quickstart ok")
"""
    out = run_in_a_fresh_project(tmp_path, settings_block, "\n\n".join([*code, checks]), fresh_nats)
    lines = out.splitlines()
    # The NatsServer block prints the URL of the server it started.
    assert any(re.fullmatch(r"nats://127\.0\.0\.1:\d+", line) for line in lines), out
    assert lines[-1] == "quickstart ok", out
