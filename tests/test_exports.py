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
    assert "bash .ci/test" in text.split("Quick start")[0]  # the two commands come first
