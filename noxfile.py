"""The unit and in-process server tests on the Pythons the main suite does not
run on (issue 13: every Python the package claims).

``bash .ci/test`` runs the whole suite once, on the main ``.venv`` that
``.ci/setup`` makes (:data:`FULL_SUITE_PYTHON`), and this session on each of
:data:`PYTHONS`: ``.venv/bin/nox`` (or ``nox -s tests-3.12``; extra arguments
after ``--`` go to pytest). Together they are the Pythons the classifiers in
``pyproject.toml`` list (``tests/test_pythons.py`` checks it).

Each Python gets its own virtualenv under ``.nox/``, kept between runs; the
package is installed editable and the dependencies are installed again only
when ``pyproject.toml`` or the install command changed (a stamp in the
virtualenv), so a re-run costs the tests alone. ``nox --reuse-venv=no`` starts
afresh.

The interpreters come from pyenv (``$PYENV_ROOT``, by default ``~/.pyenv``),
as on the development and CI machines: its ``versions/3.X.Y/bin`` go first on
``PATH``, so its shims, which fail for a version not selected, are never what
runs. A Python missing from a pyenv that exists fails the run, naming it.
Without pyenv at all, a Python found on ``PATH`` is used and a missing one is
skipped with a warning (nox says which): on such a machine there is nothing
to install it from.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import sys

import nox
import nox.project
from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parent

#: The Python of the main ``.venv`` (``python3`` on the machines: pyenv's
#: global), which runs the whole suite, ruff and mypy.
FULL_SUITE_PYTHON = "3.11"

#: The other Pythons ``requires-python`` admits, each running
#: :data:`UNIT_TEST_FILES`; the oldest is the floor of ``requires-python``.
PYTHONS = ("3.10", "3.12", "3.13")

#: The tests that need no process but redis-server and the tests' own
#: (gunicorn, nginx, Chromium, Node and the hub's CLI are left to the full
#: suite): the wire format, brokers, apps, cursors, multiplexing, tokens, and
#: the gevent.pywsgi and werkzeug servers in this process. 45 to 90 s a Python
#: on the 2-core machines, by their load (the whole suite: about 7 min).
UNIT_TEST_FILES = (
    "tests/test_encoding.py",
    "tests/test_exports.py",
    "tests/test_app.py",
    "tests/test_brokers.py",
    "tests/test_redis_urls.py",
    "tests/test_cursor.py",
    "tests/test_multiplex.py",
    "tests/test_auth.py",
    "tests/test_server_pywsgi.py",
    "tests/test_server_werkzeug.py",
    "tests/test_fuzz.py",
)

#: The tools of the ``test`` extra that only the full suite needs: servers run
#: as processes, the browser, the examples' frameworks, lint, packaging.
FULL_SUITE_ONLY = frozenset(
    {"gunicorn", "playwright", "flask", "django", "matplotlib", "mypy", "ruff", "build", "twine", "nox"}
)

#: The extras the unit tests import (redis-py, prometheus-client, PyJWT).
EXTRAS = "redis,metrics,jwt"

#: Where the stamp of the last install lives in a session's virtualenv.
STAMP = "wsgi-eventsource-install.json"

nox.options.sessions = ["tests"]
nox.options.reuse_venv = "yes"
# Nothing can be downloaded but packages: an interpreter is there or not.
nox.options.download_python = "never"
# A kept virtualenv whose interpreter is no longer the one found (pyenv moved
# from 3.12.1 to 3.12.5, say) is made anew rather than reused broken.
os.environ.setdefault("NOX_ENABLE_STALENESS_CHECK", "1")


def pyenv_bin(root: pathlib.Path, python: str) -> pathlib.Path | None:
    """The ``bin`` directory of pyenv's newest install of *python*.

    :param root: pyenv's root directory.
    :param python: a minor version such as ``"3.12"``.
    :return: e.g. ``root/versions/3.12.1/bin``, or None if none is installed.
    """
    installs = []
    for path in (root / "versions").glob(f"{python}.*"):
        patch = re.fullmatch(re.escape(python) + r"\.(\d+)", path.name)
        if patch and (path / "bin" / f"python{python}").exists():
            installs.append((int(patch.group(1)), path / "bin"))
    return max(installs)[1] if installs else None


def find_interpreters() -> None:
    """Put pyenv's interpreters of :data:`PYTHONS` first on ``PATH``, where
    nox looks for ``python3.X``, and decide what a missing one means."""
    root = pathlib.Path(os.environ.get("PYENV_ROOT") or pathlib.Path.home() / ".pyenv")
    if not root.is_dir():
        print(
            f"WARNING: no pyenv at {root}: the Pythons {', '.join(PYTHONS)} are looked for on PATH only,"
            " and a missing one is SKIPPED (not tested).",
            file=sys.stderr,
        )
        nox.options.error_on_missing_interpreters = False
        return
    found = {python: pyenv_bin(root, python) for python in PYTHONS}
    missing = [python for python, bin_dir in found.items() if bin_dir is None]
    if missing:
        print(
            f"ERROR: pyenv at {root} has no Python {', '.join(missing)} (pyenv install {' '.join(missing)});"
            " its sessions fail.",
            file=sys.stderr,
        )
    bin_dirs = [str(bin_dir) for bin_dir in found.values() if bin_dir is not None]
    os.environ["PATH"] = os.pathsep.join([*bin_dirs, os.environ.get("PATH", "")])
    nox.options.error_on_missing_interpreters = True


def unit_test_requirements() -> list[str]:
    """The ``test`` extra of ``pyproject.toml`` less :data:`FULL_SUITE_ONLY`,
    so that the version floors have one source."""
    extra: list[str] = nox.project.load_toml(ROOT / "pyproject.toml")["project"]["optional-dependencies"]["test"]
    return [spec for spec in extra if Requirement(spec).name.lower() not in FULL_SUITE_ONLY]


def install_unless_done(session: nox.Session, *args: str) -> None:
    """``pip install`` *args* into the session's virtualenv, unless the last
    install there had the same *args* and the same ``pyproject.toml``.

    :param session: the running session.
    :param args: pip's arguments.
    """
    wanted = {
        "args": list(args),
        "pyproject": hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest(),
    }
    stamp = pathlib.Path(session.virtualenv.location) / STAMP
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        session.log("Dependencies unchanged since the last install: not installing.")
        return
    stamp.unlink(missing_ok=True)
    session.install(*args)
    stamp.write_text(json.dumps(wanted))


find_interpreters()


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The unit and in-process server tests (:data:`UNIT_TEST_FILES`)."""
    install_unless_done(session, "--disable-pip-version-check", "-e", f".[{EXTRAS}]", *unit_test_requirements())
    session.run("python", "-m", "pytest", "-q", *UNIT_TEST_FILES, *session.posargs)
