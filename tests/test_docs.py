"""The documentation site (issue 13, "Real documentation"): ``docs/`` builds
with Sphinx, warnings as errors, and its pages and API reference are there."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

import wsgi_eventsource

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Sphinx takes about 5 s here; the bound only stops a hung build.
BUILD_TIMEOUT = 100


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The HTML site, built once for the module the way a release would be:
    ``sphinx-build -W --keep-going``, so that a reST error in a page or a
    docstring, a broken reference or a page outside the toctree fails."""
    out = tmp_path_factory.mktemp("html")
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, f"sphinx-build failed:\n{done.stdout}\n{done.stderr}"
    assert not done.stderr.strip(), done.stderr  # -q: only warnings and errors are printed
    return out


def anchors(page: pathlib.Path) -> set[str]:
    """The ``id`` of every element of *page*: autodoc gives each documented
    object its full dotted name as the id."""
    return set(re.findall(r'id="([^"]+)"', page.read_text()))


@pytest.mark.parametrize(
    "page",
    [
        "index",
        "quickstart",
        "recipes",
        "streams",
        "channels",
        "replay",
        "multiplexing",
        "security",
        "hub",
        "deployment",
        "operations",
        "scaling",
        "reliability",
        "faq",
        "performance",
        "benchmarks",
        "api",
        "changelog",
        "development",
    ],
)
def test_every_page_is_built(site: pathlib.Path, page: str) -> None:
    """Issue 13: quick start, concepts, security, deployment, operations,
    FAQ, the generated benchmarks, scaling, changelog and API reference."""
    assert (site / f"{page}.html").is_file()


def test_the_api_page_documents_every_public_name(site: pathlib.Path) -> None:
    """Issue 13, "API reference from the docstrings via autodoc": every name
    of ``wsgi_eventsource.__all__`` has its entry (so a new public name that
    is left out of docs/api.rst fails here), and so do the methods and
    helpers the other pages point to."""
    documented = anchors(site / "api.html")
    public = {f"wsgi_eventsource.{name}" for name in wsgi_eventsource.__all__ if name != "__version__"}
    assert public - documented == set()
    assert {
        "wsgi_eventsource.RedisBroker.from_client",
        "wsgi_eventsource.RedisBroker.check",
        "wsgi_eventsource.EventSource.refuse",
        "wsgi_eventsource.TokenAuth.can_subscribe",
        "wsgi_eventsource.auth.mint",
        "wsgi_eventsource.app.spread_retry",
        "wsgi_eventsource.brokers.redis.parse_redis_url",
        "wsgi_eventsource.brokers.parse_cursor",
        "wsgi_eventsource.brokers.base.STREAM_RESET",
        "wsgi_eventsource.app.REFUSAL_REASONS",
        "wsgi_eventsource.hub.Hub",
        "wsgi_eventsource.client.follow",
        "wsgi_eventsource.gunicorn_hooks.post_worker_init",
    } - documented == set()


def test_the_api_page_shows_the_docstrings(site: pathlib.Path) -> None:
    """The entries carry their docstrings' text, not only the signatures."""
    api = (site / "api.html").read_text()
    assert "A broker for the Redis that" in api  # RedisBroker.from_client
    assert "Signed tokens (JWT)" in api  # the module docstring of wsgi_eventsource.auth


def test_the_deployment_page_names_the_redis_urls(site: pathlib.Path) -> None:
    """Issue 13, deployment: Sentinel and Cluster URLs and ``from_client``."""
    text = (site / "deployment.html").read_text()
    assert "redis+sentinel://" in text
    assert "redis+cluster://" in text
    assert "?partitions=16" in text
    assert "RedisBroker.from_client" in text


def test_the_changelog_page_is_changes_rst(site: pathlib.Path) -> None:
    """The changelog page includes CHANGES.rst rather than copying it."""
    first_entry = re.search(r"^- (.+)$", (ROOT / "CHANGES.rst").read_text(), re.M)
    assert first_entry is not None
    words = re.sub(r"``|\*", "", first_entry.group(1)).split()[:3]
    text = re.sub(r"<[^>]+>", "", (site / "changelog.html").read_text())
    assert " ".join(words) in " ".join(text.split())
