"""A minimal Django site with live updates: Django renders and publishes,
wsgi-eventsource streams (mounted beside Django in :mod:`newsroom.wsgi`)."""
