"""docs/api.md's shell examples, pasted into bash against the example project.

The example project runs as the demo runs it: uvicorn serving
``example_project.asgi:application``, on a nats-server of this test's own (so
``sandbox`` and ``orders`` start empty), with a SQLite file of its own
(``AETHER_DEMO_DB``), the superuser ``demo`` and the demo's orders
(``example_project.demo_seed``).

"Trying it on the demo" has two sh blocks: one sets ``API`` and ``PW``, one holds the
examples. The first runs with the test server's address and the user's password in
place of the demo's; the second runs unchanged, one paragraph (a ``# NNN: ...``
comment and the commands under it) per bash process, with ``curl`` wrapped in a
shell function that records each answer's status and body. Every command must answer
the status its comment starts with, a paragraph that says its second answer is the
same must get the same body twice, and a second run of the whole block must answer
as the text after the block says.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aether_django.testing import find_free_port
from tests.serverproc import serving

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "api.md"
USER, PASSWORD = "demo", "doc-test-password"
#: The demo's address, which the first block names and the test replaces.
DEMO_URL = "http://127.0.0.1:8000"
#: Starting uvicorn and Django normally takes a few seconds; only a hung one gets here.
START_TIMEOUT = 60.0


def section(title: str) -> str:
    text = DOC.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.M | re.S)
    assert match, f"docs/api.md has no section {title!r}"
    return match.group(1)


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S)


@dataclass
class Paragraph:
    """A ``# NNN: ...`` comment and the commands under it."""

    status: int
    comment: str
    script: str

    @property
    def commands(self) -> int:
        return len(re.findall(r"^\s*curl ", self.script, re.M))


def paragraphs(block: str) -> list[Paragraph]:
    found = []
    for chunk in re.split(r"\n\s*\n", block.strip()):
        comment, _, script = chunk.partition("\n")
        match = re.match(r"# (\d{3}): (.*)", comment)
        assert match, f"a paragraph of the examples does not start with '# NNN: ': {chunk!r}"
        found.append(Paragraph(int(match.group(1)), match.group(2), script))
    return found


def run_paragraph(prelude: str, paragraph: Paragraph, out: Path) -> list[tuple[int, str]]:
    """Run one paragraph in bash; the (status, body) of every curl it ran, in order."""
    out.mkdir()
    recorder = (
        # Each answer's body into its own file, its status into a list. curl's own
        # failures (no connection, say) count as status 0.
        "n=0\n"
        "curl() {\n"
        "  n=$((n + 1))\n"
        '  status=$(command curl -sS -o "$OUT/$n.body" -w "%{http_code}" "$@") || status=0\n'
        '  echo "$status" >> "$OUT/statuses"\n'
        "}\n"
    )
    done = subprocess.run(
        ["bash", "-c", f"set -u\n{prelude}\n{recorder}\n{paragraph.script}\n"],
        env={**os.environ, "OUT": str(out)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    statuses = (out / "statuses").read_text().split()
    return [
        (int(status), (out / f"{n}.body").read_text()) for n, status in enumerate(statuses, start=1)
    ]


def json_body(body: str) -> Any:
    """The JSON of an answer, past the status line and headers when ``-i`` showed them."""
    if body.startswith("HTTP/"):
        body = body.split("\n\n", 1)[1]  # read_text made the CRLFs plain newlines
    return json.loads(body)


@pytest.fixture
def example_project(tmp_path, aether_nats_server_factory):
    """The example project under uvicorn; yields its base URL."""
    if shutil.which("curl") is None:
        pytest.skip("the examples are curl commands, and curl is not installed")
    nats = aether_nats_server_factory()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "AETHER_DEMO_DB": str(tmp_path / "db.sqlite3"),
        "AETHER_NATS_URL": nats.url,
        "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
    }
    for command in (
        ["manage.py", "migrate", "--no-input", "--verbosity", "0"],
        ["manage.py", "createsuperuser", "--no-input", "--username", USER, "--email", ""],
        ["-m", "example_project.demo_seed"],
    ):
        subprocess.run([sys.executable, *command], cwd=ROOT, env=env, check=True, timeout=120)
    port = find_free_port()
    command = [sys.executable, "-m", "uvicorn", "example_project.asgi:application"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "uvicorn.log"
    with serving(command, env, log, f"{base}/aether/healthz/", timeout=START_TIMEOUT):
        yield base


def test_the_shell_examples_answer_what_the_doc_says(example_project, tmp_path):
    variables, examples = sh_blocks(section("Trying it on the demo"))
    # The first block names the demo's address and the password it printed.
    assert variables.splitlines() == [
        f"API={DEMO_URL}/api/aether",
        "PW='the password the demo printed'",
    ]
    prelude = variables.replace(DEMO_URL, example_project).replace(
        "'the password the demo printed'", f"'{PASSWORD}'"
    )
    found = paragraphs(examples)
    assert [p.status for p in found] == [201, 409, 201, 200, 200, 403, 404, 400, 200, 200]

    first_run = {}
    for index, paragraph in enumerate(found):
        answers = run_paragraph(prelude, paragraph, tmp_path / f"first-{index}")
        first_run[index] = answers
        assert len(answers) >= paragraph.commands >= 1, paragraph.script
        assert [status for status, _ in answers] == [paragraph.status] * len(answers), (
            paragraph.comment,
            answers,
        )
        for _, body in answers:
            json_body(body)  # every answer is JSON
        if "the second answer is the same" in paragraph.comment:
            assert len(answers) == 2
            assert json_body(answers[0][1]) == json_body(answers[1][1])

    # What the bodies show, where the comments say it.
    conflict = json_body(first_run[1][0][1])
    assert conflict == {
        "code": "version_conflict",
        "detail": conflict["detail"],
        "actor_id": "acct-1",
        "attempted_version": 1,
        "current_version": 1,
    }
    batch = json_body(first_run[2][0][1])
    assert [e["version"] for e in batch["events"]] == [2, 3]
    state = json_body(first_run[8][0][1])
    assert state["actor_id"] == "order-1" and state["aggregate"] == "Order"

    # A second run: the first append now answers 409; the batch, with ids, 201 again
    # with the events stored the first time; the rest as before.
    for index, paragraph in enumerate(found):
        answers = run_paragraph(prelude, paragraph, tmp_path / f"second-{index}")
        expected = 409 if index == 0 else paragraph.status
        assert [status for status, _ in answers] == [expected] * len(answers), (
            paragraph.comment,
            answers,
        )
        if index == 2:
            assert json_body(answers[0][1]) == batch
