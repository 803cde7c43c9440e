"""Issue 10: signed tokens (JWT) for subscribing and publishing, the library side.

Patterns are pure tables; everything with a request goes over real sockets to
a real ``gevent.pywsgi`` server: the channel apps (``subscriber_app``,
``publisher_app``) and a plain :class:`EventSource` with
``authorize=lambda env: auth.can_subscribe(env, "x")``. Tokens are signed by
PyJWT (or by hand, for what PyJWT would not sign), keys made by
``cryptography`` in the test.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import hmac
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import gevent
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from gevent.pywsgi import WSGIServer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from tests.helpers import StreamClient, wait_until
from wsgi_eventsource import EventSource, MemoryBroker, TokenAuth, Unauthorized
from wsgi_eventsource.auth import check_pattern, mint, pattern_matches

SECRET = "s3cret-of-the-app-that-knows-its-users"  # 38 bytes
OTHER_SECRET = "another-secret-of-someone-else-entirely"
REALM = 'Bearer realm="wsgi-eventsource"'


# -- helpers ----------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def hs256(header: str, payload: str, secret: str | bytes = SECRET) -> str:
    """A token signed by hand: for header and payload texts PyJWT would not write."""
    key = secret.encode() if isinstance(secret, str) else secret
    signing_input = f"{b64(header.encode())}.{b64(payload.encode())}"
    return f"{signing_input}.{b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())}"


def claims(
    subscribe: list[str] | None = None, publish: list[str] | None = None, ttl: float = 60, **extra: Any
) -> dict[str, Any]:
    payload: dict[str, Any] = {"exp": int(time.time() + ttl)}
    payload["eventsource"] = {"subscribe": subscribe or [], "publish": publish or []}
    payload.update(extra)
    return payload


def token(payload: dict[str, Any] | None = None, key: Any = SECRET, algorithm: str = "HS256") -> str:
    """A token for room/1 and x (subscribe and publish) unless *payload* is given."""
    if payload is None:
        payload = claims(["room/1", "x"], ["room/1"])
    encoded: str = jwt.encode(payload, key, algorithm=algorithm)
    return encoded


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


class Site:
    """The apps under test behind one real server, answering:

    - ``GET /events/<channel>`` and ``GET /events/?channel=a&channel=b``: ``subscriber_app``;
    - ``POST /publish/<channel>``: ``publisher_app``;
    - ``GET /one``: an ``EventSource`` that asks ``can_subscribe(environ, "x")``.

    Any exception out of an app is kept in :attr:`raised` (and becomes a 500).
    """

    def __init__(self, serve: Callable[..., WSGIServer], auth: TokenAuth, keepalive: float = 5) -> None:
        self.auth = auth
        self.broker = MemoryBroker(history=10)
        self.subscriber = self.broker.subscriber_app(authorize=auth.can_subscribe, keepalive=keepalive)
        self.publisher = self.broker.publisher_app(authorize=auth.can_publish)
        self.one = EventSource(
            lambda conn, environ: conn.push("hello"), authorize=lambda env: auth.can_subscribe(env, "x")
        )
        self.raised: list[BaseException] = []
        app = DispatcherMiddleware(
            self._not_found, {"/events": self.subscriber, "/publish": self.publisher, "/one": self.one}
        )
        self.port = serve(self._recording(app)).server_port

    def _recording(self, app: Any) -> Any:
        def recording(environ: Any, start_response: Any) -> Any:
            try:
                return app(environ, start_response)
            except BaseException as exc:
                self.raised.append(exc)
                raise

        return recording

    @staticmethod
    def _not_found(environ: Any, start_response: Any) -> list[bytes]:
        start_response("404 Not Found", [("Content-Length", "0")])
        return []

    def get(self, path: str, headers: dict[str, str] | None = None) -> StreamClient:
        return StreamClient(self.port, path, headers=headers)

    def subscribe(
        self, channel: str = "room/1", headers: dict[str, str] | None = None, query: str = ""
    ) -> StreamClient:
        return self.get(f"/events/{channel}" + (f"?{query}" if query else ""), headers)

    def publish(self, channel: str = "room/1", headers: dict[str, str] | None = None, query: str = "") -> StreamClient:
        path = f"/publish/{channel}" + (f"?{query}" if query else "")
        return StreamClient(
            self.port, path, method="POST", headers={"Content-Type": "text/plain", **(headers or {})}, body=b"hi"
        )

    def request(self, target: str, headers: dict[str, str] | None = None, query: str = "") -> StreamClient:
        if target == "subscriber_app":
            return self.subscribe("room/1", headers, query)
        if target == "publisher_app":
            return self.publish("room/1", headers, query)
        return self.get("/one" + (f"?{query}" if query else ""), headers)


@pytest.fixture
def site(serve: Callable[..., WSGIServer]) -> Callable[..., Site]:
    return lambda auth=None, **options: Site(serve, auth or TokenAuth(SECRET), **options)


TARGETS = ["subscriber_app", "publisher_app", "EventSource"]
OK = {"subscriber_app": 200, "publisher_app": 201, "EventSource": 200}


def assert_granted(client: StreamClient, target: str) -> None:
    assert client.status == OK[target], (client.status, client.read_body())
    if target == "publisher_app":
        assert json.loads(client.read_body())["channel"] == "room/1"
    else:
        assert client.headers["content-type"].startswith("text/event-stream")
        client.wait_for(lambda c: c.parser.comments)  # the stream's ": ok"
    client.close()


def assert_no_token(client: StreamClient) -> None:
    """401 whose challenge names no error (RFC 6750 3.1: the request had no token)."""
    body = client.read_body()
    assert client.status == 401, (client.status, body)
    assert client.headers["www-authenticate"] == REALM
    assert "text/event-stream" not in client.headers["content-type"]
    assert b"a token is required" in body


def assert_invalid_token(client: StreamClient, description: str = "") -> str:
    """401 with error="invalid_token" and a description; returns the description."""
    body = client.read_body()
    assert client.status == 401, (client.status, body)
    challenge = client.headers["www-authenticate"]
    assert challenge.startswith(REALM + ', error="invalid_token", error_description="'), challenge
    assert "text/event-stream" not in client.headers["content-type"]
    said = challenge.split('error_description="', 1)[1][:-1]
    assert said, challenge
    assert description in said, (description, said)
    assert description.encode() in body
    return said


def assert_forbidden(client: StreamClient) -> None:
    body = client.read_body()
    assert client.status == 403, (client.status, body)
    assert "www-authenticate" not in client.headers
    assert "text/event-stream" not in client.headers["content-type"]


# -- patterns ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "segments"),
    [
        pytest.param("room", ("room",), id="literal"),
        pytest.param("room/42", ("room", "42"), id="two-literals"),
        pytest.param("room/*", ("room", "*"), id="star"),
        pytest.param("*/general", ("*", "general"), id="star-first"),
        pytest.param("room/**", ("room", "**"), id="double-star-last"),
        pytest.param("**", ("**",), id="double-star-alone"),
        pytest.param("*/*/**", ("*", "*", "**"), id="stars-then-double-star"),
        pytest.param("a-b_c.d:e@f~g+h=i,j!k", ("a-b_c.d:e@f~g+h=i,j!k",), id="every-allowed-punctuation"),
        pytest.param("v1.2/...", ("v1.2", "..."), id="dots-that-are-not-dot-segments"),
    ],
)
def test_check_pattern_accepts(pattern: str, segments: tuple[str, ...]) -> None:
    assert check_pattern(pattern) == segments


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        pytest.param("room/**/x", r"'\*\*' may only be the last segment", id="double-star-not-last"),
        pytest.param("**/**", r"'\*\*' may only be the last segment", id="double-star-twice"),
        pytest.param("room*", r"segment 'room\*' is neither", id="star-inside-a-segment"),
        pytest.param("room/4*", r"segment '4\*' is neither", id="star-inside-a-later-segment"),
        pytest.param("***", r"segment '\*\*\*' is neither", id="triple-star"),
        pytest.param("", "must be a non-empty str", id="empty"),
        pytest.param("room//x", r"segment '' is neither", id="empty-segment"),
        pytest.param("room/", r"segment '' is neither", id="trailing-slash"),
        pytest.param("/room", r"segment '' is neither", id="leading-slash"),
        pytest.param("room 1", r"segment 'room 1' is neither", id="space"),
        pytest.param("room?x", r"segment 'room\?x' is neither", id="question-mark"),
        pytest.param("room/%2F", r"segment '%2F' is neither", id="percent"),
        pytest.param("caf\u00e9", "is neither", id="non-ascii"),
        pytest.param("room/.", r"segment '\.' is neither", id="dot"),
        pytest.param("room/../admin", r"segment '\.\.' is neither", id="dot-dot"),
        pytest.param(None, "must be a non-empty str", id="none"),
        pytest.param(42, "must be a non-empty str", id="int"),
    ],
)
def test_check_pattern_refuses_naming_the_problem(pattern: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_pattern(pattern)


@pytest.mark.parametrize(
    ("pattern", "channel", "matches"),
    [
        ("room/*", "room/42", True),
        ("room/*", "room/42/x", False),
        ("room/*", "room", False),
        ("room/*", "hall/42", False),
        ("room/**", "room/42", True),
        ("room/**", "room/42/x", True),
        ("room/**", "room/42/x/y/z", True),
        ("room/**", "room", False),
        ("room/**", "roomy/42", False),
        ("**", "a", True),
        ("**", "a/b/c", True),
        ("**", "room/42", True),
        ("*", "room", True),
        ("*", "room/42", False),
        ("*/general", "team/general", True),
        ("*/general", "team/random", False),
        ("*/*/**", "a/b", False),
        ("*/*/**", "a/b/c", True),
        ("room", "room", True),
        ("room", "room/42", False),
        ("room", "Room", False),  # case matters, as in channel names
        ("room/42", "room/42", True),
        ("room/42", "room/43", False),
        ("a-b_c.d:e@f~g+h=i,j!k", "a-b_c.d:e@f~g+h=i,j!k", True),
        ("a-b_c.d:e@f~g+h=i,j!k", "a-b_c.d:e@f~g+h=i,j!K", False),
        ("a-b_c.d:e@f~g+h=i,j!k/*", "a-b_c.d:e@f~g+h=i,j!k/1", True),
    ],
)
def test_pattern_matches(pattern: str, channel: str, matches: bool) -> None:
    assert pattern_matches(check_pattern(pattern), channel) is matches


# -- TokenAuth construction -------------------------------------------------------------


def ec_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or ec.SECP256R1())


def private_pem(key: Any) -> str:
    pem: bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem.decode()


def public_pem(key: Any) -> str:
    pem: bytes = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode()


P256 = ec_key()
P256_PUBLIC = public_pem(P256)
RSA_KEY = rsa.generate_private_key(65537, 2048)
ED25519_KEY = ed25519.Ed25519PrivateKey.generate()


@pytest.mark.parametrize(
    ("key", "options", "message"),
    [
        pytest.param(SECRET, {"algorithms": ["none"]}, "'none'", id="alg-none"),
        pytest.param(SECRET, {"algorithms": ["HS256", "None"]}, "'none'", id="alg-None-among-others"),
        pytest.param(
            P256_PUBLIC,
            {"algorithms": ["HS256"]},
            "'HS256' cannot be used with this key",
            id="confusion-hs256-with-pem",
        ),
        pytest.param(
            P256_PUBLIC, {"algorithms": ["ES256", "HS512"]}, "'HS512' cannot be used", id="confusion-among-others"
        ),
        pytest.param(
            SECRET, {"algorithms": ["RS256"]}, "'RS256' cannot be used with an HMAC secret", id="rs-with-secret"
        ),
        pytest.param(P256_PUBLIC, {"algorithms": ["ES384"]}, "'ES384' cannot be used", id="es384-with-p256"),
        pytest.param(SECRET, {"algorithms": []}, "at least one algorithm", id="empty-algorithms"),
        pytest.param(SECRET, {"algorithms": "HS256"}, "must be a list, not the str", id="algorithms-str"),
        pytest.param("short", {}, "at least 32 bytes", id="short-secret"),
        pytest.param(b"x" * 31, {}, "at least 32 bytes .this one is 31", id="31-bytes"),
        pytest.param("", {}, "non-empty str or bytes", id="empty-key"),
        pytest.param(None, {}, "non-empty str or bytes", id="none-key"),
        pytest.param(
            "-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n",
            {},
            "looks like PEM but cannot be read",
            id="unreadable-pem",
        ),
        pytest.param(public_pem(ec_key(ec.SECP224R1())), {}, "secp224r1 is not one JWT uses", id="unsupported-curve"),
        pytest.param(SECRET, {"leeway": -1}, "leeway", id="negative-leeway"),
        pytest.param(SECRET, {"leeway": "5"}, "leeway", id="str-leeway"),
        pytest.param(SECRET, {"leeway": True}, "leeway", id="bool-leeway"),
        pytest.param(SECRET, {"leeway": math.nan}, "leeway", id="nan-leeway"),
        pytest.param(SECRET, {"leeway": 3600}, "leeway", id="hour-leeway"),
        pytest.param(SECRET, {"audience": ""}, "audience must be a non-empty str", id="empty-audience"),
        pytest.param(SECRET, {"audience": ["a"]}, "audience must be a non-empty str", id="list-audience"),
        pytest.param(SECRET, {"issuer": ""}, "issuer must be a non-empty str", id="empty-issuer"),
        pytest.param(SECRET, {"issuer": 7}, "issuer must be a non-empty str", id="int-issuer"),
        pytest.param(SECRET, {"cookie": ""}, "cookie must be a non-empty str", id="empty-cookie"),
        pytest.param(SECRET, {"query_param": ""}, "query_param must be a non-empty str", id="empty-query-param"),
        pytest.param(SECRET, {"public": "news/**"}, "must be a list of str, not the str", id="public-str"),
        pytest.param(
            SECRET, {"public": ["news/**/x"]}, r"'\*\*' may only be the last", id="public-double-star-not-last"
        ),
        pytest.param(SECRET, {"public": ["news*"]}, "is neither", id="public-star-inside"),
        pytest.param(SECRET, {"public": [""]}, "non-empty", id="public-empty"),
    ],
)
def test_token_auth_refuses_a_bad_configuration(key: Any, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TokenAuth(key, **options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"cookie": "a;b"}, "cookie 'a;b' is not a cookie name", id="cookie-semicolon"),
        pytest.param({"cookie": "a=b"}, "cookie 'a=b' is not a cookie name", id="cookie-equals"),
        pytest.param({"cookie": "my token"}, "is not a cookie name", id="cookie-space"),
        pytest.param({"query_param": "a&b"}, "query_param 'a&b' is not a plain parameter name", id="query-ampersand"),
        pytest.param({"query_param": "t=1"}, "is not a plain parameter name", id="query-equals"),
        pytest.param({"query_param": "to ken"}, "is not a plain parameter name", id="query-space"),
        pytest.param({"algorithms": [None]}, "algorithms must be names", id="algorithm-not-a-str"),
    ],
)
def test_token_auth_refuses_names_it_could_never_read(options: dict[str, Any], message: str) -> None:
    """Issue 10 (review): a cookie or query parameter name that no request can
    carry as given (``a;b``, ``a&b``) was accepted and silently never matched;
    an algorithm that is not a str raised AttributeError instead of a ValueError."""
    with pytest.raises(ValueError, match=message):
        TokenAuth(SECRET, **options)


SSH_PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@example"


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(SSH_PUBLIC_KEY, id="ssh-public-key"),
        pytest.param(
            json.dumps(
                {
                    "kty": "EC",
                    "crv": "P-256",
                    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                    "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
                }
            ),
            id="jwk",
        ),
        pytest.param("The hub's key:\n" + P256_PUBLIC, id="pem-after-text"),
    ],
)
def test_a_public_key_in_another_form_is_not_taken_for_an_hmac_secret(site: Callable[..., Site], key: str) -> None:
    """Issue 10 (review): a public key that is not a bare PEM (an SSH key, a
    JWK, a PEM after a line of text) was taken as an HMAC secret; PyJWT then
    refused it at every verification with InvalidKeyError, a 500 per request.
    It is a ValueError at construction, and mint refuses it alike."""
    with pytest.raises(ValueError, match="cannot be an HMAC secret"):
        TokenAuth(key)
    with pytest.raises(ValueError, match="cannot be an HMAC secret"):
        mint(key, subscribe=["room/1"])


def test_repr_never_shows_the_key() -> None:
    for key, hidden in (
        (SECRET, SECRET),
        (P256_PUBLIC, P256_PUBLIC.splitlines()[1][:20]),
        (private_pem(P256), private_pem(P256).splitlines()[1][:20]),
    ):
        auth = TokenAuth(key, audience="hub", issuer="app")
        text = repr(auth)
        assert hidden not in text
        assert "audience='hub'" in text
        assert "issuer='app'" in text
    assert repr(TokenAuth(P256_PUBLIC)) == "<TokenAuth algorithms=['ES256'] audience=None issuer=None>"
    assert "HS256" in repr(TokenAuth(SECRET))


def test_algorithms_default_from_the_key_and_a_private_pem_gives_its_public_half() -> None:
    assert TokenAuth("k" * 64).algorithms == ("HS256", "HS384", "HS512")
    assert TokenAuth(P256_PUBLIC).algorithms == ("ES256",)
    assert TokenAuth(public_pem(ec_key(ec.SECP384R1()))).algorithms == ("ES384",)
    assert TokenAuth(public_pem(RSA_KEY)).algorithms == ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
    assert TokenAuth(public_pem(ED25519_KEY)).algorithms == ("EdDSA",)
    from_private = TokenAuth(private_pem(P256))
    assert from_private.verify(mint(private_pem(P256), subscribe=["room/1"]))["eventsource"]["subscribe"] == ["room/1"]


# -- every refusal, over real sockets ---------------------------------------------------

AUDIENCE, ISSUER = "https://hub.example", "https://app.example"


def strict_auth(**options: Any) -> TokenAuth:
    return TokenAuth(SECRET, audience=AUDIENCE, issuer=ISSUER, **options)


def strict(**extra: Any) -> dict[str, Any]:
    """Claims strict_auth accepts, for room/1 and x, with *extra* replacing or
    (as None) removing claims."""
    payload = claims(["room/1", "x"], ["room/1"], aud=AUDIENCE, iss=ISSUER)
    payload.update(extra)
    return {name: value for name, value in payload.items() if value is not None}


def unsigned(payload: dict[str, Any]) -> str:
    """alg "none", as PyJWT writes it."""
    encoded: str = jwt.encode(payload, None, algorithm="none")  # type: ignore[arg-type]
    return encoded


def hand_signed(**extra: Any) -> str:
    return hs256('{"alg":"HS256","typ":"JWT"}', json.dumps(strict(**extra)))


REFUSALS: list[Any] = [
    pytest.param(lambda: token(strict(exp=int(time.time()) - 5)), "the token has expired", id="expired"),
    pytest.param(lambda: token(strict(nbf=int(time.time()) + 60)), "not valid yet (nbf)", id="not-yet-valid"),
    pytest.param(lambda: token(strict(), OTHER_SECRET), "signature is wrong", id="wrongly-signed"),
    pytest.param(lambda: token(strict())[:-4] + "AAAA", "signature is wrong", id="signature-changed"),
    pytest.param(lambda: "not-a-jwt", "malformed", id="malformed-one-part"),
    pytest.param(lambda: "a.b.c", "malformed", id="malformed-three-parts"),
    pytest.param(lambda: token(strict()).replace(".", "..", 1), "malformed", id="malformed-extra-dot"),
    pytest.param(lambda: unsigned(strict()), "algorithm is not accepted", id="alg-none"),
    pytest.param(
        lambda: hs256('{"alg":"none"}', json.dumps(strict())).rsplit(".", 1)[0] + ".",
        "not accepted",
        id="alg-none-by-hand",
    ),
    pytest.param(lambda: token(strict(), P256, "ES256"), "algorithm is not accepted", id="alg-es256-for-a-secret"),
    pytest.param(lambda: token(strict(aud="https://other.example")), "another audience", id="another-audience"),
    pytest.param(lambda: token(strict(iss="https://evil.example")), "another issuer", id="another-issuer"),
    pytest.param(lambda: token(strict(aud=None)), "no 'aud' claim", id="missing-aud"),
    pytest.param(lambda: token(strict(iss=None)), "no 'iss' claim", id="missing-iss"),
    pytest.param(lambda: token(strict(exp=None)), "no 'exp' claim", id="missing-exp"),
    pytest.param(lambda: hand_signed(exp="9999999999"), "exp is not a number", id="exp-a-string"),
    pytest.param(
        lambda: token(strict(eventsource=["room/1"])), "'eventsource' claim is not an object", id="claim-not-an-object"
    ),
    pytest.param(
        lambda: token(strict(eventsource={"subscribe": "room/1"})),
        "eventsource.subscribe is not a list",
        id="subscribe-not-a-list",
    ),
    pytest.param(
        lambda: token(strict(eventsource={"publish": {"room/1": True}})),
        "eventsource.publish is not a list",
        id="publish-not-a-list",
    ),
    pytest.param(
        lambda: token(strict(eventsource={"subscribe": ["room/**/x"]})), "has a bad pattern", id="bad-pattern"
    ),
    pytest.param(lambda: token(strict(eventsource={"subscribe": [7]})), "has a bad pattern", id="pattern-not-a-str"),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(("make_token", "description"), REFUSALS)
def test_every_refusal_is_a_401_invalid_token_with_a_description(
    site: Callable[..., Site], target: str, make_token: Callable[[], str], description: str
) -> None:
    app = site(strict_auth())
    assert_invalid_token(app.request(target, bearer(make_token())), description)
    assert_granted(app.request(target, bearer(token(strict()))), target)  # the same site, a good token
    assert app.raised == []


@pytest.mark.parametrize("target", TARGETS)
def test_no_token_is_a_401_whose_challenge_names_no_error(site: Callable[..., Site], target: str) -> None:
    app = site(strict_auth())
    assert_no_token(app.request(target))
    assert_no_token(app.request(target, {"Authorization": "Bearer"}))  # the scheme and nothing after it
    assert_no_token(app.request(target, {"Authorization": "Basic dXNlcjpwYXNz"}))  # another scheme is no token
    assert_no_token(app.request(target, {"Cookie": "eventsource_token="}))
    assert_no_token(app.request(target, query="access_token="))


@pytest.mark.parametrize("target", TARGETS)
def test_a_valid_token_that_does_not_cover_the_channel_is_a_403(site: Callable[..., Site], target: str) -> None:
    app = site(strict_auth())
    elsewhere = strict(eventsource={"subscribe": ["room/2", "room/1/x", "y"], "publish": ["room/2"]})
    assert_forbidden(app.request(target, bearer(token(elsewhere))))
    assert_forbidden(app.request(target, bearer(token(strict(eventsource=None)))))  # no rights at all
    # Subscribing does not give publishing, nor publishing subscribing.
    rights = ["room/1", "x"]
    swapped = {"subscribe": rights, "publish": []} if target == "publisher_app" else {"publish": rights}
    assert_forbidden(app.request(target, bearer(token(strict(eventsource=swapped)))))
    assert app.broker.subscriber_count() == 0


def test_a_refused_request_never_gets_a_stream_nor_publishes(site: Callable[..., Site]) -> None:
    app = site()
    refused = [
        app.subscribe("room/1", bearer(token(claims(["room/2"])))),
        app.subscribe("room/1", bearer("nonsense")),
        app.subscribe("room/1"),
    ]
    for client in (app.publish("room/1", bearer("nonsense")), app.publish("room/1", bearer(token(claims(["room/1"]))))):
        assert client.status in (401, 403)
    app.broker.publish("room/1", "secret")
    for client in refused:
        assert client.status in (401, 403)
        assert b"secret" not in client.read_body()
    assert len(app.broker.history_of("room/1")) == 1  # only this one: the refused posts published nothing
    assert app.broker.subscriber_count() == 0
    assert app.one.connection_count == 0


def test_leeway_accepts_a_token_just_expired_or_not_yet_valid(site: Callable[..., Site]) -> None:
    app = site(TokenAuth(SECRET, leeway=30))
    now = int(time.time())
    assert_granted(app.subscribe("room/1", bearer(token(claims(["room/1"], exp=now - 10)))), "subscriber_app")
    assert_granted(app.subscribe("room/1", bearer(token(claims(["room/1"], nbf=now + 10)))), "subscriber_app")
    assert_invalid_token(app.subscribe("room/1", bearer(token(claims(["room/1"], exp=now - 40)))), "expired")
    assert_invalid_token(app.subscribe("room/1", bearer(token(claims(["room/1"], nbf=now + 40)))), "nbf")
    # Without leeway, the same tokens are refused.
    plain = site()
    assert_invalid_token(plain.subscribe("room/1", bearer(token(claims(["room/1"], exp=now - 10)))), "expired")
    assert_invalid_token(plain.subscribe("room/1", bearer(token(claims(["room/1"], nbf=now + 10)))), "nbf")


def test_a_token_issued_a_moment_ahead_of_the_hubs_clock_is_accepted(site: Callable[..., Site]) -> None:
    """Issue 10 (review): PyJWT refuses by default a token whose iat is in the
    future, so a token minted by an app server whose clock runs a little
    ahead of the hub's was refused ("not valid yet (nbf)", naming a claim it
    did not have) for its first moments. iat says when a token was made
    (RFC 7519 4.1.6); when it becomes valid is nbf's, which is still checked."""
    app = site()
    now = int(time.time())
    for target in TARGETS:
        assert_granted(app.request(target, bearer(token(claims(["room/1", "x"], ["room/1"], iat=now + 5)))), target)
        assert_invalid_token(app.request(target, bearer(token(claims(["room/1", "x"], nbf=now + 5)))), "nbf")


def test_an_exp_beyond_any_float_is_a_401_not_a_500(site: Callable[..., Site]) -> None:
    """Issue 10 (review): a signed token whose exp is an integer too large for a
    float (JSON allows 10**400; PyJWT accepts it) passed verify, then
    ``float(exp)`` in claims_of raised OverflowError: a 500. It is refused as
    out of range; a huge float exp (1e300) is still a valid, very long token."""
    app = site()
    for target in TARGETS:
        assert_invalid_token(
            app.request(target, bearer(hand_signed(aud=None, iss=None, exp=10**400))), "exp is out of range"
        )
    assert_granted(app.subscribe("room/1", bearer(hand_signed(aud=None, iss=None, exp=1e300))), "subscriber_app")
    assert app.raised == []


def test_a_description_is_always_a_valid_challenge(site: Callable[..., Site], serve: Callable[..., WSGIServer]) -> None:
    """Issue 10 (review): the error_description was put in WWW-Authenticate with
    only quotes and backslashes removed: a CR/LF in it (from an authorize
    callback's own Unauthorized) or a non-latin-1 character (a signed token's
    pattern, named in the message) made the server refuse the header, a 500.
    Now only RFC 6750's characters go in (printable ASCII but '"' and '\\\\')."""
    app = site()
    cafe = token(claims(["\u65e5\u672c/**"]))  # a signed token with a pattern that is no channel name
    said = assert_invalid_token(app.subscribe("room/1", bearer(cafe)), "has a bad pattern")
    assert all(" " <= c <= "~" and c not in '"\\' for c in said), said
    assert app.raised == []

    def authorize(environ: Any, channel: str) -> bool:
        raise Unauthorized('line one\r\nX-Injected: yes "quoted" back\\slash caf\u00e9 \u2028 \x00 end')

    port = serve(MemoryBroker().subscriber_app(authorize=authorize)).server_port
    client = StreamClient(port, "/room")
    body = client.read_body()
    assert client.status == 401, body
    assert "x-injected" not in client.headers
    challenge = client.headers["www-authenticate"]
    assert challenge.startswith(REALM + ', error="invalid_token", error_description="line one??X-Injected: yes ')
    said = challenge.split('error_description="', 1)[1][:-1]
    assert all(" " <= c <= "~" and c not in '"\\' for c in said), said
    assert "'quoted'" in said
    assert said.endswith(" end")
    assert "caf\u00e9".encode() in body  # the body (UTF-8 text) keeps it as it was


# -- where the token comes from ---------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_a_token_is_read_from_the_header_the_cookie_or_the_query(site: Callable[..., Site], target: str) -> None:
    app = site()
    good = token()
    assert_granted(app.request(target, bearer(good)), target)
    assert_granted(app.request(target, {"Authorization": f"bearer {good}"}), target)  # the scheme is case-insensitive
    assert_granted(app.request(target, {"Cookie": f"eventsource_token={good}"}), target)
    assert_granted(app.request(target, {"Cookie": f"theme=dark; eventsource_token={good}; lang=fr"}), target)
    assert_granted(app.request(target, query=f"access_token={good}"), target)
    assert_granted(app.request(target, query=f"x=1&access_token={quote(good)}"), target)


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("Bearer\t{}", id="tab"),
        pytest.param("Bearer   {}", id="spaces"),
        pytest.param("  Bearer {}  ", id="surrounding-spaces"),
        pytest.param("BEARER \t {}", id="upper-case-and-mixed"),
    ],
)
def test_the_bearer_header_with_odd_whitespace(site: Callable[..., Site], header: str) -> None:
    """Issue 10 (review): ``Bearer<TAB>token`` was split on a space only, so the
    token was not seen at all: a 401 "a token is required" for a request that
    carries one. Any whitespace now separates the scheme from the token."""
    app = site()
    assert_granted(app.subscribe("room/1", {"Authorization": header.format(token())}), "subscriber_app")


def test_a_custom_cookie_and_query_param_and_none_disables_each(site: Callable[..., Site]) -> None:
    good = token()
    custom = site(TokenAuth(SECRET, cookie="hub_jwt", query_param="t"))
    assert_granted(custom.subscribe("room/1", {"Cookie": f"hub_jwt={good}"}), "subscriber_app")
    assert_granted(custom.subscribe("room/1", query=f"t={good}"), "subscriber_app")
    assert_no_token(
        custom.subscribe("room/1", {"Cookie": f"eventsource_token={good}"})
    )  # the default names are not read
    assert_no_token(custom.subscribe("room/1", query=f"access_token={good}"))
    header_only = site(TokenAuth(SECRET, cookie=None, query_param=None))
    assert_granted(header_only.subscribe("room/1", bearer(good)), "subscriber_app")
    assert_no_token(header_only.subscribe("room/1", {"Cookie": f"eventsource_token={good}"}))
    assert_no_token(header_only.subscribe("room/1", query=f"access_token={good}"))
    assert_no_token(header_only.publish("room/1", query=f"access_token={good}"))


def test_the_header_wins_over_the_cookie_which_wins_over_the_query(site: Callable[..., Site]) -> None:
    app = site()
    good, bad = token(), token(key=OTHER_SECRET)
    assert_granted(
        app.subscribe("room/1", {**bearer(good), "Cookie": f"eventsource_token={bad}"}, f"access_token={bad}"),
        "subscriber_app",
    )
    assert_invalid_token(
        app.subscribe("room/1", {**bearer(bad), "Cookie": f"eventsource_token={good}"}, f"access_token={good}"),
        "signature",
    )
    assert_granted(
        app.subscribe("room/1", {"Cookie": f"eventsource_token={good}"}, f"access_token={bad}"), "subscriber_app"
    )
    assert_invalid_token(
        app.subscribe("room/1", {"Cookie": f"eventsource_token={bad}"}, f"access_token={good}"), "signature"
    )
    # A header of another scheme (a proxy's Basic) does not hide the cookie.
    assert_granted(
        app.subscribe("room/1", {"Authorization": "Basic dXNlcjpwYXNz", "Cookie": f"eventsource_token={good}"}),
        "subscriber_app",
    )


def test_a_cookie_cannot_be_smuggled_inside_another_cookie(site: Callable[..., Site]) -> None:
    """A quoted cookie value that contains "; eventsource_token=..." is that
    other cookie's value, not a token; and of two cookies of the name (a
    sibling site may set one), the first (the more specific path, RFC 6265
    5.4) is read."""
    app = site()
    good, bad = token(), token(key=OTHER_SECRET)
    assert_no_token(app.subscribe("room/1", {"Cookie": f'note="x; eventsource_token={good}"'}))
    assert_granted(
        app.subscribe("room/1", {"Cookie": f"eventsource_token={good}; eventsource_token={bad}"}), "subscriber_app"
    )
    assert_invalid_token(
        app.subscribe("room/1", {"Cookie": f"eventsource_token={bad}; eventsource_token={good}"}), "signature"
    )
    assert_no_token(app.subscribe("room/1", {"Cookie": f"xeventsource_token={good}"}))


def test_a_stray_byte_in_a_cookie_is_not_a_500(site: Callable[..., Site]) -> None:
    """Issue 10 (fuzz): werkzeug's parse_cookie(environ) decodes the Cookie
    header as strict UTF-8, so one byte that is not (in any cookie of the
    site, set by another app, or sent by anyone) raised UnicodeDecodeError: a
    500 for every request that carried it. It is decoded leniently now."""
    app = site()
    good = token()
    for target in TARGETS:
        assert_granted(app.request(target, {"Cookie": f"theme=\xff\xfe; eventsource_token={good}"}), target)
        assert_invalid_token(app.request(target, {"Cookie": f"eventsource_token=\xea{good}"}), "malformed")
    assert_no_token(app.subscribe("room/1", {"Cookie": "theme=caf\xe9"}))
    assert app.raised == []


# -- public channels --------------------------------------------------------------------


def test_anyone_may_subscribe_to_a_public_channel_but_publishing_needs_a_token(site: Callable[..., Site]) -> None:
    app = site(TokenAuth(SECRET, public=["news/**", "lobby"]))
    for channel in ("news/today", "news/2026/12", "lobby"):
        client = app.subscribe(channel)
        assert client.status == 200
        app.broker.publish(channel, f"on {channel}")
        assert client.events(1)[0].data == f"on {channel}"
        client.close()
    # An invalid token does not hurt on a public channel: it is not read.
    assert app.subscribe("news/today", bearer("nonsense")).status == 200
    # Not public: the pattern is matched as everywhere else.
    assert_no_token(app.subscribe("news"))
    assert_no_token(app.subscribe("lobby/x"))
    assert_no_token(app.subscribe("room/1"))
    # Publishing to a public channel needs a token that covers it.
    assert_no_token(app.publish("news/today"))
    assert_forbidden(app.publish("news/today", bearer(token(claims(["news/**"], ["room/**"])))))
    created = app.publish("news/today", bearer(token(claims([], ["news/*"]))))
    assert created.status == 201, created.read_body()
    assert app.raised == []


# -- multiplexed streams ----------------------------------------------------------------


def test_a_multiplexed_stream_needs_every_channel_covered(site: Callable[..., Site]) -> None:
    app = site(TokenAuth(SECRET, public=["news/**"]))
    rooms = bearer(token(claims(["room/*"])))
    assert_forbidden(app.get("/events/?channel=room/1&channel=hall/1", rooms))
    assert_forbidden(app.get("/events/?channel=hall/1&channel=room/1", rooms))
    assert_no_token(app.get("/events/?channel=news/a&channel=room/1"))
    assert_invalid_token(app.get("/events/?channel=news/a&channel=room/1", bearer("x.y.z")), "malformed")
    everyone = app.get("/events/?channel=news/a&channel=news/b")  # all public: no token needed
    assert everyone.status == 200
    covered = app.get("/events/?channel=news/a&channel=room/1&channel=room/2", rooms)
    assert covered.status == 200
    app.broker.publish("room/2", "two")
    app.broker.publish("news/b", "bee")
    assert [e.data for e in covered.events(1)] == ["two"]
    assert [e.data for e in everyone.events(1)] == ["bee"]
    assert app.broker.subscriber_count() == 5
    assert app.raised == []


def test_claims_verified_by_one_token_auth_are_not_reused_by_another(
    site: Callable[..., Site], serve: Callable[..., WSGIServer]
) -> None:
    """Issue 10 (review): claims_of kept the verified claims in the environ
    under one key for every TokenAuth, so a second TokenAuth asked about the
    same request (another channel of a multiplexed stream) took them without
    verifying the token with its own key and audience: a token for one
    audience opened channels reserved to another. Each instance now reuses
    only the claims it verified itself."""
    lax = TokenAuth(SECRET)
    admins = TokenAuth(SECRET, audience="admins")

    def authorize(environ: Any, channel: str) -> bool:
        return (admins if channel.startswith("admin/") else lax).can_subscribe(environ, channel)

    broker = MemoryBroker()
    port = serve(broker.subscriber_app(authorize=authorize)).server_port
    everything = bearer(token(claims(["**"])))  # no aud: good for lax only
    client = StreamClient(port, "/?channel=room/1&channel=admin/keys", headers=everything)
    assert_invalid_token(client, "no 'aud' claim")
    assert broker.subscriber_count() == 0
    for_admins = bearer(token(claims(["**"], aud="admins")))
    assert_invalid_token(
        StreamClient(port, "/?channel=room/1&channel=admin/keys", headers=for_admins), "another audience"
    )
    assert StreamClient(port, "/?channel=admin/keys", headers=for_admins).status == 200


# -- exp ends a live stream -------------------------------------------------------------


def read_to_end_at(client: StreamClient, timeout: float) -> float:
    """Read *client* to its end; the wall-clock time the end arrived."""
    client.read_to_end(timeout)
    return time.time()


def expiry_timers() -> dict[int, Any]:
    """The expiry timers (``_end_when_expired``) armed in this thread's loop, by identity
    (the values keep them alive, so an id is not reused). Not a count: an earlier test's
    stream may expire while this one runs."""
    gc.collect()
    return {
        id(obj): obj
        for obj in gc.get_objects()
        if type(obj).__name__ == "timer"
        and getattr(obj, "active", False)
        and "_end_when_expired" in getattr(getattr(obj, "callback", None), "__qualname__", "")
    }


def test_exp_ends_a_live_stream_with_a_spread_retry_hint_and_only_that_one(site: Callable[..., Site]) -> None:
    app = site(TokenAuth(SECRET, public=["news/**"]))
    good = mint(SECRET, subscribe=["room/**", "x"], ttl=2)
    exp = TokenAuth(SECRET).verify(good)["exp"]
    private = [app.subscribe(f"room/{n}", bearer(good)) for n in range(5)]
    private.append(app.get("/one", bearer(good)))
    private.append(app.get("/events/?channel=news/a&channel=room/9", bearer(good)))  # multiplexed, one channel private
    public = [app.subscribe("news/a"), app.subscribe("news/b", bearer(good))]  # no expiry: the token is not read
    app.broker.publish("room/0", "live")
    assert private[0].events(1)[0].data == "live"
    assert private[5].events(1)[0].data == "hello"  # the EventSource's handler ran
    assert time.time() < exp, "the test is too slow to see a live stream end"
    reading = [gevent.spawn(read_to_end_at, client, exp - time.time() + 5) for client in private]
    gevent.joinall(reading, timeout=exp - time.time() + 6, raise_error=True)
    ended = [greenlet.value for greenlet in reading]
    for client, at in zip(private, ended, strict=True):
        assert -0.1 <= at - exp <= 1.2, (at - exp, client.tail())
        assert client.parser.reconnection_time is not None, client.tail()
        assert 500 <= client.parser.reconnection_time <= 1500, client.tail()
        assert bytes(client.raw).endswith(f"retry: {client.parser.reconnection_time}\n\n".encode()), client.tail()
    assert len({client.parser.reconnection_time for client in private}) > 1, "the hints are spread"
    # The streams opened without reading a token are still live.
    app.broker.publish("news/a", "still here")
    app.broker.publish("news/b", "me too")
    assert [c.events(1)[0].data for c in public] == ["still here", "me too"]
    wait_until(lambda: app.broker.subscriber_count() == 2, message="the expired streams unsubscribed")
    assert app.one.connection_count == 0
    assert app.raised == []


def test_a_stream_ends_when_its_token_stops_being_accepted_exp_plus_leeway(site: Callable[..., Site]) -> None:
    """Issue 10 (review): with leeway, a stream ended at exp; the client
    reconnected with the same token, was accepted (it is still within the
    leeway), and its stream ended at once, again and again until the leeway
    ran out. A stream now ends at exp + leeway, when this hub stops accepting
    the token."""
    app = site(TokenAuth(SECRET, leeway=2))
    exp = int(time.time())  # expired already (by less than a second): accepted within the leeway
    client = app.subscribe("room/1", bearer(token(claims(["room/1"], exp=exp))))
    assert client.status == 200
    at = read_to_end_at(client, 5)
    assert -0.1 <= at - (exp + 2) <= 1.2, at - exp
    assert 500 <= (client.parser.reconnection_time or 0) <= 1500


def test_the_expiry_timer_is_cancelled_when_the_stream_closes_first(
    site: Callable[..., Site], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="wsgi_eventsource")
    app = site(keepalive=0.1)
    before = expiry_timers()
    clients = [app.subscribe("room/1", bearer(mint(SECRET, subscribe=["room/1"], ttl=600))) for _ in range(3)]
    wait_until(lambda: app.broker.subscriber_count() == 3)
    ours = expiry_timers().keys() - before.keys()
    assert len(ours) == 3
    clients[0].close()
    clients[1].reset()
    app.subscriber.close_all()  # the server ends the others
    wait_until(lambda: app.subscriber.source.connection_count == 0, message="every stream gone")
    assert expiry_timers().keys() & ours == set()
    assert app.broker.subscriber_count() == 0
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert app.raised == []


# -- public keys: ES256, RS256, EdDSA from a PEM file; the confusion attack ---------------

KEY_KINDS = [
    pytest.param(lambda: ec_key(), "ES256", id="ES256"),
    pytest.param(lambda: ec_key(ec.SECP384R1()), "ES384", id="ES384"),
    pytest.param(lambda: RSA_KEY, "RS256", id="RS256"),
    pytest.param(lambda: RSA_KEY, "PS256", id="PS256"),
    pytest.param(lambda: ed25519.Ed25519PrivateKey.generate(), "EdDSA", id="EdDSA"),
]


@pytest.mark.parametrize(("make_key", "algorithm"), KEY_KINDS)
def test_a_public_key_from_a_pem_file_verifies_what_the_private_key_minted(
    site: Callable[..., Site], tmp_path: Path, make_key: Callable[[], Any], algorithm: str
) -> None:
    key = make_key()
    path = tmp_path / "hub-public.pem"
    path.write_text(public_pem(key))
    with path.open() as pem:
        auth = TokenAuth(pem.read())
    app = site(auth)
    minted = mint(private_pem(key), subscribe=["room/*", "x"], publish=["room/1"], algorithm=algorithm, ttl=60)
    assert jwt.get_unverified_header(minted)["alg"] == algorithm
    for target in TARGETS:
        assert_granted(app.request(target, bearer(minted)), target)
    # Another key of the same kind: a wrong signature.
    stranger = rsa.generate_private_key(65537, 2048) if algorithm in {"RS256", "PS256"} else make_key()
    forged = mint(private_pem(stranger), subscribe=["**"], algorithm=algorithm)
    assert_invalid_token(app.subscribe("room/1", bearer(forged)), "signature is wrong")
    # An HMAC token is refused by a public key, whatever the secret.
    assert_invalid_token(app.subscribe("room/1", bearer(token(claims(["**"])))), "algorithm is not accepted")
    assert app.raised == []


@pytest.mark.parametrize(("make_key", "algorithm"), KEY_KINDS)
def test_the_algorithm_confusion_attack_is_refused_end_to_end(
    site: Callable[..., Site], tmp_path: Path, make_key: Callable[[], Any], algorithm: str
) -> None:
    """The attacker knows the public key (it is public) and signs HS256 with
    its PEM text as the HMAC secret, hoping the hub verifies HMAC with "its key"."""
    key = make_key()
    path = tmp_path / "hub-public.pem"
    path.write_text(public_pem(key))
    pem = path.read_text()
    app = site(TokenAuth(pem))
    payload = json.dumps(claims(["**"], ["**"]))
    for variant in (pem, pem.strip(), pem.encode().replace(b"\n", b"\r\n").decode()):
        for alg_header in ('{"alg":"HS256","typ":"JWT"}', '{"alg":"HS256"}'):
            attack = hs256(alg_header, payload, variant)
            for target in TARGETS:
                assert_invalid_token(app.request(target, bearer(attack)), "algorithm is not accepted")
    with pytest.raises(ValueError, match="'HS256' cannot be used with this key"):
        TokenAuth(pem, algorithms=["HS256"])
    with pytest.raises(ValueError, match="cannot be used"):
        TokenAuth(pem, algorithms=[algorithm, "HS512"])
    assert app.raised == []


# -- mint -------------------------------------------------------------------------------


def test_mint_round_trips_through_verify() -> None:
    before = int(time.time())
    minted = mint(
        SECRET,
        subscribe=["room/42", "user/alice/**"],
        publish=["room/42"],
        ttl=600,
        audience=AUDIENCE,
        issuer=ISSUER,
        subject="alice",
        claims={"uid": 7, "eventsource": "overridden", "exp": 1},
    )
    got = strict_auth().verify(minted)
    assert got["eventsource"] == {"subscribe": ["room/42", "user/alice/**"], "publish": ["room/42"]}
    assert (got["aud"], got["iss"], got["sub"], got["uid"]) == (AUDIENCE, ISSUER, "alice", 7)
    assert before <= got["iat"] <= int(time.time())
    assert got["exp"] - got["iat"] == 600
    assert jwt.get_unverified_header(minted)["alg"] == "HS256"
    long_secret = "k" * 64
    assert TokenAuth(long_secret, algorithms=["HS512"]).verify(mint(long_secret, algorithm="HS512"))["eventsource"] == {
        "subscribe": [],
        "publish": [],
    }
    assert (
        TokenAuth(SECRET).verify(mint(SECRET.encode(), subscribe=iter(["a/*"]), ttl=0.5))["exp"] >= before + 1
    )  # at least a second


@pytest.mark.parametrize(
    ("key", "options", "message"),
    [
        pytest.param(P256_PUBLIC, {}, "signed with the private key: this PEM is a public key", id="public-key"),
        pytest.param(SECRET, {"ttl": 0}, "ttl must be a positive number", id="ttl-zero"),
        pytest.param(SECRET, {"ttl": -5}, "ttl must be a positive number", id="ttl-negative"),
        pytest.param(SECRET, {"ttl": math.inf}, "ttl must be a positive number", id="ttl-inf"),
        pytest.param(SECRET, {"ttl": math.nan}, "ttl must be a positive number", id="ttl-nan"),
        pytest.param(SECRET, {"ttl": "60"}, "ttl must be a positive number", id="ttl-str"),
        pytest.param(SECRET, {"ttl": True}, "ttl must be a positive number", id="ttl-bool"),
        pytest.param(SECRET, {"subscribe": ["room/**/x"]}, r"'\*\*' may only be the last", id="bad-subscribe-pattern"),
        pytest.param(SECRET, {"publish": ["room*"]}, "is neither", id="bad-publish-pattern"),
        pytest.param(
            SECRET, {"algorithm": "RS256"}, "'RS256' cannot be used with an HMAC secret", id="rs256-with-a-secret"
        ),
        pytest.param(SECRET, {"algorithm": "none"}, "'none' cannot be used", id="alg-none"),
        pytest.param(
            private_pem(P256), {"algorithm": "HS256"}, "'HS256' cannot be used with this key", id="hs256-with-an-ec-key"
        ),
        pytest.param(private_pem(P256), {"algorithm": "ES384"}, "'ES384' cannot be used", id="es384-with-a-p256-key"),
        pytest.param("short", {}, "at least 32 bytes", id="short-secret"),
    ],
)
def test_mint_refuses_naming_the_problem(key: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mint(key, **options)


def test_a_secret_is_offered_only_the_hmac_algorithms_it_is_long_enough_for(site: Callable[..., Site]) -> None:
    """Issue 10 (review): a 32-byte secret accepted HS384 and HS512 too, for
    which RFC 7518 3.2 wants 48 and 64 bytes; PyJWT then warned
    (InsecureKeyLengthWarning) at every HS512 token, before even checking its
    signature: anyone could make a hub that runs with warnings as errors
    answer 500, and fill the log of another. An algorithm is now offered only
    if the secret is long enough for it (and asking for one it is too short
    for is a ValueError); RSA keys under 2048 bits, which PyJWT warns about
    alike, are refused."""
    auth = TokenAuth(SECRET)  # 38 bytes
    assert auth.algorithms == ("HS256",)
    assert TokenAuth("k" * 48).algorithms == ("HS256", "HS384")
    assert TokenAuth("k" * 64).algorithms == ("HS256", "HS384", "HS512")
    app = site(auth)
    for algorithm in ("HS384", "HS512"):
        forged = jwt.encode(claims(["**"]), "f" * 64, algorithm=algorithm)  # any key: the warning came first
        for target in TARGETS:
            assert_invalid_token(app.request(target, bearer(forged)), "algorithm is not accepted (use HS256)")
    assert app.raised == []
    with pytest.raises(ValueError, match=r"'HS512' needs an HMAC secret of at least 64 bytes \(this one is 38\)"):
        TokenAuth(SECRET, algorithms=["HS512"])
    with pytest.raises(ValueError, match="'HS384' needs an HMAC secret of at least 48 bytes"):
        mint(SECRET, algorithm="HS384")
    weak = rsa.generate_private_key(65537, 1024)
    with pytest.raises(ValueError, match=r"at least 2048 bits \(this one has 1024\)"):
        TokenAuth(public_pem(weak))
    with pytest.raises(ValueError, match="at least 2048 bits"):
        mint(private_pem(weak))


def test_mint_refuses_a_lone_str_of_patterns() -> None:
    """Issue 10 (review): mint(subscribe="room") made a list of the str's
    characters, so the token silently granted channels "r", "o" and "m"
    (and "room/1" gave a confusing error about a pattern "/"). A str is
    refused as TokenAuth's public= is."""
    for field in ("subscribe", "publish"):
        with pytest.raises(ValueError, match="must be a list of str, not the str 'room'"):
            mint(SECRET, **{field: "room"})  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="not the str 'room/1'"):
            mint(SECRET, **{field: "room/1"})  # type: ignore[arg-type]


# -- fuzzed tokens ----------------------------------------------------------------------

TRIED = {"random": 0, "jwt-shaped": 0, "signed": 0, "mutated": 0}
FUZZ_VALID = token(claims(["room/1", "x"], ["room/1"], ttl=3600))
ANSWERS = {"subscriber_app": {200, 401, 403}, "publisher_app": {201, 401, 403}, "EventSource": {200, 401, 403}}

fuzz = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[Site]:
    """One site for every example (a fixture per example would be a server per example)."""
    servers: list[WSGIServer] = []

    def serve(app: Any) -> WSGIServer:
        server = WSGIServer(("127.0.0.1", 0), app, log=None)
        server.start()
        servers.append(server)
        return server

    yield Site(serve, TokenAuth(SECRET, public=["news/**"]))
    for server in servers:
        server.stop(timeout=1)


def send(app: Site, target: str, where: str, value: str) -> StreamClient:
    """Send *value* as the token, from *where*; the client, its answer read."""
    app.raised.clear()  # what an earlier (failed) example left
    if where == "header":
        client = app.request(target, {"Authorization": f"Bearer {value}"})
    elif where == "cookie":
        client = app.request(target, {"Cookie": f"eventsource_token={value}"})
    else:
        client = app.request(target, query=f"access_token={quote(value, safe='')}")
    if client.status == 200:
        client.wait_for(lambda c: c.parser.comments)  # a stream: its first piece, then hang up
    else:
        client.read_body()
    client.close()
    assert app.raised == [], app.raised
    assert client.status in ANSWERS[target], (client.status, client.raw, value)
    return client


places = st.sampled_from(["header", "cookie", "query"])
targets = st.sampled_from(TARGETS)
# What can travel in a header: latin-1 without controls (CR/LF would end it).
header_text = st.characters(codec="latin-1", exclude_categories=["Cc"])
b64_alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
random_tokens = st.one_of(
    st.text(alphabet=header_text, max_size=200),
    st.text(alphabet=b64_alphabet + ".=+/ ", max_size=400),
    st.lists(st.text(alphabet=b64_alphabet, max_size=60), min_size=1, max_size=6).map(".".join),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
algorithms = st.one_of(
    st.sampled_from(
        ["HS256", "HS384", "HS512", "none", "None", "NONE", "nOnE", "RS256", "ES256", "EdDSA", "PS256", ""]
    ),
    json_values,
)
jwt_headers = st.one_of(
    st.fixed_dictionaries(
        {"alg": algorithms},
        optional=dict.fromkeys(("typ", "kid", "crit", "b64", "jku", "jwk", "x5u", "cty"), json_values),
    ),
    json_values,
)
now = int(time.time())
times = st.one_of(
    st.sampled_from([now + 3600, now - 3600, 10**400, -(10**400), 1e300, 0, "9999999999", True]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    json_values,
)
patterns = st.lists(
    st.sampled_from(["room/1", "room/*", "**", "x", "room/**/x", "", "a*", "."]) | json_values, max_size=3
)
rights = st.fixed_dictionaries({}, optional={"subscribe": patterns | json_values, "publish": patterns | json_values})
jwt_payloads = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "exp": times,
            "nbf": times,
            "iat": times,
            "aud": json_values,
            "iss": json_values,
            "sub": json_values,
            "jti": json_values,
            "eventsource": rights | json_values,
        },
    ),
    json_values,
)


@fuzz
@given(value=random_tokens, where=places, target=targets)
def test_fuzz_random_strings_are_refused_never_a_500(fuzzed: Site, value: str, where: str, target: str) -> None:
    TRIED["random"] += 1
    assert send(fuzzed, target, where, value).status in (401, 403)


@fuzz
@given(header=jwt_headers, payload=jwt_payloads, signed=st.booleans(), where=places, target=targets, data=st.data())
def test_fuzz_jwt_shaped_tokens_never_give_a_500(
    fuzzed: Site, *, header: Any, payload: Any, signed: bool, where: str, target: str, data: st.DataObject
) -> None:
    """Three base64url parts of random JSON, unsigned or signed with the
    hub's own secret (so that the claims are checked, not only the signature)."""
    TRIED["jwt-shaped"] += 1
    header_json, payload_json = json.dumps(header), json.dumps(payload)
    if signed:
        TRIED["signed"] += 1
        value = hs256(header_json, payload_json)
    else:
        signature = data.draw(st.binary(max_size=80))
        value = f"{b64(header_json.encode())}.{b64(payload_json.encode())}.{b64(signature)}"
    status = send(fuzzed, target, where, value).status
    if status in (200, 201):
        assert signed
        assert header == {"alg": "HS256", **header}


def decoded(segment: str) -> bytes | None:
    try:
        return jwt.utils.base64url_decode(segment)
    except Exception:
        return None


@fuzz
@given(
    position=st.integers(min_value=0, max_value=len(FUZZ_VALID)),
    kind=st.sampled_from(["replace", "delete", "insert", "truncate"]),
    char=st.sampled_from(list(b64_alphabet + ".=+/!~ ")),
    where=places,
    target=targets,
)
# A space before or after the token leaves the same token (it was taken for a forged grant).
@example(position=0, kind="insert", char=" ", where="header", target=TARGETS[0])
@example(position=len(FUZZ_VALID), kind="insert", char=" ", where="cookie", target=TARGETS[0])
def test_fuzz_mutated_valid_tokens_never_give_a_500_nor_a_forged_grant(
    fuzzed: Site, *, position: int, kind: str, char: str, where: str, target: str
) -> None:
    """A mutated signature never opens a private channel: only a mutation
    that leaves the token meaning the same (the same header and payload text,
    a signature that decodes to the same bytes) may be granted."""
    TRIED["mutated"] += 1
    valid = FUZZ_VALID
    if kind == "replace":
        value = valid[:position] + char + valid[position + 1 :]
    elif kind == "delete":
        value = valid[:position] + valid[position + 1 :]
    elif kind == "insert":
        value = valid[:position] + char + valid[position:]
    else:
        value = valid[:position]
    status = send(fuzzed, target, where, value).status
    if status in (200, 201):
        # Whitespace around a token is no part of it: the Authorization
        # header and the cookie are read stripped (a space inserted first or
        # last leaves the same token).
        head, _, signature = value.strip().rpartition(".")
        valid_head, _, valid_signature = valid.rpartition(".")
        assert head == valid_head, value
        assert decoded(signature) == decoded(valid_signature), value


def test_how_many_tokens_were_fuzzed() -> None:
    """Runs after the fuzz tests (file order) and reports their count."""
    print(f"fuzzed tokens: {TRIED}")
    assert TRIED["random"] >= 100
    assert TRIED["jwt-shaped"] >= 100
    assert TRIED["signed"] >= 20
    assert TRIED["mutated"] >= 100
