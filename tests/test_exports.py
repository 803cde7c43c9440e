"""The public names: everything in ``__all__`` exists and is documented."""

from __future__ import annotations

import inspect
from importlib.metadata import version

import wsgi_eventsource


def test_all_names_exist_and_are_documented() -> None:
    for name in wsgi_eventsource.__all__:
        assert hasattr(wsgi_eventsource, name), name
        obj = getattr(wsgi_eventsource, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert (obj.__doc__ or "").strip(), f"{name} has no docstring"


def test_public_methods_are_documented() -> None:
    for cls in (wsgi_eventsource.EventSource, wsgi_eventsource.Connection, wsgi_eventsource.Event):
        for name, member in vars(cls).items():
            if name.startswith("_") or not (inspect.isfunction(member) or isinstance(member, property)):
                continue
            assert (member.__doc__ or "").strip(), f"{cls.__name__}.{name} has no docstring"


def test_nothing_public_is_missing_from_all() -> None:
    public = {n for n in dir(wsgi_eventsource) if not n.startswith("_") and n[0].isupper()}
    assert public <= set(wsgi_eventsource.__all__)


def test_version_is_the_package_metadata_version() -> None:
    assert version("wsgi-eventsource") == wsgi_eventsource.__version__


def test_readme_is_valid_restructuredtext() -> None:
    import pathlib

    import docutils.core

    text = (pathlib.Path(__file__).parent.parent / "README.rst").read_text()
    docutils.core.publish_doctree(text, settings_overrides={"report_level": 2, "halt_level": 2})
    before_the_example = text.split("\nExample\n")[0]
    assert "bash .ci/demo" in before_the_example  # the two commands come first
    assert "bash .ci/test" in before_the_example


def test_the_readmes_links_into_the_docs_lead_to_pages() -> None:
    """Issue 13, the README as the landing page: every ``<docs/....rst>`` and
    ``<CHANGES.rst>`` link names a file of the source tree (the sdist has
    them too), and every page of the site is linked from it."""
    import pathlib
    import re

    root = pathlib.Path(__file__).parent.parent
    targets = re.findall(r"`[^`<]+<([^>]+)>`_", (root / "README.rst").read_text())
    assert targets
    for target in targets:
        assert (root / target).is_file(), f"README.rst links to {target}, which does not exist"
    pages = {p.relative_to(root).as_posix() for p in (root / "docs").glob("*.rst")}
    unlinked = pages - {"docs/index.rst", "docs/changelog.rst"} - set(targets)
    assert not unlinked, f"README.rst's Documentation list has no link to {sorted(unlinked)}"
