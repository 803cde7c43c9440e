"""Issue 13 (every Python it claims): the classifiers and ``requires-python``
name exactly the Pythons the tests run on, the full suite here and
``noxfile.py``'s unit tests on the others, and the noxfile finds its
interpreters in pyenv, failing loudly for a missing one and skipping (with a
warning) only where there is no pyenv at all."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import nox.project
import pytest
from packaging.specifiers import SpecifierSet

import noxfile
from tests.conftest import ROOT

CLASSIFIER_PREFIX = "Programming Language :: Python :: "


def project_table() -> dict[str, object]:
    table: dict[str, object] = nox.project.load_toml(pathlib.Path(ROOT, "pyproject.toml"))["project"]
    return table


def claimed_pythons() -> set[str]:
    classifiers = project_table()["classifiers"]
    assert isinstance(classifiers, list)
    versions = {str(c).removeprefix(CLASSIFIER_PREFIX) for c in classifiers if str(c).startswith(CLASSIFIER_PREFIX)}
    return {v for v in versions if v.startswith("3.")}


def minor(version: str) -> tuple[int, int]:
    major, minor_part = version.split(".")
    return int(major), int(minor_part)


def test_classifiers_are_the_pythons_the_tests_run_on() -> None:
    """Issue 13: requires-python >= 3.10 while only 3.11 was tested and no
    classifier named a version."""
    tested = {*noxfile.PYTHONS, noxfile.FULL_SUITE_PYTHON}
    assert claimed_pythons() == tested
    assert len(tested) == len(noxfile.PYTHONS) + 1  # the full suite's Python is not also a nox session's


def test_requires_python_admits_every_tested_python_and_starts_at_the_oldest() -> None:
    """Issue 13: the floor of requires-python is a tested Python, so no
    admitted Python goes untested below it."""
    requires = SpecifierSet(str(project_table()["requires-python"]))
    tested = sorted({*noxfile.PYTHONS, noxfile.FULL_SUITE_PYTHON}, key=minor)
    assert all(f"{v}.0" in requires for v in tested), (requires, tested)
    oldest = minor(tested[0])
    assert f"{oldest[0]}.{oldest[1] - 1}.99" not in requires, (requires, tested)


def test_the_main_venv_runs_the_full_suite_python() -> None:
    """Issue 13: the classifiers claim FULL_SUITE_PYTHON because the main
    .venv (.ci/setup's) runs the whole suite on it."""
    if pathlib.Path(sys.prefix).resolve() != pathlib.Path(ROOT, ".venv").resolve():
        pytest.skip("not the main .venv")
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == noxfile.FULL_SUITE_PYTHON


def test_the_ci_runs_the_noxfile_and_its_test_files_exist() -> None:
    """Issue 13: the test command runs the sessions, on files that exist."""
    assert ".venv/bin/nox" in pathlib.Path(ROOT, ".ci", "test").read_text()
    for name in noxfile.UNIT_TEST_FILES:
        assert pathlib.Path(ROOT, name).is_file(), name


def test_unit_test_requirements_are_the_test_extra_without_the_full_suite_tools() -> None:
    """The sessions' floors come from the test extra; what only the full suite
    needs is not installed three more times."""
    requirements = noxfile.unit_test_requirements()
    extra = project_table()["optional-dependencies"]
    assert isinstance(extra, dict)
    assert set(requirements) <= set(extra["test"])
    assert any(r.startswith("pytest") for r in requirements)
    assert not any(r.lower().startswith(("playwright", "gunicorn", "mypy", "nox")) for r in requirements)


def fake_python(root: pathlib.Path, version: str, python: str) -> pathlib.Path:
    bin_dir = root / "versions" / version / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / f"python{python}").touch()
    return bin_dir


def test_pyenv_bin_picks_the_newest_patch_of_that_minor(tmp_path: pathlib.Path) -> None:
    fake_python(tmp_path, "3.12.1", "3.12")
    newest = fake_python(tmp_path, "3.12.10", "3.12")
    fake_python(tmp_path, "3.120.0", "3.120")
    (tmp_path / "versions" / "3.12.11" / "bin").mkdir(parents=True)  # no interpreter in it
    fake_python(tmp_path, "3.12.12t", "3.12")  # another build, not this minor's plain one
    assert noxfile.pyenv_bin(tmp_path, "3.12") == newest
    assert noxfile.pyenv_bin(tmp_path, "3.13") is None
    assert noxfile.pyenv_bin(tmp_path / "absent", "3.12") is None


def run_nox(*args: str, pyenv_root: pathlib.Path, ci: bool) -> subprocess.CompletedProcess[str]:
    """Run this checkout's nox with *pyenv_root* and a PATH with no Python but
    the one running these tests (no pyenv shims, no pyenv versions); *ci*
    sets ``CI``, which turns nox's own default to failing on a missing one."""
    env = {"PATH": os.path.dirname(sys.executable), "PYENV_ROOT": str(pyenv_root), "HOME": str(pyenv_root.parent)}
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "nox",
            "-f",
            str(pathlib.Path(ROOT, "noxfile.py")),
            "--envdir",
            str(pyenv_root.parent / "envs"),
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def other_pythons_on_path() -> list[str]:
    return [p for p in noxfile.PYTHONS if pathlib.Path(os.path.dirname(sys.executable), f"python{p}").exists()]


def test_a_python_missing_from_pyenv_fails_the_run_naming_it(tmp_path: pathlib.Path) -> None:
    """Issue 13: with pyenv there but a version missing, the run fails; a
    skipped interpreter would pass CI without testing it (nox skips one
    unless ``CI`` is set; the noxfile fails it anyway)."""
    if other_pythons_on_path():
        pytest.skip(f"{other_pythons_on_path()} found outside pyenv")
    root = tmp_path / "pyenv"
    (root / "versions").mkdir(parents=True)
    done = run_nox("-s", f"tests-{noxfile.PYTHONS[-1]}", pyenv_root=root, ci=False)
    assert done.returncode != 0, done.stdout + done.stderr
    assert f"has no Python {', '.join(noxfile.PYTHONS)}" in done.stderr, done.stderr


def test_without_pyenv_a_missing_python_is_skipped_with_a_warning(tmp_path: pathlib.Path) -> None:
    """Issue 13: a machine with no pyenv at all skips, and says so, even on CI
    (where nox would fail it)."""
    if other_pythons_on_path():
        pytest.skip(f"{other_pythons_on_path()} found outside pyenv")
    done = run_nox("-s", f"tests-{noxfile.PYTHONS[-1]}", pyenv_root=tmp_path / "no-pyenv", ci=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING: no pyenv at" in done.stderr
    assert "SKIPPED" in done.stderr
    assert "skipped" in done.stderr.lower()
