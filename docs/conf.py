"""Sphinx configuration of the documentation site.

``tests/test_docs.py`` builds it with ``sphinx-build -W --keep-going -b html docs <out>``:
every warning (a reST error in a docstring, a broken reference, a page left
out of the toctree) fails the tests. Nothing here reaches the network.
"""

from __future__ import annotations

import pathlib
import sys

# The package of this source tree (a clone or an unpacked sdist), even when
# another copy is installed.
ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import wsgi_eventsource  # noqa: E402

project = "wsgi-eventsource"
author = "wsgi-eventsource developers"
copyright = "wsgi-eventsource developers"
version = release = wsgi_eventsource.__version__

extensions = ["sphinx.ext.autodoc"]
# The docstrings are reST with :param: fields, in the order of the source.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
# Defaults as written (``max_pending=1024 * 1024``), not as evaluated.
autodoc_preserve_defaults = True

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_title = f"wsgi-eventsource {release}"
html_show_sourcelink = False
