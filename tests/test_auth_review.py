"""Issue 10 review: an adversarial look at signed tokens in the hub, the
``serve --jwt-*`` options, the ``token`` command and the Flask example; each
test here is the regression test of a defect it found (real sockets, the real
console script, the real example app)."""

from __future__ import annotations

import os

import pytest

from tests.conftest import Serve
from tests.helpers import StreamClient
from tests.test_hub_auth import answer, cookie, run_cli
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
