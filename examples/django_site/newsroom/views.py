"""The page that streams the news, and the form view that publishes to it."""

from __future__ import annotations

from django.http import (  # type: ignore[import-untyped]
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseRedirect,
)
from django.shortcuts import render  # type: ignore[import-untyped]
from django.urls import reverse  # type: ignore[import-untyped]
from django.views.decorators.http import require_GET, require_POST  # type: ignore[import-untyped]

from wsgi_eventsource import BrokerUnavailable, InvalidEvent

from .live import CHANNEL, broker

MAX_TEXT = 500  # characters of one message


@require_GET  # type: ignore[untyped-decorator]  # Django ships no type hints
def index(request: HttpRequest) -> HttpResponse:
    """The page: a form that posts to ``/say``, and the channel's events as they come."""
    return render(request, "newsroom/index.html", {"channel": CHANNEL, "max_text": MAX_TEXT})


@require_POST  # type: ignore[untyped-decorator]
def say(request: HttpRequest) -> HttpResponse:
    """Publish the form's ``text`` to every open page, then back to the page."""
    text = request.POST.get("text", "").strip()
    if not text:
        return HttpResponseBadRequest("Say something: the text field is empty\n", content_type="text/plain")
    if len(text) > MAX_TEXT:
        return HttpResponseBadRequest(f"The text is over {MAX_TEXT} characters\n", content_type="text/plain")
    try:
        broker.publish(CHANNEL, text)
    except BrokerUnavailable:
        message = "Not published: the broker cannot be reached, try again\n"
        return HttpResponse(message, status=503, content_type="text/plain")
    except InvalidEvent as exc:
        return HttpResponseBadRequest(f"Not published: {exc}\n", content_type="text/plain")
    # 303: the browser follows with a GET (the usual post/redirect/get).
    response = HttpResponseRedirect(reverse("index"))
    response.status_code = 303
    return response
