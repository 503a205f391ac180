"""The reference tables of docs/ say what the code does.

Each test reads a page's table and compares it with the code it describes, so a
setting, metric, command option or admin URL added, renamed or removed in one place
and not the other fails here: settings.md against ``conf.DEFAULTS`` and the
environment variables the code reads; operations.md's metrics against the metrics
``aether_django.metrics`` registers, and its commands against their parsers;
admin.md's URLs against the admin's URLconf.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
from django.core.management import BaseCommand, load_command_class
from django.urls import Resolver404, resolve

from aether_django import metrics
from aether_django.conf import DEFAULTS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
COMMANDS = sorted(
    path.stem
    for path in (ROOT / "aether_django" / "management" / "commands").glob("*.py")
    if not path.stem.startswith("_")
)


def sections(page: str) -> dict[str, str]:
    """The ``##`` sections of a docs page by title, each up to the next ``##`` heading."""
    text = (DOCS / page).read_text()
    parts = re.split(r"^## (.+)\n", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def table_rows(text: str) -> list[list[str]]:
    """The cells of every table row in ``text`` (header and separator rows left out)."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|") or set(line) <= set("|- "):
            continue
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return [row for row in rows if row[0].startswith("`")]


def code_spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def settings_table() -> dict[str, str]:
    """settings.md's key -> default cell, from every table but the environment variables'."""
    found: dict[str, str] = {}
    for title, text in sections("settings.md").items():
        if title == "Environment variables":
            continue
        for row in table_rows(text):
            key = code_spans(row[0])[0]
            assert key not in found, f"settings.md describes {key} twice"
            found[key] = row[1]
    return found


def test_settings_md_lists_every_aether_setting_and_no_other() -> None:
    assert sorted(settings_table()) == sorted(DEFAULTS)


@pytest.mark.parametrize("key", sorted(DEFAULTS))
def test_settings_md_gives_each_settings_default_as_the_code_has_it(key: str) -> None:
    cell = settings_table().get(key)
    assert cell is not None, f"settings.md does not describe {key}"
    # The first code span of the cell is the default, as Python would write it.
    documented: Any = ast.literal_eval(code_spans(cell)[0])
    assert documented == DEFAULTS[key] and type(documented) is type(DEFAULTS[key]), (
        f"settings.md says {key} defaults to {documented!r}; conf.DEFAULTS has {DEFAULTS[key]!r}"
    )


def test_settings_md_lists_every_environment_variable_the_code_reads() -> None:
    documented = {
        code_spans(row[0])[0]
        for row in table_rows(sections("settings.md")["Environment variables"])
    }
    sources = [*(ROOT / "aether_django").rglob("*.py"), *(ROOT / "example_project").rglob("*.py")]
    read = set()
    for path in sources:
        read |= set(re.findall(r"\b(AETHER_[A-Z_]+)\b", path.read_text()))
    assert sorted(documented) == sorted(read)


def test_operations_md_lists_every_metric_with_its_kind() -> None:
    documented: dict[str, str] = {}
    # Every table row of the page whose second cell is a metric kind, in any section.
    for row in table_rows((DOCS / "operations.md").read_text()):
        if len(row) > 1 and row[1] in ("counter", "gauge", "histogram"):
            name = code_spans(row[0])[0]
            # `aether_saves_total{namespace}`: the name, without its labels.
            documented[name.split("{")[0]] = row[1]
    registered = {metric.name: metric.kind for metric in metrics._metrics}
    assert documented == registered


def documented_commands() -> dict[str, str]:
    """operations.md's ``manage.py NAME ...`` synopses by command name."""
    text = sections("operations.md")["Management commands"]
    synopses = re.findall(r"^- `manage\.py (aether_\w+)([^`]*)`", text, re.M)
    return {name: rest for name, rest in synopses}


def test_operations_md_describes_every_management_command() -> None:
    assert sorted(documented_commands()) == COMMANDS


@pytest.mark.parametrize("name", COMMANDS)
def test_operations_md_gives_each_commands_options_and_arguments(name: str) -> None:
    synopsis = documented_commands().get(name)
    assert synopsis is not None, f"operations.md does not describe manage.py {name}"
    parser = load_command_class("aether_django", name).create_parser("manage.py", name)
    # Every command has Django's own options (--verbosity, --settings, ...): not the
    # command's to document.
    common = {
        option
        for action in BaseCommand().create_parser("manage.py", "base")._actions
        for option in action.option_strings
    }
    options = {
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option not in common
    }
    assert set(re.findall(r"--[a-z][a-z-]*", synopsis)) == options, synopsis
    # Positional arguments: "NAMESPACE" for one, "[NAMESPACE ...]" for any number.
    positionals = [a for a in parser._actions if not a.option_strings]
    # Options and their values ("[--node-id NODE_ID]") first, so a value is not read
    # as a positional argument.
    bare = re.sub(r"\[?--[a-z][a-z-]*(?: [A-Z][A-Z_]*)?\]?", " ", synopsis)
    shown = re.findall(r"(\[?)([A-Z][A-Z_]*)( \.\.\.\]?)?", bare)
    shown = [(word, bool(bracket), bool(more)) for bracket, word, more in shown]
    wanted = [
        (
            str(action.dest).upper().removesuffix("S")
            if action.nargs == "*"
            else action.dest.upper(),
            action.nargs == "*",
            action.nargs == "*",
        )
        for action in positionals
    ]
    assert shown == wanted, synopsis


def admin_urls() -> list[str]:
    """Every URL under ``/admin/aether_django/`` that admin.md names."""
    text = (DOCS / "admin.md").read_text()
    urls = []
    for span in re.findall(r"`([^`\s][^`]*/)`", text):
        if span.startswith(
            ("streaminspection/", "clusterinspection/", "projectioninspection/", "namespacegrant/")
        ):
            urls.append(span)
    return urls


# What stands for the placeholders of admin.md's URLs.
PLACEHOLDERS = {
    "<namespace>": "orders",
    "<actor id>": "order-1",
    "<id>": "1",
    "<name>": "order-summary",
}


def test_admin_md_names_the_pages_of_both_inspection_entries_and_the_grants() -> None:
    urls = admin_urls()
    for page in (
        "streaminspection/",
        "streaminspection/ns/<namespace>/",
        "streaminspection/ns/<namespace>/<actor id>/",
        "clusterinspection/",
        "clusterinspection/shards/",
        "projectioninspection/",
        "projectioninspection/p/<name>/rebuild/",
        "namespacegrant/",
    ):
        assert page in urls


@pytest.mark.parametrize("url", admin_urls())
def test_every_admin_url_in_admin_md_is_a_page_of_the_admin(url: str) -> None:
    path = url
    for placeholder, value in PLACEHOLDERS.items():
        path = path.replace(placeholder, value)
    try:
        match = resolve("/admin/aether_django/" + path)
    except Resolver404:
        pytest.fail(f"admin.md names {url}, which does not resolve")
    # The admin's catch-all view (which redirects or answers 404) has no name.
    assert match.url_name is not None, f"admin.md names {url}, which is no admin page"


def test_an_actor_id_with_slashes_is_read_as_admin_md_says() -> None:
    match = resolve("/admin/aether_django/streaminspection/ns/add/x/delete/")
    assert match.url_name == "aether_actor"
    assert match.kwargs == {"namespace": "add", "actor_id": "x/delete"}


def test_index_md_links_every_page_of_the_docs() -> None:
    linked = set(re.findall(r"\]\(([a-z_]+\.md)\)", (DOCS / "index.md").read_text()))
    pages = {path.name for path in DOCS.glob("*.md")} - {"index.md"}
    assert sorted(pages - linked) == []


def anchors(path: Path) -> set[str]:
    """The anchors a Markdown renderer gives the headings of ``path`` (GitHub's rule)."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        # A repeated heading gets -1, -2, ... after its slug.
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(f"{slug}-{count}" if count else slug)
    return found


@pytest.mark.parametrize(
    "page", ["README.md", *sorted(f"docs/{p.name}" for p in DOCS.glob("*.md"))]
)
def test_every_relative_link_names_a_page_and_heading_that_exist(page: str) -> None:
    source = ROOT / page
    text = re.sub(r"^```.*?^```", "", source.read_text(), flags=re.M | re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # an absolute URL
        file_part, _, anchor = target.partition("#")
        linked = (source.parent / file_part).resolve() if file_part else source
        missing_heading = bool(anchor) and linked.suffix == ".md" and linked.exists()
        if not linked.exists() or (missing_heading and anchor not in anchors(linked)):
            broken.append(target)
    assert broken == []
