#!/usr/bin/env python
"""Django's command-line utility for the newsroom example (``python manage.py check``).

``manage.py runserver`` serves the Django pages but not the streams: they are
mounted in ``newsroom/wsgi.py``, which gunicorn serves (see its docstring).
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "newsroom.settings")
    from django.core.management import execute_from_command_line  # type: ignore[import-untyped]

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
