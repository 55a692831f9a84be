"""Imports run one way: faces (CLI, web, demo) import the core; the core imports no face.

The graph is read from the source (every import statement, function-level ones included), so a
cycle hidden inside a function still fails here. Whether a core module loads Flask is checked
in a fresh interpreter, by what ends up in ``sys.modules``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tablettracker_backups"
NAME = "tablettracker_backups"
FACES = ("web", "cli", "console", "demo", "__main__")
WEB_LIBRARIES = ("flask", "click", "werkzeug", "jinja2", "markupsafe", "flask_login")
#: The one edge the house style allows against the grain: the extension registers its CLI
#: group inside ``init_app`` (as Flask-SQLAlchemy does). It creates no cycle while the CLI
#: never imports the web face, which is checked below.
ALLOWED_FACE_EDGES = {("web.extension", "cli")}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def short(module: str) -> str:
    return module[len(NAME) + 1 :] if module != NAME else "__init__"


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module (short name) -> the package modules it imports, anywhere in its source."""
    modules = {module_name(p, package.parent): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {short(m): set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # ``from pkg import sub`` names a submodule when one exists.
                targets = [
                    f"{node.module}.{a.name}"
                    if f"{node.module}.{a.name}" in modules
                    else node.module
                    for a in node.names
                ]
            for target in targets:
                if target.startswith(NAME) and target != module:
                    graph[short(module)].add(short(target))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def is_face(module: str) -> bool:
    return module.split(".")[0] in FACES


def core_modules() -> list[str]:
    return sorted(m for m in import_graph() if not is_face(m) and m != "__init__")


def test_no_import_cycle_anywhere() -> None:
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()) or [])


def test_the_cycle_finder_finds_a_planted_cycle(tmp_path: Path) -> None:
    # The check above is only worth something if it can fail: plant cli -> web -> cli.
    package = tmp_path / NAME
    for folder in ("web", "cli"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "cli" / "show_cmd.py").write_text(
        "def f():\n    from tablettracker_backups.web import views\n"
    )
    (package / "web" / "views.py").write_text("from tablettracker_backups.cli.show_cmd import f\n")
    cycle = find_cycle(import_graph(package))
    assert cycle is not None and "cli.show_cmd" in cycle and "web.views" in cycle


def test_the_core_imports_no_face() -> None:
    graph = import_graph()
    wrong = {
        (module, target) for module in core_modules() for target in graph[module] if is_face(target)
    }
    assert not wrong, f"core modules import faces: {sorted(wrong)}"


def test_faces_do_not_import_each_other_against_the_grain() -> None:
    # The CLI is usable without the web face; the web face without the demo.
    graph = import_graph()
    wrong = {
        (module, target)
        for module, targets in graph.items()
        for target in targets
        if module.split(".")[0] in ("cli", "web")
        and target.split(".")[0] in ("web", "demo", "console", "cli")
        and module.split(".")[0] != target.split(".")[0]
        and (module, target) not in ALLOWED_FACE_EDGES
    }
    assert not wrong, f"faces import each other: {sorted(wrong)}"


#: Inside the CLI package imports run one way too: the group (``cli``) wires the command
#: modules, each command module imports only what several share, and that imports no command.
CLI_SHARED = {"cli.common"}


def cli_layer_breaches(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """(module, import) pairs inside the CLI package against that grain: a command module
    importing another or the group, or the shared module importing a command."""
    return {
        (module, target)
        for module, targets in graph.items()
        if module.startswith("cli.")
        for target in targets
        if target.split(".")[0] == "cli" and target not in CLI_SHARED
    }


def test_cli_command_modules_import_only_the_shared_module() -> None:
    graph = import_graph()
    assert {m for m in graph if m.endswith("_cmd")}, "no command modules found"
    assert not cli_layer_breaches(graph), sorted(cli_layer_breaches(graph))


def test_the_cli_check_finds_planted_imports(tmp_path: Path) -> None:
    # Plant a command importing another, one importing the group, the shared module a command.
    package = tmp_path / NAME / "cli"
    package.mkdir(parents=True)
    for name in ("__init__", "common", "show_cmd", "list_cmd"):
        (package / f"{name}.py").write_text("")
    (package.parent / "__init__.py").write_text("")
    (package / "show_cmd.py").write_text(
        "from tablettracker_backups.cli.common import x\n"
        "def f():\n    from tablettracker_backups.cli.list_cmd import g\n"
    )
    (package / "list_cmd.py").write_text("from tablettracker_backups.cli import cli\n")
    (package / "common.py").write_text("import tablettracker_backups.cli.show_cmd\n")
    (package / "__init__.py").write_text("from tablettracker_backups.cli import show_cmd\n")
    assert cli_layer_breaches(import_graph(package.parent)) == {
        ("cli.show_cmd", "cli.list_cmd"),
        ("cli.list_cmd", "cli"),
        ("cli.common", "cli.show_cmd"),
    }


def test_each_command_lives_in_its_own_module() -> None:
    # borg's archiver/*_cmd.py: `notify-test` in notify_cmd.py, `unpin` beside `pin`.
    from tablettracker_backups.cli import cli

    def module_for(name: str) -> str:
        stem = "pin" if name == "unpin" else name.split("-")[0]
        return f"{NAME}.cli.{stem}_cmd"

    placed = {name: command.callback.__module__ for name, command in cli.commands.items()}
    assert len(placed) >= 16
    assert placed == {name: module_for(name) for name in placed}


#: The bottom layer: object stores move bytes and know nothing of backups. Below them only
#: these leaf helpers, which import nothing above themselves.
STORAGE = "storage"
BELOW_STORAGE = {"errors", "fsutil", "crashpoints"}


def storage_layer_breaches(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """(module, import) pairs where the storage layer imports anything above it, or a module
    below it imports anything but the others below."""

    def in_storage(module: str) -> bool:
        return module.split(".")[0] == STORAGE

    wrong = set()
    for module, targets in graph.items():
        if in_storage(module):
            wrong |= {(module, t) for t in targets if not in_storage(t) and t not in BELOW_STORAGE}
        elif module in BELOW_STORAGE:
            wrong |= {(module, t) for t in targets if t not in BELOW_STORAGE}
    return wrong


def test_storage_is_the_bottom_layer() -> None:
    graph = import_graph()
    assert any(m.startswith(f"{STORAGE}.") for m in graph), "no storage package found"
    assert not storage_layer_breaches(graph), sorted(storage_layer_breaches(graph))


def test_the_layer_check_finds_a_planted_upward_import(tmp_path: Path) -> None:
    # Plant storage -> metadata (a backup model) and fsutil -> storage: both are caught.
    package = tmp_path / NAME
    (package / STORAGE).mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / STORAGE / "__init__.py").write_text("")
    (package / "metadata.py").write_text("")
    (package / "errors.py").write_text("")
    (package / STORAGE / "local.py").write_text(
        "from tablettracker_backups.errors import X\n"
        "def f():\n    from tablettracker_backups.metadata import BackupMetadata\n"
    )
    (package / "fsutil.py").write_text("import tablettracker_backups.storage.local\n")
    assert storage_layer_breaches(import_graph(package)) == {
        ("storage.local", "metadata"),
        ("fsutil", "storage.local"),
    }


def test_display_helpers_are_a_leaf() -> None:
    assert import_graph()["display"] == set()


@pytest.mark.parametrize("module", core_modules())
def test_core_module_loads_no_web_library(module: str) -> None:
    code = (
        f"import sys, json, {NAME}.{module}\n"
        f"print(json.dumps(sorted(m for m in {WEB_LIBRARIES!r} if m in sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == [], f"{module} loads {result.stdout.strip()}"


def test_the_library_check_sees_flask_when_it_is_loaded() -> None:
    # The face does load Flask: proof that the subprocess check above can fail.
    code = f"import sys, {NAME}.web.views\nprint('flask' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "True"


# -- the layers of issue 24: faces, then operations, then the catalog, then formats, then -----
# -- storage, over a base every layer may use; imports never go upwards ------------------------

#: Top to bottom. A module is in the first layer one of whose names is it or its package.
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("faces", frozenset({"web", "cli", "console", "demo", "__main__", "__init__", "jobs.worker"})),
    (
        "operations",
        frozenset(
            {
                "runner", "backup", "restore", "verify", "heal", "prune", "offsite.sync",
                "autosnapshot", "bootstrap", "pins", "evidence", "health", "metrics", "weekly",
                "preview", "sound_copy", "restore_points", "jobs.queue", "pings", "keys",
                "sources", "anomaly", "intent", "jobs", "site", "export", "coordinated",
                "groups", "group_restore", "checks", "migrate",
            }
        ),
    ),
    (
        "catalog",
        frozenset(
            {
                "store", "catalog", "identity", "status", "audit", "notify", "offsite.client",
                "offsite.record", "offsite.policy", "retention", "locking", "overwrite",
                "snapshot", "extract", "offsite", "replicate", "garbage", "footprint",
                "formats",
            }
        ),
    ),
    ("formats", frozenset({"metadata", "layout", "encryption", "compression", "pagestore"})),
    ("storage", frozenset({"storage"})),
    (
        "base",
        frozenset(
            {
                "errors", "fsutil", "crashpoints", "display", "states", "progress", "version",
                "settings", "notifiers", "changes", "recipients",
            }
        ),
    ),
)  # fmt: skip


def layer_of(module: str) -> int | None:
    """The index (0 = top) of ``module``'s layer; None for a module in no layer."""
    parts = module.split(".")
    for index, (_, names) in enumerate(LAYERS):
        if any(".".join(parts[:n]) in names for n in range(len(parts), 0, -1)):
            return index
    return None


def upward_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """(module, import) pairs where a module imports one in a layer above its own."""
    wrong = set()
    for module, targets in graph.items():
        own = layer_of(module)
        for target in targets:
            theirs = layer_of(target)
            if own is not None and theirs is not None and theirs < own:
                wrong.add((module, target))
    return wrong - {("web.extension", "cli")} - set(ALLOWED_FACE_EDGES)


def test_every_module_has_its_layer() -> None:
    unplaced = sorted(m for m in import_graph() if m and layer_of(m) is None)
    assert not unplaced, f"place these in a layer in LAYERS: {unplaced}"


def test_imports_never_go_up_a_layer() -> None:
    wrong = upward_imports(import_graph())
    named = sorted(
        f"{m} ({LAYERS[layer_of(m) or 0][0]}) -> {t} ({LAYERS[layer_of(t) or 0][0]})"
        for m, t in wrong
    )
    assert not wrong, "imports that climb a layer: " + "; ".join(named)


def test_the_layer_check_finds_planted_upward_imports() -> None:
    graph = {
        "snapshot": {"restore"},  # the catalog reaching up to an operation
        "layout": {"store"},  # a format reaching up to the catalog
        "settings": {"encryption"},  # the base reaching up to a format
        "restore": {"store", "layout", "storage.local", "errors"},  # all fine: downwards
    }
    assert upward_imports(graph) == {
        ("snapshot", "restore"),
        ("layout", "store"),
        ("settings", "encryption"),
    }


#: What only :mod:`tablettracker_backups.layout` may spell: the parts of a backup's names.
BACKUP_NAME_PARTS = (".db.zst", ".db.gz", ".state.json", "database.json")


def name_builders(package: Path = PACKAGE) -> list[str]:
    """``module:line`` of every string constant (docstrings and comments aside) outside
    ``layout.py`` that spells a part of a backup's object names."""
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "layout.py" and path.parent == package:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
                and any(part in node.value for part in BACKUP_NAME_PARTS)
                # Words for a person that name the file (messages), not a name being built.
                and " " not in node.value.strip()
            ):
                found.append(f"{path.relative_to(package)}:{node.lineno}")
    return found


def test_only_the_layout_module_builds_a_backups_names() -> None:
    assert not name_builders(), name_builders()


def test_the_name_check_finds_a_planted_name(tmp_path: Path) -> None:
    package = tmp_path / NAME
    package.mkdir()
    (package / "layout.py").write_text('SUFFIX = ".db.zst"\n')
    (package / "heal.py").write_text(
        '"""Rebuilds <id>.db.zst copies."""\n'
        'def path(backup_id):\n    return backup_id + ".db.zst"\n'
        'def say():\n    return "cannot read database.json in the folder"\n'
    )
    assert name_builders(package) == ["heal.py:3"]


def causes_dropped(package: Path = PACKAGE) -> list[str]:
    """``module:line`` of every ``raise ... from None``: it drops the cause chain the logs
    need (the user's message is ``str(exc)`` either way)."""
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Raise)
                and isinstance(node.cause, ast.Constant)
                and node.cause.value is None
            ):
                found.append(f"{path.relative_to(package)}:{node.lineno}")
    return found


def test_exceptions_keep_their_cause() -> None:
    assert not causes_dropped(), causes_dropped()


def test_the_cause_check_finds_a_planted_from_none(tmp_path: Path) -> None:
    package = tmp_path / NAME
    package.mkdir()
    (package / "heal.py").write_text(
        "def f():\n    try:\n        g()\n    except OSError as exc:\n"
        "        raise ValueError('x') from exc\n"
        "def h():\n    try:\n        g()\n    except OSError:\n"
        "        raise ValueError('y') from None\n"
    )
    assert causes_dropped(package) == ["heal.py:10"]
