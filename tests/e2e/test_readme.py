"""The README's set-up commands and quickstart, followed literally.

The quickstart's Python blocks run, in order and unchanged, in one child process on
the test settings and the session's nats-server, except the ``# settings.py``
fragment (it configures a project; the test settings play its part). The async block
only defines ``place_order``, so the script then calls it, and ``add_item`` from the
retry block, to show they work too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def section(title: str) -> str:
    """The text of the README section ``## title``, up to the next ``## `` heading."""
    text = README.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.M | re.S)
    assert match, f"README.md has no section {title!r}"
    return match.group(1)


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.M | re.S)


def test_the_two_set_up_commands_are_dev_py_demo_and_test() -> None:
    blocks = code_blocks(section("Set-up: two commands"), "sh")
    assert len(blocks) == 1
    commands = [line.split("#")[0].strip() for line in blocks[0].splitlines() if line.strip()]
    assert commands == ["python3 dev.py demo", "python3 dev.py test"]


def test_the_quickstart_code_runs_as_written(nats_url: str, tmp_path: Path) -> None:
    blocks = code_blocks(section("Quickstart"), "python")
    # What the quickstart shows, in order: settings, sync save and read, the async
    # twin, the retry on a version conflict.
    assert [block.splitlines()[0] for block in blocks] == [
        "# settings.py",
        "from aether_django.events import Event",
        "async def place_order(order_id: str, total: int) -> Event:",
        "from aether_django.errors import VersionConflictError",
    ]
    settings_fragment, sync_block, async_block, retry_block = blocks
    assert '"aether_django"' in settings_fragment  # not run: the test settings have it
    script = "\n\n".join(
        [
            "import django\ndjango.setup()",
            sync_block,
            async_block,
            retry_block,
            # The blocks only define these two; call them.
            "import asyncio\n"
            "placed = asyncio.run(place_order('order-43', 12))\n"
            "print('placed', placed.actor_id, placed.version)\n"
            "added = add_item('order-42', 'book-1')\n"
            "print('added', added.event_type, added.version)\n",
        ]
    )
    path = tmp_path / "quickstart.py"
    path.write_text(script)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "AETHER_NATS_URL": nats_url,
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    # The sync block prints order-42's history, its OrderPlaced last.
    history = [line for line in lines if re.match(r"^\d+ \w+ \{", line)]
    assert history and history[-1].split()[1] == "OrderPlaced"
    assert "{'total': 30}" in history[-1]
    assert any(re.fullmatch(r"placed order-43 \d+", line) for line in lines)
    assert any(re.fullmatch(r"added ItemAdded \d+", line) for line in lines)
