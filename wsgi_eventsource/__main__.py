"""``python -m wsgi_eventsource serve``: the same as the ``wsgi-eventsource`` command."""

from .cli import main

if __name__ == "__main__":
    main()
