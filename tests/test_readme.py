"""The README's facts, commands and examples, checked against the code and run against a live app."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from models import User, db
from service import create_app
from service.config import load_config

pytestmark = pytest.mark.tdd_green

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
VENV_BIN = Path(sys.executable).parent


def _section(title):
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def _blocks(title, language):
    return re.findall(rf"```{language}\n(.*?)```", _section(title), re.S)


def _project_dir(tmp_path):
    """A directory with the .venv commands the README calls (python, the generator; pip does nothing)."""
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    commands = {"python": f'exec "{sys.executable}" "$@"',
                "openapi-python-client": f'exec "{VENV_BIN / "openapi-python-client"}" "$@"', "pip": "exit 0"}
    for name, command in commands.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{command}\n")
        (bin_dir / name).chmod(0o755)
    return tmp_path


def _bash(script, cwd, url):
    # Every curl fails on an error status, so a step that goes wrong stops the walk-through.
    strict = 'set -euo pipefail\ncurl() { command curl --fail-with-body --max-time 30 "$@"; }\n'
    return subprocess.run(["bash", "-c", strict + script], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SERVICE_URL": url})


def test_the_walk_through_runs_against_a_live_app(live_service, tmp_path):
    (script,) = _blocks("Walk-through", "sh")

    run = _bash(script, _project_dir(tmp_path), live_service.url)

    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"304$", run.stdout, re.M) and re.search(r"204$", run.stdout, re.M), run.stdout
    with live_service.app.app_context():
        alice = db.session.query(User).filter_by(username="alice").one()
    profile = live_service.app.test_client().get(f"/api/v1/users/{alice.id}/profile").json
    assert (profile["bio"], profile["flyer_count"], profile["profile_picture_url"]) == ("Bakery on Main St.", 0, None)


def test_the_walk_through_edits_and_deletes_the_flyer_it_created(live_service, tmp_path, register, add_flyer):
    other, _ = register("demo")
    demo_flyer = add_flyer(other)
    (script,) = _blocks("Walk-through", "sh")

    run = _bash(script, _project_dir(tmp_path), live_service.url)

    assert run.returncode == 0, run.stdout + run.stderr
    assert f"/flyers/{demo_flyer}" not in script
    assert live_service.app.test_client().get(f"/api/v1/flyers/{demo_flyer}").json["title"] == "Bakery sale"


def test_the_client_generation_steps_give_a_client_that_reads_the_service(live_service, tmp_path, register):
    register("alice", password="secret-pass")
    (generate,) = _blocks("Generate a client", "sh")
    (use,) = _blocks("Generate a client", "python")
    cwd = _project_dir(tmp_path)

    generated = _bash(generate, cwd, live_service.url)
    used = subprocess.run([sys.executable, "-c", use], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SERVICE_URL": live_service.url})

    assert generated.returncode == 0, generated.stdout + generated.stderr
    assert used.returncode == 0, used.stderr
    assert used.stdout.strip() == "0 []"


def test_the_testing_example_passes_in_a_project_of_its_own(tmp_path, live_service_port):
    conftest, example = _blocks("Testing your code against it", "python")
    (tmp_path / "conftest.py").write_text(conftest)
    (tmp_path / "test_example.py").write_text(example)

    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-W", "error", "-p", "no:cacheprovider",
                          f"--live-service-port={live_service_port}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})

    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout


def test_the_testing_example_is_about_ten_lines():
    example = _blocks("Testing your code against it", "python")[1]

    body = [line for line in example.splitlines() if line.strip() and not line.startswith(("import", "def"))]

    assert len(body) <= 12


def test_the_embedded_database_is_where_the_readme_says(tmp_path):
    app = create_app({"SQLALCHEMY_DATABASE_URI": load_config({})["SQLALCHEMY_DATABASE_URI"],
                      "MEDIA_ROOT": str(tmp_path)})

    with app.app_context():
        path = Path(db.engine.url.database)
        db.engine.dispose()

    assert path == ROOT / "instance" / "profile-service.db"
    assert "SQLite in `instance/profile-service.db`" in _section("Run it")


def test_the_test_database_the_readme_creates_is_the_one_database_url_names():
    section = _section("Test it")

    created = re.search(r"createdb -h 127\.0\.0\.1 -U postgres (\w+)", section).group(1)
    named = re.search(r"DATABASE_URL=postgresql://postgres@127\.0\.0\.1:5432/(\w+)", section).group(1)

    assert created == named
    ci = (ROOT / ".ci" / "run").read_text()
    assert f"createdb -h 127.0.0.1 -U postgres {created}" in ci and f"5432/{created}\"" in ci


def test_the_readme_lists_every_setting():
    settings = set(re.findall(r'env\.get\("([A-Z_]+)"', (ROOT / "service" / "config.py").read_text()))

    first_cells = [line.split("|")[1] for line in _section("Configuration").splitlines() if line.startswith("| `")]
    listed = {name for cell in first_cells for name in re.findall(r"`([A-Z_]+)`", cell)}

    assert settings - listed == set()


def test_the_readme_links_the_interactive_documentation():
    assert "http://127.0.0.1:8000/docs" in README


def test_the_cli_commands_the_readme_names_exist(tmp_path):
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/x.db", "MEDIA_ROOT": str(tmp_path)})

    commands = set(app.cli.list_commands(app.app_context()))
    named = set(re.findall(r"`(create-user|seed|db upgrade)\b", README))

    assert named == {"create-user", "seed", "db upgrade"}
    assert {"create-user", "seed"} <= commands


def _install(project):
    return subprocess.run(["bash", "scripts/install.sh", "requirements.txt"], cwd=project, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def fake_project(tmp_path):
    """A copy of scripts/install.sh beside a .venv whose pip only logs that it ran."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "install.sh").write_text((ROOT / "scripts" / "install.sh").read_text())
    (tmp_path / "requirements.txt").write_text("Flask==3.1.3\n")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    (bin_dir / "pip").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'pip.log'}\n")
    (bin_dir / "pip").chmod(0o755)
    return tmp_path


def test_install_runs_pip_only_when_the_requirements_changed(fake_project):
    _install(fake_project)
    _install(fake_project)
    first = (fake_project / "pip.log").read_text().count("install")
    (fake_project / "requirements.txt").write_text("Flask==3.1.3\nPillow==13.0.0\n")
    _install(fake_project)

    assert first == 1
    assert (fake_project / "pip.log").read_text().count("install") == 2


def test_serve_and_test_scripts_install_through_the_stamped_installer():
    assert "bash scripts/install.sh requirements.txt" in (ROOT / "scripts" / "serve.sh").read_text()
    assert "bash scripts/install.sh requirements-test.txt" in (ROOT / "scripts" / "test.sh").read_text()
    assert "pip install" not in (ROOT / "scripts" / "serve.sh").read_text()
