"""What a release needs: ``python -m build`` makes an sdist and a wheel that
``twine check`` accepts; the wheel holds the package with its demo page and
``py.typed``, installs in a fresh virtualenv and runs the hub there; the sdist
is the whole source tree, tests included, and its tests run from it.

The build and the installs use the package index pip is set up for (the build
fetches setuptools into its isolated environment, the venv fetches gevent,
werkzeug and gunicorn; pip's cache makes a second run quick)."""

from __future__ import annotations

import email.parser
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import wsgi_eventsource
from tests.conftest import ROOT, ServerProcess
from tests.helpers import StreamClient

pytestmark = pytest.mark.server

NAME = "wsgi_eventsource"
VERSION = wsgi_eventsource.__version__
PREFIX = f"{NAME}-{VERSION}"
TOKEN = "packaging-test-token"
PRINT_MODULE_PATH = "import wsgi_eventsource; print(wsgi_eventsource.__file__)"


@dataclass
class Dist:
    sdist: pathlib.Path
    wheel: pathlib.Path


def run(args: list[str], cwd: str | pathlib.Path = ROOT, timeout: float = 100) -> subprocess.CompletedProcess[str]:
    """Run *args*; fail with its output if it fails."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def git_files() -> list[str] | None:
    """The files git tracks in this checkout, or None outside one (as when
    the tests run from an unpacked sdist)."""
    if shutil.which("git") is None:
        return None
    done = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return None
    return [name for name in done.stdout.splitlines() if os.path.exists(os.path.join(ROOT, name))]


#: What a working copy has that a clean checkout has not (copied without, when
#: this is not a git checkout).
UNTRACKED = shutil.ignore_patterns(
    ".git", ".venv", "*.egg-info", "build", "dist", "__pycache__", ".*_cache", ".hypothesis", "node_modules"
)


def clean_source(target: pathlib.Path) -> pathlib.Path:
    """A copy of the source tree as a fresh clone has it: the files git tracks
    (or, outside git, the tree without caches and build output). Not the
    working copy itself: setuptools adds every file named in a stale
    ``*.egg-info/SOURCES.txt`` to the sdist, which would hide a missing
    MANIFEST.in line."""
    tracked = git_files()
    if tracked is None:
        shutil.copytree(ROOT, target, ignore=UNTRACKED)
        return target
    for name in tracked:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.join(ROOT, name), target / name)
    return target


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    """The sdist and the wheel, built once for the module as a release would
    be: ``python -m build`` on a clean source tree, in isolated environments,
    the wheel from the sdist."""
    source = clean_source(tmp_path_factory.mktemp("source") / "wsgi-eventsource")
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", str(out), str(source)], timeout=110)
    return Dist(sdist=out / f"{PREFIX}.tar.gz", wheel=out / f"{PREFIX}-py3-none-any.whl")


def test_build_makes_an_sdist_and_a_wheel_that_twine_accepts(dist: Dist) -> None:
    """Issue 13, packaging: both files, and ``twine check --strict`` passes
    them (the README renders as the project's description on the index)."""
    assert sorted(p.name for p in dist.sdist.parent.iterdir()) == sorted([dist.sdist.name, dist.wheel.name])
    done = run([sys.executable, "-m", "twine", "check", "--strict", str(dist.sdist), str(dist.wheel)])
    assert done.stdout.count("PASSED") == 2, done.stdout


def test_the_wheel_holds_the_package_its_demo_page_and_its_metadata(dist: Dist) -> None:
    """Issue 13, packaging: the wheel has every module of the package, the
    demo page the hub serves, ``py.typed`` (PEP 561), the license, the
    console script, and nothing of the tests or the benchmarks."""
    with zipfile.ZipFile(dist.wheel) as wheel:
        names = set(wheel.namelist())
        metadata = email.parser.Parser().parsestr(wheel.read(f"{PREFIX}.dist-info/METADATA").decode())
        entry_points = wheel.read(f"{PREFIX}.dist-info/entry_points.txt").decode()
        demo = wheel.read(f"{NAME}/static/demo.html")
    package = pathlib.Path(ROOT, NAME)
    modules = {p.relative_to(ROOT).as_posix() for p in package.rglob("*.py")}
    assert modules <= names
    assert {f"{NAME}/py.typed", f"{NAME}/static/demo.html", f"{PREFIX}.dist-info/licenses/LICENSE"} <= names
    assert demo == (package / "static" / "demo.html").read_bytes()
    assert {name.split("/")[0] for name in names} == {NAME, f"{PREFIX}.dist-info"}
    assert metadata["Name"] == "wsgi-eventsource"
    assert metadata["Version"] == VERSION
    assert metadata["License-Expression"] == "MIT"
    assert metadata["Requires-Python"] == ">=3.10"
    assert metadata["Description-Content-Type"] == "text/x-rst"
    assert {"redis", "gunicorn", "metrics", "jwt"} <= set(metadata.get_all("Provides-Extra") or [])
    assert "wsgi-eventsource = wsgi_eventsource.cli:main" in entry_points


def test_the_sdist_is_the_source_tree(dist: Dist) -> None:
    """Issue 13, packaging: the sdist holds every file git tracks (the tests
    with their conftest, helpers, apps and Node client; examples, nginx, docs,
    bench, .ci) but the .gitignore files, plus the license and what the build
    adds (PKG-INFO, the egg-info): so nothing the tests or the docs need is
    left out when a file is added, and nothing untracked (caches,
    node_modules, bench results) slips in."""
    with tarfile.open(dist.sdist) as sdist:
        members = {m.name.removeprefix(f"{PREFIX}/") for m in sdist.getmembers() if m.isfile()}
    assert {
        "README.rst",
        "CHANGES.rst",
        "LICENSE",
        "pyproject.toml",
    } <= members
    assert {"tests/__init__.py", "tests/conftest.py", "tests/helpers.py", "tests/apps/streams.py"} <= members
    tracked = git_files()
    if tracked is None:
        pytest.skip("not a git checkout: nothing to compare the sdist with")
    built = {"PKG-INFO"} | {m for m in members if m.startswith(f"{NAME}.egg-info/")}
    expected = {name for name in tracked if os.path.basename(name) != ".gitignore"}
    assert members - built == expected


def test_the_sdists_own_tests_run_from_it(dist: Dist, tmp_path: pathlib.Path) -> None:
    """Issue 13, packaging: unpacked, the sdist's tests run against the
    sdist's own package (the encoder's tables and the public names)."""
    with tarfile.open(dist.sdist) as sdist:
        sdist.extractall(tmp_path, filter="data")
    unpacked = tmp_path / PREFIX
    probe = run([sys.executable, "-c", PRINT_MODULE_PATH], cwd=unpacked)
    assert pathlib.Path(probe.stdout.strip()).is_relative_to(unpacked)
    done = run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_encoding.py",
            "tests/test_exports.py",
        ],
        cwd=unpacked,
    )
    assert " passed" in done.stdout, done.stdout  # run() failed already if a test failed or none ran


@pytest.fixture
def fresh_venv(tmp_path: pathlib.Path) -> pathlib.Path:
    """An empty virtualenv (no system site-packages); returns its bin/."""
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], timeout=60)
    return venv / "bin"


@pytest.fixture
def started() -> Iterator[list[ServerProcess]]:
    servers: list[ServerProcess] = []
    yield servers
    for server in servers:
        server.stop()


def pip_install(bin_dir: pathlib.Path, requirement: str) -> None:
    run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", requirement])


def test_the_wheel_installs_and_runs_the_hub_in_a_fresh_venv(
    dist: Dist, fresh_venv: pathlib.Path, tmp_path: pathlib.Path, started: list[ServerProcess]
) -> None:
    """Issue 13, packaging: in a fresh virtualenv the wheel installs with
    gevent and werkzeug only, and ``wsgi-eventsource serve`` then says what it
    lacks; with the ``[gunicorn]`` extra the console script runs the hub from
    the venv's own copy: the demo page, a stream and a publish end to end."""
    pip_install(fresh_venv, str(dist.wheel))
    lacking = subprocess.run(
        [str(fresh_venv / "wsgi-eventsource"), "serve"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert lacking.returncode != 0
    assert "pip install 'wsgi-eventsource[gunicorn]'" in lacking.stderr

    pip_install(fresh_venv, f"{dist.wheel}[gunicorn]")
    where = run([str(fresh_venv / "python"), "-c", PRINT_MODULE_PATH], cwd=tmp_path)
    assert pathlib.Path(where.stdout.strip()).is_relative_to(fresh_venv.parent)  # not this checkout
    run([str(fresh_venv / "python"), "-m", "wsgi_eventsource", "serve", "--help"], cwd=tmp_path)

    hub = ServerProcess(
        [str(fresh_venv / "wsgi-eventsource"), "serve", "--port", "0", "--publish-token", TOKEN],
        ready_pattern=r"Listening at: http://127\.0\.0\.1:(\d+)",
        stop_signal=signal.SIGINT,
    )
    started.append(hub)
    page = StreamClient(hub.port, "/")
    assert page.status == 200
    assert page.headers["content-type"].startswith("text/html")
    with zipfile.ZipFile(dist.wheel) as wheel:
        assert page.read_body() == wheel.read(f"{NAME}/static/demo.html")
    page.close()

    stream = StreamClient(hub.port, "/events/release")
    assert stream.status == 200
    stream.wait_for(lambda c: b"id: " in c.raw)  # subscribed
    publisher = StreamClient(
        hub.port,
        "/publish/release",
        method="POST",
        body=b"installed from the wheel",
        headers={"Content-Type": "text/plain", "Authorization": f"Bearer {TOKEN}"},
    )
    answer = publisher.read_body()
    assert publisher.status == 201, answer
    publisher.close()
    event = stream.events(1)[0]
    assert (event.data, event.last_event_id) == ("installed from the wheel", json.loads(answer)["id"])
    stream.close()
