"""Issue 10 review: an adversarial look at signed tokens in the hub, the
``serve --jwt-*`` options, the ``token`` command and the Flask example; each
test here is the regression test of a defect it found (real sockets, the real
console script, the real example app)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.conftest import Serve
from tests.helpers import StreamClient
from tests.test_hub_auth import answer, cookie, run_cli, start_hub, token
from wsgi_eventsource.auth import TokenAuth

pytestmark = pytest.mark.server

# A secret of random bytes, one of which is not UTF-8: argv and the
# environment hand it over as a str with a surrogate (os.fsdecode).
BYTES_SECRET = b"\xff" + b"review-secret-" * 4
SECRET_TEXT = "review-secret-review-secret"  # what must never be echoed


def test_a_secret_that_is_not_utf8_is_used_as_given_and_never_echoed(hub_server: Serve) -> None:
    """Issue 10 review: ``--key``/``--jwt-key`` given a secret with a byte that
    is not UTF-8 failed in ``str.encode``, a ValueError that argparse reported
    as ``invalid _read_key value: '\\udcffreview-secret-...'``: the secret in
    the error output (a terminal, a journal, a container log), and a usable
    secret refused. It is now taken as the bytes given."""
    given = os.fsdecode(BYTES_SECRET)
    minted = run_cli("token", "--key", given, "--subscribe", "team/*")
    assert SECRET_TEXT not in minted.stderr
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    assert TokenAuth(BYTES_SECRET).verify(token)["eventsource"]["subscribe"] == ["team/*"]

    short = os.fsdecode(b"\xff" + SECRET_TEXT[:20].encode())  # refused: under 32 bytes
    for args in (["token", "--key", short, "--subscribe", "a"], ["serve", "--jwt-key", short]):
        refused = run_cli(*args)
        assert refused.returncode == 2
        assert "at least 32 bytes" in refused.stderr
        assert SECRET_TEXT[:20] not in refused.stderr

    server = hub_server("--jwt-key", given)
    assert answer(server.port, "/events/team/red")[0] == 401
    stream = StreamClient(server.port, "/events/team/red", headers=cookie(token))
    assert stream.status == 200
    assert not any(SECRET_TEXT in line for line in server.log)


def _public_key_texts() -> list[tuple[str, bytes]]:
    """A public key (and a certificate) as base64 text without PEM armor:
    one line, URL-safe without padding, and a PEM's body lines."""
    import base64
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    texts = []
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for key in (rsa_key, ec.generate_private_key(ec.SECP256R1()), ed25519.Ed25519PrivateKey.generate()):
        public = key.public_key()
        der = public.public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
        pem = public.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
        name = type(public).__name__
        texts += [
            (f"{name} base64", base64.b64encode(der)),
            (f"{name} base64url", base64.urlsafe_b64encode(der).rstrip(b"=")),
            (f"{name} PEM body", b"\n".join(pem.splitlines()[1:-1])),
        ]
    texts.append(
        (
            "RSA PKCS#1 base64",
            base64.b64encode(rsa_key.public_key().public_bytes(ser.Encoding.DER, ser.PublicFormat.PKCS1)),
        )
    )
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "hub")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder(subject, subject, rsa_key.public_key(), 1, now, now + datetime.timedelta(days=1))
        .sign(rsa_key, hashes.SHA256())
        .public_bytes(ser.Encoding.DER)
    )
    texts.append(("certificate base64", base64.b64encode(certificate)))
    return texts


def test_a_public_key_as_base64_text_is_not_an_hmac_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 10 review: the algorithm-confusion attack. A public key given as
    base64 text without its PEM armor (its PEM body on one line, as in an
    environment variable) was taken as an HMAC secret: anyone holding the
    public key could sign an HS256 token with that text and read every
    channel. Refused like a PEM or SSH key given as a secret, by TokenAuth and
    so by ``serve --jwt-key`` at start."""
    from wsgi_eventsource import cli

    started: list[Any] = []
    monkeypatch.setattr(cli, "serve", started.append)
    for name, text in _public_key_texts():
        with pytest.raises(ValueError, match="cannot be an HMAC secret"):
            TokenAuth(text)  # else jwt.encode(claims, text, "HS256") would pass for a token of ours
        with pytest.raises(SystemExit) as exited:
            cli.main(["serve", "--jwt-key", text.decode()])
        assert exited.value.code == 2, name
    assert started == []


def test_the_rooms_example_sets_a_secure_token_cookie(serve: Any) -> None:
    """Issue 10 review: examples/rooms.py, the code users copy, set the token
    cookie without ``Secure`` (the README's own snippet has it): over https a
    browser would still send the token on any plain http request to the site,
    readable on the way. Chromium takes a Secure cookie from http://127.0.0.1
    and http://localhost, so development is not hindered."""
    import importlib

    rooms: Any = importlib.import_module("examples.rooms")  # by name: mypy checks examples/ as files
    port = serve(rooms.application).server_port
    form_type = {"Content-Type": "application/x-www-form-urlencoded"}
    login = StreamClient(port, "/login", method="POST", body=b"user=alice", headers=form_type)
    assert login.status == 303
    flags = [flag.strip().lower() for flag in login.headers["set-cookie"].split(";")[1:]]
    assert {"secure", "httponly", "samesite=strict"} <= set(flags)
    token = login.headers["set-cookie"].split(";")[0].removeprefix("eventsource_token=")
    refreshed = StreamClient(port, "/refresh", method="POST", headers=cookie(token))
    assert refreshed.status == 204
    assert "secure" in refreshed.headers["set-cookie"].lower().split("; ")


def test_a_multiplexed_stream_listing_a_public_channel_first_still_ends_with_its_token(serve: Any) -> None:
    """Issue 10 review (found nothing, covers what no other test did): a
    public channel needs no token, so listing one first must not let the
    private channels after it outlive the token; a public channel mixed into
    a stream does not excuse a private one without a token either."""
    _, port = start_hub(serve)
    path = "/events/?channel=public/news&channel=private/a"
    assert answer(port, path)[0] == 401
    assert answer(port, path, headers=cookie(token(subscribe=["other/*"])))[0] == 403
    expiring = cookie(token(subscribe=["private/*"], ttl=2))  # exp: 1 to 2 s from now
    stream = StreamClient(port, path, headers=expiring)
    assert stream.status == 200
    stream.read_to_end(timeout=5)
    assert 500 <= (stream.parser.reconnection_time or 0) <= 1500
    assert answer(port, path, headers=expiring)[0] == 401
    public_only = StreamClient(port, "/events/?channel=public/news&channel=public/sport", headers=expiring)
    assert public_only.status == 200  # public channels need no token, however stale


def test_publishing_ignores_claims_another_part_of_the_site_read_from_the_cookie(serve: Any) -> None:
    """Issue 10 review (found nothing, covers what no other test did):
    TokenAuth caches the claims it verified in the environ, and the hub checks
    publishes against a copy of the environ without the cookie. A site that
    mounts the hub and reads the token with the same TokenAuth in a middleware
    (to know who is logged in) must not make the hub take a garbage
    ``Authorization: Bearer`` for the cookie's token: it does not, since the
    header comes first for both readers, so the cache never holds the cookie's
    claims when the hub looks at a header."""
    from tests.test_hub_auth import SECRET, publish
    from wsgi_eventsource import MemoryBroker, Unauthorized
    from wsgi_eventsource.hub import Hub

    auth = TokenAuth(SECRET)
    hub = Hub(MemoryBroker(), auth=auth)

    def site(environ: dict[str, Any], start_response: Any) -> Any:
        try:
            environ["site.user"] = auth.claims_of(environ).get("sub")  # who is logged in
        except Unauthorized:
            environ["site.user"] = None
        return hub(environ, start_response)

    port = serve(site).server_port
    admin_cookie = cookie(token(publish=["**"], subject="admin"))
    status, headers, body = publish(port, "room/1", {**admin_cookie, "Authorization": "Bearer garbage"})
    assert status == 401, body
    assert 'error="invalid_token"' in headers["www-authenticate"]
    assert answer(port, "/stats", headers={**admin_cookie, "Authorization": "Bearer garbage"})[0] == 401
    good = {"Authorization": f"Bearer {token(publish=['room/*'])}"}
    assert publish(port, "room/1", {**admin_cookie, **good})[0] == 201
