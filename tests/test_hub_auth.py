"""Issue 10, the hub side: signed tokens (JWT) in ``Hub(auth=...)``, the
``serve --jwt-*`` and ``--public`` options and the ``token`` command, over
real sockets (gevent.pywsgi) and the real console script."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from gevent.pywsgi import WSGIServer

from tests.conftest import ROOT, VENV_BIN, Serve
from tests.helpers import StreamClient
from wsgi_eventsource import MemoryBroker, cli
from wsgi_eventsource.auth import TokenAuth, mint
from wsgi_eventsource.hub import Hub

pytestmark = pytest.mark.server

# 64 bytes: PyJWT warns about an HS512 (HS384) secret shorter than 64 (48) bytes.
SECRET = "hub-auth-test-secret-" + "0123456789abcdef" * 3 + "xyz"
ORIGIN = "https://app.example"

Start = Callable[..., WSGIServer]


def token(**kwargs: Any) -> str:
    return mint(SECRET, ttl=kwargs.pop("ttl", 60), **kwargs)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def cookie(value: str) -> dict[str, str]:
    return {"Cookie": f"eventsource_token={value}"}


def answer(port: int, path: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    client = StreamClient(port, path, **kwargs)
    try:
        if client.status == 204:
            return client.status, client.headers, b""
        if client.headers.get("content-type", "").startswith("text/event-stream"):
            client.wait_for(lambda c: b"id:" in c.raw or c.parser.comments)
            return client.status, client.headers, bytes(client.raw)
        return client.status, client.headers, client.read_body()
    finally:
        client.close()


def publish(port: int, channel: str, headers: dict[str, str], body: bytes = b"x") -> tuple[int, dict[str, str], bytes]:
    return answer(port, f"/publish/{channel}", method="POST", body=body, headers=headers)


def start_hub(serve: Start, *, remote_addr: str | None = None, **options: Any) -> tuple[Hub, int]:
    """A hub with a key on a real server; *remote_addr* stands in for a client elsewhere."""
    options.setdefault("auth", TokenAuth(SECRET, public=["public/**"]))
    hub = Hub(MemoryBroker(), **options)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if remote_addr is not None:
            environ["REMOTE_ADDR"] = remote_addr
        return hub(environ, start_response)

    return hub, serve(app).server_port


# -- subscribing ------------------------------------------------------------------------


def test_subscribing_needs_a_token_except_on_public_channels(serve: Start) -> None:
    _, port = start_hub(serve)
    status, headers, body = answer(port, "/events/private/a")
    assert status == 401
    assert headers["www-authenticate"] == 'Bearer realm="wsgi-eventsource"'  # no token: no error code
    assert b"a token is required" in body
    status, headers, _ = answer(port, "/events/private/a", headers=cookie("not.a.token"))
    assert status == 401
    assert 'error="invalid_token"' in headers["www-authenticate"]
    other = token(subscribe=["other/*"])
    assert answer(port, "/events/private/a", headers=cookie(other))[0] == 403
    publisher_only = token(publish=["private/*"])
    assert answer(port, "/events/private/a", headers=cookie(publisher_only))[0] == 403

    reader = token(subscribe=["private/*"])
    for way in (cookie(reader), bearer(reader)):
        assert answer(port, "/events/private/a", headers=way)[0] == 200
    assert answer(port, f"/events/private/a?access_token={reader}")[0] == 200
    assert answer(port, "/events/public/news")[0] == 200  # public: no token
    assert answer(port, "/events/public/news/today")[0] == 200
    assert answer(port, "/events/public")[0] == 401  # public/** does not cover "public"


def test_a_cookie_token_receives_events_on_a_private_channel(serve: Start) -> None:
    _, port = start_hub(serve)
    stream = StreamClient(port, "/events/private/a", headers=cookie(token(subscribe=["private/**"])))
    assert stream.status == 200
    stream.wait_for(lambda c: b"id: " in c.raw)
    status, _, body = publish(port, "private/a", bearer(token(publish=["private/*"])), b"secret news")
    assert status == 201, body
    (event,) = stream.events(1)
    assert (event.data, event.last_event_id) == ("secret news", json.loads(body)["id"])


def test_a_stream_through_the_hub_ends_when_its_token_expires(serve: Start) -> None:
    """Short-lived tokens are how access ends: the hub's stream ends about at
    ``exp``, with a retry hint, and the reconnect with the same token is a 401."""
    _, port = start_hub(serve)
    expiring = cookie(token(subscribe=["private/*"], ttl=2))  # exp: 1 to 2 s from now (whole seconds)
    stream = StreamClient(port, "/events/private/a", headers=expiring)
    assert stream.status == 200
    stream.read_to_end(timeout=5)
    assert 500 <= (stream.parser.reconnection_time or 0) <= 1500
    assert answer(port, "/events/private/a", headers=expiring)[0] == 401


def test_a_multiplexed_stream_needs_every_channel_covered(serve: Start) -> None:
    _, port = start_hub(serve)
    reader = cookie(token(subscribe=["private/a"]))
    assert answer(port, "/events?channel=private/a&channel=public/x", headers=reader)[0] == 200
    assert answer(port, "/events?channel=public/x&channel=private/a&channel=private/b", headers=reader)[0] == 403
    status, headers, _ = answer(port, "/events?channel=public/x&channel=private/a")
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    assert answer(port, "/events?channel=public/x&channel=public/y")[0] == 200


# -- publishing --------------------------------------------------------------------------


@pytest.mark.parametrize("remote_addr", [None, "203.0.113.9"])
def test_publishing_needs_a_token_that_covers_the_channel_from_anywhere(serve: Start, remote_addr: str | None) -> None:
    """Issue 10: with a key the loopback rule gives way to tokens: a publish
    with a valid token is taken from any address, through a proxy, by any
    Host; one without is refused from loopback too."""
    hub, port = start_hub(serve, remote_addr=remote_addr)
    writer = token(publish=["room/*"])
    through_proxy = {**bearer(writer), "X-Forwarded-For": "198.51.100.7", "Origin": "https://elsewhere.example"}
    status, _, body = publish(port, "room/1", through_proxy)
    assert status == 201, body
    assert len(hub.broker.history_of("room/1")) == 1
    status, headers, body = publish(port, "room/1", {})
    assert status == 401
    assert headers["www-authenticate"] == 'Bearer realm="wsgi-eventsource"'
    assert body == b"Unauthorized: Publishing to 'room/1' needs the header Authorization: Bearer <token>\n"
    status, _, body = publish(port, "other/1", bearer(writer))
    assert (status, body) == (403, b"This token may not publish to 'other/1': none of its publish patterns covers it\n")
    assert publish(port, "room/1", bearer(token(subscribe=["room/*"])))[0] == 403
    status, headers, _ = publish(port, "room/1", bearer(token(publish=["room/*"], ttl=60, issuer="x")[:-3] + "abc"))
    assert status == 401
    assert "signature" in headers["www-authenticate"]
    assert len(hub.broker.history_of("room/1")) == 1
    assert hub.broker.history_of("other/1") == []


def test_a_cookie_token_does_not_publish(serve: Start) -> None:
    """A browser sends the cookie with requests that pages of other sites
    make (CSRF): publishing takes the token from the Authorization header only."""
    hub, port = start_hub(serve)
    writer = token(publish=["room/*"])
    status, _, body = publish(port, "room/1", cookie(writer))
    assert status == 401
    assert b"needs the header Authorization: Bearer <token>" in body
    assert answer(port, f"/publish/room/1?access_token={writer}", method="POST", body=b"x")[0] == 401
    assert hub.broker.history_of("room/1") == []


def test_without_a_key_the_loopback_rule_still_holds(serve: Start) -> None:
    _, port = start_hub(serve, remote_addr="203.0.113.9", auth=None)
    status, _, body = publish(port, "room/1", bearer(token(publish=["**"])))
    assert status == 403
    assert b"takes publishes only from this machine: this request came from 203.0.113.9" in body


def test_the_publish_token_and_signed_tokens_both_publish(serve: Start) -> None:
    _, port = start_hub(serve, publish_token="static-publish-token", remote_addr="203.0.113.9")
    assert publish(port, "any/channel", bearer("static-publish-token"))[0] == 201
    assert publish(port, "room/1", bearer(token(publish=["room/*"])))[0] == 201
    status, headers, body = publish(port, "room/1", bearer("static-publish-tokeN"))
    assert status == 401
    assert b"the token is malformed, and it is not the publish token" in body
    assert 'error="invalid_token"' in headers["www-authenticate"]
    assert publish(port, "room/1", {})[0] == 401


# -- /stats, /metrics, Host ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/stats", "/metrics"])
def test_stats_and_metrics_need_a_token_that_may_publish_everywhere(serve: Start, path: str) -> None:
    """With a key, /stats and /metrics (they name channels) are for the
    publish token or a token that may publish to every channel; not for
    loopback alone."""
    _, port = start_hub(serve, publish_token="static-publish-token")
    status, headers, _ = answer(port, path)  # from loopback, addressed to 127.0.0.1
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    status, _, body = answer(port, path, headers=bearer(token(publish=["room/**"], subscribe=["**"])))
    assert (status, body) == (403, f"Reading {path} needs a token that may publish to every channel ('**')\n".encode())
    assert answer(port, path, headers=cookie(token(publish=["**"])))[0] == 401  # the header only
    assert answer(port, path, headers=bearer(token(publish=["**"])))[0] == 200
    assert answer(port, path, headers=bearer("static-publish-token"))[0] == 200


def test_with_a_key_any_host_name_may_be_used() -> None:
    """Decided: the DNS-rebinding Host check is off with a key, as with a
    publish token: a private channel needs a token, which a browser sends
    only to the real site."""
    hub = Hub(MemoryBroker(), auth=TokenAuth(SECRET, public=["public/**"]))
    without = Hub(MemoryBroker())
    from tests.conftest import call

    for app, expected in [(hub, "401"), (without, "403")]:
        response = call(app, "/events/private/a", headers={"Host": "rebound.example:8000"})
        body = b"".join(response.body)
        response.close()
        assert response.status.startswith(expected), body
    response = call(hub, "/events/public/a", headers={"Host": "rebound.example:8000"})
    assert response.status.startswith("200")
    response.close()


def test_auth_must_be_a_token_auth() -> None:
    with pytest.raises(TypeError, match="auth must be a TokenAuth"):
        Hub(MemoryBroker(), auth=SECRET)  # type: ignore[arg-type]


# -- CORS ----------------------------------------------------------------------------------------


def test_refusals_carry_the_cors_headers(serve: Start) -> None:
    _, port = start_hub(serve, cors_origin=ORIGIN)
    origin = {"Origin": ORIGIN}
    for path, method, headers, expected in [
        ("/events/private/a", "GET", {}, 401),
        ("/events/private/a", "GET", cookie(token(subscribe=["other"])), 403),
        ("/events?channel=private/a&channel=a/b//c", "GET", {}, 400),
        ("/publish/room/1", "POST", {}, 401),
        ("/publish/room/1", "POST", bearer(token(publish=["other"])), 403),
        ("/publish/bad//name", "POST", {}, 400),
        ("/stats", "GET", {}, 401),
    ]:
        status, answered, _ = answer(port, path, method=method, headers={**origin, **headers}, body=b"x")
        assert status == expected, path
        assert answered["access-control-allow-origin"] == ORIGIN, path
        assert answered["access-control-allow-credentials"] == "true", path
    status, answered, _ = answer(port, "/events/public/a", headers=origin)
    assert (status, answered["access-control-allow-origin"]) == (200, ORIGIN)


def test_preflights_allow_the_authorization_header(serve: Start) -> None:
    _, port = start_hub(serve, cors_origin=ORIGIN)
    ask = {"Origin": ORIGIN, "Access-Control-Request-Headers": "authorization, last-event-id"}
    status, headers, _ = answer(port, "/events/private/a", method="OPTIONS", headers=ask)
    assert status == 204
    assert headers["access-control-allow-origin"] == ORIGIN
    assert "Authorization" in headers["access-control-allow-headers"]
    assert "Last-Event-ID" in headers["access-control-allow-headers"]
    ask = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    status, headers, _ = answer(port, "/publish/room/1", method="OPTIONS", headers=ask)
    assert status == 204
    assert "Authorization" in headers["access-control-allow-headers"]
    status, _, body = answer(
        port, "/publish/room/1", method="OPTIONS", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert (status, body) == (
        403,
        b"Publishing needs the header Authorization: Bearer <token>, and this preflight does not ask to send it\n",
    )


# -- the command line --------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [os.path.join(VENV_BIN, "wsgi-eventsource"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        check=False,
    )


def served_hub(monkeypatch: pytest.MonkeyPatch, *args: str) -> Hub:
    served: list[Any] = []
    monkeypatch.setattr(cli, "serve", served.append)
    cli.main(["serve", *args])
    hub: Hub = cli.make_hub_factory(served[0])()
    return hub


def ec_keys(tmp_path: Any) -> tuple[str, str]:
    """An ES256 key pair as PEM files: (private, public)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private = tmp_path / "private.pem"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public = tmp_path / "public.pem"
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return str(private), str(public)


def test_every_token_option_reaches_the_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    assert served_hub(monkeypatch).auth is None  # no key: as before
    hub = served_hub(
        monkeypatch,
        *("--jwt-key", SECRET, "--jwt-algorithm", "HS512", "--jwt-algorithm", "HS256"),
        *(
            "--jwt-audience",
            "events",
            "--jwt-issuer",
            "https://app.example",
            "--public",
            "news/**",
            "--public",
            "lobby",
        ),
    )
    assert hub.auth is not None
    assert hub.auth.algorithms == ("HS512", "HS256")
    assert (hub.auth.audience, hub.auth.issuer) == ("events", "https://app.example")
    assert hub.auth.public == (("news", "**"), ("lobby",))
    assert hub.subscriber.authorize == hub.auth.can_subscribe

    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")  # the trailing line end is not part of the secret
    monkeypatch.setenv("WSGI_EVENTSOURCE_JWT_KEY", f"@{secret_file}")
    monkeypatch.setenv("WSGI_EVENTSOURCE_JWT_ALGORITHM", "HS384, HS256")
    monkeypatch.setenv("WSGI_EVENTSOURCE_JWT_AUDIENCE", "aud-from-env")
    monkeypatch.setenv("WSGI_EVENTSOURCE_JWT_ISSUER", "iss-from-env")
    # Separated by whitespace: a pattern may contain commas (issue 10 review:
    # split on commas, "room,1/**" made "1/**" public).
    monkeypatch.setenv("WSGI_EVENTSOURCE_PUBLIC", "news/**  room,1/*\n")
    hub = served_hub(monkeypatch)
    assert hub.auth is not None
    assert hub.auth.algorithms == ("HS384", "HS256")
    assert (hub.auth.audience, hub.auth.issuer) == ("aud-from-env", "iss-from-env")
    assert hub.auth.public == (("news", "**"), ("room,1", "*"))
    signed = mint(SECRET, subscribe=["a"], audience="aud-from-env", issuer="iss-from-env", algorithm="HS384")
    assert hub.auth.verify(signed)["eventsource"]["subscribe"] == ["a"]

    _, public_pem = ec_keys(tmp_path)
    hub = served_hub(monkeypatch, "--jwt-key", f"@{public_pem}", "--jwt-algorithm", "ES256")  # the command line wins
    assert hub.auth is not None
    assert hub.auth.algorithms == ("ES256",)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--jwt-key", "short"], {}, "--jwt-key: an HMAC secret must be at least 32 bytes (this one is 5)"),
        (["--jwt-key", "@/nonexistent/key.pem"], {}, "--jwt-key: cannot read the key file '/nonexistent/key.pem'"),
        (["--jwt-key", "@BAD_PEM"], {}, "the key file '"),
        (["--jwt-key", ""], {}, "--jwt-key: must not be empty"),
        (["--jwt-key", SECRET, "--jwt-algorithm", "RS256"], {}, "--jwt-algorithm: algorithm 'RS256' cannot be used"),
        (["--jwt-key", SECRET, "--jwt-algorithm", "none"], {}, "--jwt-algorithm: algorithm 'none'"),
        (["--jwt-key", SECRET, "--jwt-audience", ""], {}, "--jwt-audience: must not be empty"),
        (["--jwt-key", SECRET, "--jwt-issuer", " x"], {}, "--jwt-issuer: must not be empty or start or end"),
        (["--jwt-key", SECRET, "--public", "a/**/b"], {}, "--public: pattern 'a/**/b': '**' may only be the last"),
        (["--public", "news/**", "--jwt-issuer", "i"], {}, "--jwt-issuer, --public work only with --jwt-key"),
        ([], {"WSGI_EVENTSOURCE_PUBLIC": "news/**"}, "--public works only with --jwt-key"),
        ([], {"WSGI_EVENTSOURCE_JWT_KEY": "too-short"}, "WSGI_EVENTSOURCE_JWT_KEY=...: an HMAC secret must be"),
        ([], {"WSGI_EVENTSOURCE_JWT_KEY": "@/nonexistent"}, "WSGI_EVENTSOURCE_JWT_KEY='@/nonexistent': cannot read"),
        (["--jwt-key", SECRET], {"WSGI_EVENTSOURCE_JWT_ALGORITHM": "HS256,ES256"}, "algorithm 'ES256' cannot be used"),
        (["--jwt-key", SECRET], {"WSGI_EVENTSOURCE_PUBLIC": "a b/**/c"}, "WSGI_EVENTSOURCE_PUBLIC='a b/**/c': pattern"),
    ],
)
def test_bad_token_options_are_named(  # noqa: PLR0917 (parameters and fixtures)
    args: list[str],
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Any,
) -> None:
    bad_pem = tmp_path / "bad.pem"
    bad_pem.write_text("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
    args = [arg.replace("@BAD_PEM", f"@{bad_pem}") for arg in args]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    served: list[Any] = []
    monkeypatch.setattr(cli, "serve", served.append)
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", *args])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "too-short" not in err  # a secret is never echoed
    assert not served


def test_a_bad_key_stops_the_real_command_before_any_worker(tmp_path: Any) -> None:
    result = run_cli("serve", "--port", "0", "--jwt-key", f"@{tmp_path / 'missing.pem'}")
    assert result.returncode == 2
    assert "--jwt-key: cannot read the key file" in result.stderr
    assert "Booting worker" not in result.stderr + result.stdout


def test_help_lists_the_token_options() -> None:
    result = run_cli("serve", "--help")
    for option in ["--jwt-key", "--jwt-algorithm", "--jwt-audience", "--jwt-issuer", "--public"]:
        assert option in result.stdout
    assert "wsgi-eventsource token" in run_cli("token", "--help").stdout.replace("usage: ", "")


def test_the_token_command_prints_a_token_the_hub_verifies(tmp_path: Any) -> None:
    result = run_cli(
        "token", "--key", SECRET, "--subscribe", "room/*", "--subscribe", "user/alice/**", "--publish", "room/42",
        "--ttl", "120", "--audience", "events", "--issuer", "app", "--subject", "alice", "--algorithm", "HS384",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    printed = result.stdout.strip()
    assert result.stdout == printed + "\n"  # the token alone on its line
    claims = TokenAuth(SECRET, audience="events", issuer="app", algorithms=["HS384"]).verify(printed)
    assert claims["eventsource"] == {"subscribe": ["room/*", "user/alice/**"], "publish": ["room/42"]}
    assert claims["sub"] == "alice"
    assert claims["exp"] - claims["iat"] == 120

    private_pem, public_pem = ec_keys(tmp_path)
    result = run_cli("token", "--key", f"@{private_pem}", "--subscribe", "**")
    assert result.returncode == 0, result.stderr
    with open(public_pem) as file:
        verified = TokenAuth(file.read()).verify(result.stdout.strip())
    assert verified["eventsource"]["subscribe"] == ["**"]
    assert verified["exp"] - verified["iat"] == 3600


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--subscribe", "a"], "the following arguments are required: --key"),
        (["--key", SECRET], "give --subscribe PATTERN or --publish PATTERN"),
        (["--key", "short", "--subscribe", "a"], "--key: an HMAC secret must be at least 32 bytes"),
        (["--key", "@/nonexistent", "--subscribe", "a"], "argument --key: cannot read the key file '/nonexistent'"),
        (["--key", "@PUBLIC", "--subscribe", "a"], "--key: tokens are signed with the private key"),
        (["--key", SECRET, "--subscribe", "a/**/b"], "argument --subscribe: pattern 'a/**/b'"),
        (["--key", SECRET, "--publish", ""], "argument --publish: a channel pattern must be a non-empty str"),
        (["--key", SECRET, "--subscribe", "a", "--ttl", "0"], "argument --ttl: must be a positive number"),
        (["--key", SECRET, "--subscribe", "a", "--algorithm", "ES256"], "--algorithm: algorithm 'ES256' cannot"),
    ],
)
def test_the_token_command_names_what_is_wrong(args: list[str], message: str, tmp_path: Any) -> None:
    _, public_pem = ec_keys(tmp_path)
    result = run_cli("token", *[arg.replace("@PUBLIC", f"@{public_pem}") for arg in args])
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_the_real_hub_with_a_key_file_end_to_end(hub_server: Serve, tmp_path: Any) -> None:
    """``serve --jwt-key @file --public``: tokens from the ``token`` command
    subscribe and publish; the public channel needs none."""
    key_file = tmp_path / "secret"
    key_file.write_text(SECRET + "\n")
    server = hub_server(env={"WSGI_EVENTSOURCE_JWT_KEY": f"@{key_file}", "WSGI_EVENTSOURCE_PUBLIC": "lobby"})
    reader = run_cli("token", "--key", f"@{key_file}", "--subscribe", "team/*").stdout.strip()
    writer = run_cli("token", "--key", SECRET, "--publish", "team/*", "--publish", "lobby").stdout.strip()
    assert answer(server.port, "/events/team/red")[0] == 401
    stream = StreamClient(server.port, "/events/team/red", headers=cookie(reader))
    assert stream.status == 200
    lobby = StreamClient(server.port, "/events/lobby")
    assert lobby.status == 200
    for stream_client in (stream, lobby):
        stream_client.wait_for(lambda c: b"id: " in c.raw)
    # Through a proxy: the loopback rule no longer applies; the token does.
    proxied = {**bearer(writer), "X-Forwarded-For": "198.51.100.7"}
    assert publish(server.port, "team/red", proxied, b"go red")[0] == 201
    assert publish(server.port, "lobby", proxied, b"hello all")[0] == 201
    assert publish(server.port, "team/red", {"X-Forwarded-For": "198.51.100.7"})[0] == 401
    assert stream.events(1)[0].data == "go red"
    assert lobby.events(1)[0].data == "hello all"
    assert answer(server.port, "/stats")[0] == 401


def test_publishing_reads_bearer_with_any_whitespace_as_subscribing_does(hub_server: Serve) -> None:
    """Issue 10 review: publishing and /stats read ``Authorization`` with
    ``partition(" ")``: ``Bearer<TAB>token`` was a 401 there while
    subscribing (TokenAuth.token_of) accepted it."""
    server = hub_server("--jwt-key", SECRET)
    token = mint(SECRET, publish=["**"])
    for header in (f"Bearer\t{token}", f"bearer  {token}"):
        status, _, body = publish(server.port, "room/1", {"Authorization": header})
        assert status == 201, (header, body)
