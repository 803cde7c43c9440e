"""Django's routes. ``/eventsource/`` is not here: ``wsgi.py`` sends it to
wsgi-eventsource before Django sees the request."""

from __future__ import annotations

from django.urls import path  # type: ignore[import-untyped]

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("say", views.say, name="say"),
]
