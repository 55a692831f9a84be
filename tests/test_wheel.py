"""The built wheel, installed in a fresh virtual environment, works on its own.

The package must come from the wheel, not from this checkout: everything runs from a working
directory outside the repository and checks where the module was imported from. The
dependencies (Flask, zstandard, ...) come from the environment running the tests, so they need
no network, however that environment was made: a virtual environment (as the README's command
makes), the system Python, a user install. Its package folders are listed in a ``.pth`` file
of the new venv (``--system-site-packages`` would see the *base* interpreter's packages
instead, missing everything installed in an outer venv); the project itself is installed from
the wheel with --no-deps --no-index, and its own folder comes first on the path.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import make_db

ROOT = Path(__file__).resolve().parent.parent

# One worker runs the module under pytest-xdist, so the wheel is built and installed once.
pytestmark = pytest.mark.xdist_group("wheel")


@dataclass(frozen=True)
class Installed:
    """A venv with the wheel installed."""

    wheel: Path
    venv: Path
    workdir: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def script(self) -> Path:
        return self.venv / "bin" / "tablettracker-backups"

    def run(
        self, *args: str | Path, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        return subprocess.run(
            [str(a) for a in args],
            cwd=self.workdir,
            env={**clean, **(env or {})},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )


def _check(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Build the wheel from this checkout and install it into a fresh venv (once per module)."""
    base = tmp_path_factory.mktemp("wheel")
    dist = base / "dist"
    _check(
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "--no-index",
                "--quiet",
                "--wheel-dir",
                str(dist),
                str(ROOT),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    )
    [wheel] = dist.glob("tablettracker_backups-*.whl")
    venv = base / "venv"
    _check(
        subprocess.run(
            # --without-pip (ensurepip is the slow part): this pip installs into it below.
            [sys.executable, "-m", "venv", "--without-pip", str(venv)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    )
    _see_outer_packages(venv)
    workdir = base / "elsewhere"
    workdir.mkdir()
    result = Installed(wheel, venv, workdir)
    _check(
        result.run(
            sys.executable,
            "-m",
            "pip",
            "--python",
            venv / "bin" / "python",
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            "--force-reinstall",
            wheel,
        )
    )
    return result


def outer_package_folders() -> list[str]:
    """Where the running environment's packages are: its site folders as this interpreter
    sees them (a venv's own, or the system's and the user's), never this checkout."""
    folders = [*site.getsitepackages(), site.getusersitepackages(), *sys.path]
    found: list[str] = []
    for folder in folders:
        path = Path(folder)
        if not path.name.endswith(("site-packages", "dist-packages")) or not path.is_dir():
            continue
        # A venv inside the checkout (the README's .venv) is an environment like any other;
        # only the checkout's own folder must never be seen.
        if path.resolve() == ROOT or str(path) in found:
            continue
        found.append(str(path))
    return found


def _see_outer_packages(venv: Path) -> None:
    """Let the new venv import the running environment's packages, after its own.

    Plain folder lines in a ``.pth`` file are appended to ``sys.path``; the ``.pth`` files
    inside those folders are not run, so an editable install of this project there (a path
    finder pointing at the checkout) stays invisible, and the wheel is what gets imported.
    """
    purelib = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    Path(purelib, "outer-environment.pth").write_text("\n".join(outer_package_folders()) + "\n")


def test_wheel_contains_templates_and_static(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as archive:
        names = archive.namelist()
    for folder in ("templates", "static"):
        inside = [n for n in names if n.startswith(f"tablettracker_backups/{folder}/")]
        assert inside, f"{folder}/ is not in the wheel"
    assert "tablettracker_backups/py.typed" in names
    assert "tablettracker_backups/grafana/tablettracker-backups.json" in names
    assert not [n for n in names if n.startswith("tests/")]


def test_package_is_imported_from_the_venv(installed: Installed) -> None:
    code = (
        "import json, tablettracker_backups as t\n"
        "from tablettracker_backups.web.resources import resource_dir\n"
        "print(json.dumps({'file': t.__file__, 'templates': str(resource_dir('templates')),"
        " 'static': str(resource_dir('static'))}))"
    )
    found = json.loads(_check(installed.run(installed.python, "-c", code)).stdout)
    venv = str(installed.venv.resolve())
    assert str(Path(found["file"]).resolve()).startswith(venv), found
    assert not str(Path(found["file"]).resolve()).startswith(str(ROOT))
    for folder in ("templates", "static"):
        path = Path(found[folder]).resolve()
        assert str(path).startswith(venv), found
        assert path.parent.name == "tablettracker_backups"
        assert any(path.iterdir()), f"installed {folder}/ is empty"


def test_console_script_backs_up_and_lists(installed: Installed, tmp_path: Path) -> None:
    db = make_db(tmp_path / "tablet_counter.db")
    env = {
        "BACKUPS_DATABASE": str(db),
        "BACKUPS_DIR": str(tmp_path / "backups"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
    }
    assert installed.script.exists()
    made = _check(installed.run(installed.script, "backup", "--json", env=env))
    backup_id = json.loads(made.stdout)["id"]
    listed = json.loads(_check(installed.run(installed.script, "list", "--json", env=env)).stdout)
    assert [entry["id"] for entry in listed] == [backup_id]
    assert listed[0]["verified"] is True
    assert (tmp_path / "backups" / f"{backup_id}.db.zst").exists()
    version = _check(installed.run(installed.script, "--version"))
    assert "0.1.0" in version.stdout
    bad = installed.run(installed.script, "show", "nope", env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_wheel_renders_the_dashboard(installed: Installed, tmp_path: Path) -> None:
    """The demo app from the wheel serves the dashboard with the wheel's templates and CSS."""
    code = (
        "import json, re, sys\n"
        "import tablettracker_backups.web.views as views\n"
        "from tablettracker_backups.demo import create_app\n"
        "from tablettracker_backups.backup import create_backup\n"
        "from tablettracker_backups.web.extension import get_state\n"
        "app = create_app({'INSTANCE_PATH': sys.argv[1], 'TESTING': True})\n"
        "with app.app_context():\n"
        "    create_backup(get_state().settings)\n"
        "client = app.test_client()\n"
        "login = client.get('/login').get_data(as_text=True)\n"
        'token = re.search(r\'name="csrf_token" value="([^"]+)"\', login).group(1)\n'
        "client.post('/login', data={'username': 'admin', 'csrf_token': token,\n"
        "            'password': app.config['DEMO_PASSWORD']})\n"
        "page = client.get('/admin/backups/')\n"
        "css = client.get('/admin/backups/_static/backups.css')\n"
        "print(json.dumps({'status': page.status_code, 'html': page.get_data(as_text=True),\n"
        "                  'css': css.status_code, 'views': views.__file__}))\n"
        "css.close()\n"
    )
    found = json.loads(
        _check(installed.run(installed.python, "-c", code, tmp_path / "instance")).stdout
    )
    assert str(Path(found["views"]).resolve()).startswith(str(installed.venv.resolve()))
    assert found["status"] == 200, found["html"][:500]
    assert found["css"] == 200
    assert "Size over time" in found["html"] and "<svg" in found["html"]
    assert '<a class="brand"' in found["html"]  # inside the demo's layout


def test_dependencies_come_from_the_environment_running_the_tests(installed: Installed) -> None:
    """Inside a virtual environment (the README's test command makes one), the wheel's venv
    must see that environment's packages, not the base interpreter's (on a stock Debian the
    base has no Flask at all)."""
    import flask
    import zstandard

    code = "import json, flask, zstandard; print(json.dumps([flask.__file__, zstandard.__file__]))"
    found = json.loads(_check(installed.run(installed.python, "-c", code)).stdout)
    assert found == [flask.__file__, zstandard.__file__]
