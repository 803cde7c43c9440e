"""Signed tokens (JWT) for subscribing and publishing, verified with PyJWT.

The web app that knows its users signs a short-lived token naming the
channels a user may read and publish to; the hub (or any app built on the
channel apps) verifies it::

    from wsgi_eventsource.auth import TokenAuth, mint

    auth = TokenAuth(SECRET, public=["news/**"])
    app = broker.subscriber_app(authorize=auth.can_subscribe)
    token = mint(SECRET, subscribe=["room/42", "user/alice/**"], ttl=600)

The claims are ``{"eventsource": {"subscribe": [patterns], "publish":
[patterns]}}`` with ``exp`` (required), and ``nbf``, ``aud``, ``iss`` as
PyJWT checks them. Patterns match channel names segment by segment (see
:func:`pattern_matches`).

A request without a usable token raises :class:`Unauthorized`, which the
apps answer with ``401`` and ``WWW-Authenticate: Bearer`` (RFC 6750); a valid
token that does not cover the channel makes the callback return ``False``,
answered with ``403``. Verification is PyJWT's: this module only chooses the
algorithms from the key and reads the claims.
"""

from __future__ import annotations

import base64
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from werkzeug.sansio.http import parse_cookie

from .app import EXPIRES_KEY
from .brokers.base import _SEGMENT
from .errors import Unauthorized

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = [
    "CLAIM",
    "EXPIRES_KEY",
    "TokenAuth",
    "Unauthorized",
    "bearer_token",
    "check_pattern",
    "mint",
    "pattern_matches",
]

#: The claim that holds the patterns.
CLAIM = "eventsource"
_HMAC = ("HS256", "HS384", "HS512")
_RSA = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_CURVES = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512", "secp256k1": "ES256K"}
#: The shortest HMAC secret accepted, in bytes (RFC 7518 3.2: at least the hash size).
MIN_SECRET_BYTES = 32
# RFC 7518 3.2: "a key of the same size as the hash output ... or larger MUST
# be used"; PyJWT warns at every verification with a shorter one (a 500 where
# warnings are errors), so an algorithm is offered only if the secret is long enough.
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
#: The smallest RSA key accepted, in bits (NIST SP 800-131A; PyJWT warns at
#: every verification with a shorter one).
MIN_RSA_BITS = 2048
# RFC 6265 4.1.1: a cookie-name is an RFC 9110 token.
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A query parameter name that needs no percent-encoding (RFC 3986 unreserved).
_QUERY_NAME = re.compile(r"[A-Za-z0-9\-._~]+")
# Where claims_of keeps (the TokenAuth, its verified claims) for the request's
# other channels: only the instance that verified them may reuse them.
_CLAIMS_KEY = "wsgi_eventsource.token_claims"


def _jwt() -> Any:
    try:
        import jwt  # optional: only tokens need it
    except ImportError as exc:
        raise ImportError("tokens need PyJWT: pip install 'wsgi-eventsource[jwt]'") from exc
    return jwt


def check_pattern(pattern: str) -> tuple[str, ...]:
    """The segments of a channel pattern, or ``ValueError`` naming what is wrong.

    Segments are literal (as in channel names), ``*`` (exactly one segment)
    or, as the last segment only, ``**`` (one or more segments); ``**``
    alone matches every channel.
    """
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"a channel pattern must be a non-empty str, not {pattern!r}")
    segments = tuple(pattern.split("/"))
    for index, segment in enumerate(segments):
        if segment == "**":
            if index != len(segments) - 1:
                raise ValueError(f"pattern {pattern!r}: '**' may only be the last segment")
        elif segment != "*" and (segment in (".", "..") or not _SEGMENT.fullmatch(segment)):
            raise ValueError(
                f"pattern {pattern!r}: segment {segment!r} is neither a channel name segment, '*' nor '**'"
            )
    return segments


def pattern_matches(pattern: Sequence[str], channel: str) -> bool:
    """Whether the pattern (its segments, from :func:`check_pattern`) covers *channel*.

    ``room/*`` covers ``room/42``, not ``room/42/x`` nor ``room``;
    ``room/**`` covers ``room/42`` and ``room/42/x``, not ``room``.
    """
    names = channel.split("/")
    if pattern[-1] == "**":
        fixed = pattern[:-1]
        if len(names) <= len(fixed):
            return False
    else:
        fixed = pattern
        if len(names) != len(fixed):
            return False
    return all(want in ("*", name) for want, name in zip(fixed, names, strict=False))


def _pattern_list(values: Iterable[str]) -> list[str]:
    """*values* as a list, each a valid pattern; a lone str is refused (it
    would otherwise be taken as one pattern per character)."""
    if isinstance(values, str):
        raise ValueError(f"patterns must be a list of str, not the str {values!r}")
    listed = list(values)
    for value in listed:
        check_pattern(value)
    return listed


def _patterns(values: Iterable[str]) -> tuple[tuple[str, ...], ...]:
    return tuple(check_pattern(value) for value in _pattern_list(values))


def _base64(raw: bytes) -> bytes | None:
    """*raw* decoded as base64 (standard or URL-safe; whitespace and padding optional), or None."""
    text = b"".join(raw.split()).rstrip(b"=")
    text += b"=" * (-len(text) % 4)  # base64url often leaves the padding out
    for alphabet in (b"+/", b"-_"):
        try:
            return base64.b64decode(text, altchars=alphabet, validate=True)
        except ValueError:  # binascii.Error
            continue
    return None


def _key_kind(key: str | bytes) -> tuple[Any, tuple[str, ...]]:
    """The key PyJWT verifies with, and the algorithms its kind allows."""
    raw = key.encode("utf-8") if isinstance(key, str) else key
    if not isinstance(raw, bytes) or not raw:
        raise ValueError("key must be a non-empty str or bytes: an HMAC secret or a PEM public key")
    if not raw.lstrip().startswith(b"-----BEGIN"):
        if len(raw) < MIN_SECRET_BYTES:
            raise ValueError(f"an HMAC secret must be at least {MIN_SECRET_BYTES} bytes (this one is {len(raw)})")
        # PyJWT refuses, at every verification, a secret that is a public key
        # in another form (an SSH key, a JWK, a PEM after some text): the
        # algorithm-confusion attack. Refuse it here, once, rather than a 500
        # per request.
        jwt = _jwt()
        hmac = jwt.algorithms.HMACAlgorithm(jwt.algorithms.HMACAlgorithm.SHA256)
        try:
            hmac.prepare_key(raw)
            # A public key's DER as base64 (a PEM's body without its armor
            # lines, as one env var line): PyJWT takes it as a secret, and
            # anyone with the public key could sign HS256 tokens with it.
            der = _base64(raw)
            if der is not None:
                hmac.prepare_key(der)
        except jwt.InvalidKeyError as exc:
            raise ValueError(f"this key cannot be an HMAC secret: {exc} (pass a public key as PEM)") from None
        return raw, tuple(name for name in _HMAC if len(raw) >= _HMAC_MIN_BYTES[name])
    try:
        from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
        from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key
    except ImportError as exc:
        raise ImportError("public keys need cryptography: pip install 'wsgi-eventsource[jwt]'") from exc
    try:
        if b"PRIVATE KEY" in raw:
            public: Any = load_pem_private_key(raw, password=None).public_key()
        else:
            public = load_pem_public_key(raw)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"the key looks like PEM but cannot be read: {exc}") from None
    if isinstance(public, rsa.RSAPublicKey):
        if public.key_size < MIN_RSA_BITS:
            raise ValueError(f"an RSA key must have at least {MIN_RSA_BITS} bits (this one has {public.key_size})")
        return public, _RSA
    if isinstance(public, ec.EllipticCurvePublicKey):
        algorithm = _CURVES.get(public.curve.name)
        if algorithm is None:
            raise ValueError(f"elliptic curve {public.curve.name} is not one JWT uses (P-256, P-384, P-521)")
        return public, (algorithm,)
    if isinstance(public, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return public, ("EdDSA",)
    raise ValueError(f"a {type(public).__name__} cannot verify JWTs")


def _check_algorithm(algorithm: str, allowed: tuple[str, ...], key: bytes) -> None:
    """``ValueError`` unless *algorithm* is one of *allowed* (those *key* allows)."""
    if algorithm in allowed:
        return
    if allowed[0] not in _HMAC:
        raise ValueError(f"algorithm {algorithm!r} cannot be used with this key: use {', '.join(allowed)}")
    if algorithm in _HMAC:
        raise ValueError(
            f"algorithm {algorithm!r} needs an HMAC secret of at least {_HMAC_MIN_BYTES[algorithm]} bytes"
            f" (this one is {len(key)}): use {', '.join(allowed)} or a longer secret"
        )
    raise ValueError(f"algorithm {algorithm!r} cannot be used with an HMAC secret: use {', '.join(allowed)}")


def bearer_token(environ: WSGIEnvironment) -> str | None:
    """The token of the request's ``Authorization: Bearer <token>`` header, or ``None``.

    RFC 6750 2.1: ``Bearer`` 1*SP b64token; a tab (any whitespace) is read alike.
    """
    parts = environ.get("HTTP_AUTHORIZATION", "").split(None, 1)
    if len(parts) == 2 and parts[0].lower() == "bearer":
        return str(parts[1].strip())
    return None


class TokenAuth:
    """``authorize`` callbacks that read a signed token (JWT) from the request.

    :param key: an HMAC secret (at least 32 bytes: HS256; 48: also HS384;
        64: also HS512) or a PEM public key (RSA of 2048 bits or more: RS*/PS*;
        EC: ES256/384/512 by its curve; Ed25519 or Ed448: EdDSA). A PEM
        private key is accepted too (its public half is used).
    :param algorithms: the algorithms accepted; by default every one the
        key allows. Never ``none``, and never an HMAC algorithm with a
        PEM key (the algorithm-confusion attack): both raise ``ValueError``.
    :param audience: if set, tokens must carry this ``aud``.
    :param issuer: if set, tokens must carry this ``iss``.
    :param leeway: seconds of clock skew allowed for ``exp`` and ``nbf``.
    :param cookie: the cookie the token may come in (``None``: none).
    :param query_param: the query parameter it may come in (``None``: none).
    :param public: patterns of channels anyone may subscribe to without a token.

    The token is read from ``Authorization: Bearer``, else the cookie, else the
    query parameter.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        key: str | bytes,
        *,
        algorithms: Sequence[str] | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 0,
        cookie: str | None = "eventsource_token",
        query_param: str | None = "access_token",
        public: Iterable[str] = (),
    ) -> None:
        self._jwt = _jwt()
        raw_key = key.encode("utf-8") if isinstance(key, str) else key
        self._key, allowed = _key_kind(raw_key)
        if algorithms is None:
            algorithms = allowed
        if isinstance(algorithms, str):
            raise ValueError(f"algorithms must be a list, not the str {algorithms!r}")
        algorithms = tuple(algorithms)
        if not algorithms:
            raise ValueError("algorithms must name at least one algorithm")
        for algorithm in algorithms:
            if not isinstance(algorithm, str):
                raise ValueError(f"algorithms must be names (str), not {algorithm!r}")
            if algorithm.lower() == "none":
                raise ValueError("algorithm 'none' (unsigned tokens) is never accepted")
            _check_algorithm(algorithm, allowed, raw_key)
        if not isinstance(leeway, (int, float)) or isinstance(leeway, bool) or not 0 <= leeway < 3600:
            raise ValueError(f"leeway must be a number of seconds, at least 0 and under 3600, not {leeway!r}")
        for name, value in (
            ("audience", audience),
            ("issuer", issuer),
            ("cookie", cookie),
            ("query_param", query_param),
        ):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be a non-empty str or None, not {value!r}")
        if cookie is not None and not _COOKIE_NAME.fullmatch(cookie):
            raise ValueError(f"cookie {cookie!r} is not a cookie name (letters, digits, !#$%&'*+-.^_`|~)")
        if query_param is not None and not _QUERY_NAME.fullmatch(query_param):
            raise ValueError(f"query_param {query_param!r} is not a plain parameter name (letters, digits, -._~)")
        self.algorithms = algorithms
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        self.cookie = cookie
        self.query_param = query_param
        self.public = _patterns(public)

    def __repr__(self) -> str:  # never the key
        return f"<TokenAuth algorithms={list(self.algorithms)} audience={self.audience!r} issuer={self.issuer!r}>"

    # -- the callbacks ------------------------------------------------------------------

    def can_subscribe(self, environ: WSGIEnvironment, channel: str) -> bool:
        """``authorize`` for subscribing: ``True`` for a public channel or one
        the token's subscribe patterns cover, ``False`` for a valid token that
        does not cover it. Raises :class:`Unauthorized` without a usable token."""
        if any(pattern_matches(pattern, channel) for pattern in self.public):
            return True
        return self._covers(environ, "subscribe", channel)

    def can_publish(self, environ: WSGIEnvironment, channel: str) -> bool:
        """``authorize`` for publishing: as :meth:`can_subscribe` with the
        publish patterns (public channels are not publishable)."""
        return self._covers(environ, "publish", channel)

    # -- reading tokens -------------------------------------------------------------------

    def token_of(self, environ: WSGIEnvironment) -> str | None:
        """The token the request carries, or ``None``."""
        token = bearer_token(environ)
        if token is not None:
            return token
        cookies: str = environ.get("HTTP_COOKIE", "")
        if self.cookie is not None and cookies:
            # WSGI hands the header over as latin-1. werkzeug's parse_cookie(environ)
            # decodes it as strict UTF-8: one stray byte in any cookie of the
            # site raised UnicodeDecodeError (a 500). Decode leniently here.
            value = parse_cookie(cookies.encode("latin-1", "replace").decode("utf-8", "replace")).get(self.cookie)
            if value:
                return value
        if self.query_param is not None and self.query_param in environ.get("QUERY_STRING", ""):
            values: list[str] | None = parse_qs(environ.get("QUERY_STRING", "")).get(self.query_param)
            if values and values[-1]:
                return values[-1]
        return None

    def claims_of(self, environ: WSGIEnvironment) -> dict[str, Any]:
        """The verified claims of the request's token (cached in *environ*
        for this instance: another ``TokenAuth``, with another key, audience
        or issuer, verifies the token again).

        Also sets :data:`EXPIRES_KEY` to the time this instance stops
        accepting the token (``exp`` plus ``leeway``), or keeps an earlier one.

        :raises Unauthorized: no token, or one PyJWT refuses, or claims that
            are not ``{"eventsource": {"subscribe": [...], "publish": [...]}}``.
        """
        cached = environ.get(_CLAIMS_KEY)
        if cached is not None and cached[0] is self:
            return dict(cached[1])
        token = self.token_of(environ)
        if token is None:
            raise Unauthorized("a token is required", error=None)
        claims = self.verify(token)
        environ[_CLAIMS_KEY] = (self, claims)
        # Accepted until exp + leeway: a stream ended at exp would reconnect,
        # be accepted again and end at once, every second of the leeway.
        expires = float(claims["exp"]) + self.leeway
        earlier = environ.get(EXPIRES_KEY)
        environ[EXPIRES_KEY] = min(expires, earlier) if isinstance(earlier, float) else expires
        return dict(claims)

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of *token* if PyJWT verifies it; else :class:`Unauthorized`."""
        jwt = self._jwt
        required = ["exp"] + (["aud"] if self.audience else []) + (["iss"] if self.issuer else [])
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=list(self.algorithms),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                # iat says when the token was made (RFC 7519 4.1.6), not from
                # when it is valid (that is nbf): an app whose clock runs a
                # moment ahead of the hub's must not see its fresh tokens refused.
                options={"require": required, "verify_iat": False},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("the token is not valid yet (nbf)") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("the token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("the token is from another issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"the token has no {exc.claim!r} claim") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthorized(f"the token's algorithm is not accepted (use {', '.join(self.algorithms)})") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("the token's signature is wrong") from None
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError, RecursionError):
            raise Unauthorized("the token is malformed") from None
        section = claims.get(CLAIM, {})
        if not isinstance(section, Mapping):
            raise Unauthorized(f"the token's {CLAIM!r} claim is not an object")
        for right in ("subscribe", "publish"):
            patterns = section.get(right, [])
            if not isinstance(patterns, list):
                raise Unauthorized(f"the token's {CLAIM}.{right} is not a list of patterns")
            try:
                _patterns(patterns)
            except ValueError as exc:
                raise Unauthorized(f"the token's {CLAIM}.{right} has a bad pattern: {exc}") from None
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise Unauthorized("the token's exp is not a number")
        try:
            finite = math.isfinite(float(exp))
        except OverflowError:  # an int beyond any float: JSON allows it
            finite = False
        if not finite:
            raise Unauthorized("the token's exp is out of range")
        return claims

    def _covers(self, environ: WSGIEnvironment, right: str, channel: str) -> bool:
        claims = self.claims_of(environ)
        patterns = _patterns(claims.get(CLAIM, {}).get(right, []))
        return any(pattern_matches(pattern, channel) for pattern in patterns)


def mint(
    key: str | bytes,
    *,
    subscribe: Iterable[str] = (),
    publish: Iterable[str] = (),
    ttl: float = 3600,
    algorithm: str | None = None,
    audience: str | None = None,
    issuer: str | None = None,
    subject: str | None = None,
    claims: Mapping[str, Any] | None = None,
) -> str:
    """A signed token that lets its bearer subscribe and publish as given, for *ttl* seconds.

    :param key: the HMAC secret, or a PEM *private* key, that signs it.
    :param algorithm: by default HS256 for a secret, RS256 for RSA, the
        curve's ES algorithm for EC, EdDSA for Ed25519/Ed448.
    :param claims: more claims to put in (``sub``, ids of your own, ...).
    """
    jwt = _jwt()
    subscribe_patterns, publish_patterns = _pattern_list(subscribe), _pattern_list(publish)
    if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or not 0 < ttl < float("inf"):
        raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
    raw = key.encode("utf-8") if isinstance(key, str) else key
    _, allowed = _key_kind(raw)
    hmac_secret = allowed[0] in _HMAC
    if not hmac_secret and b"PRIVATE KEY" not in raw:
        raise ValueError("tokens are signed with the private key: this PEM is a public key")
    chosen = algorithm or allowed[0]
    _check_algorithm(chosen, allowed, raw)
    now = int(time.time())
    payload: dict[str, Any] = {**(claims or {}), "iat": now, "exp": now + max(1, int(ttl))}
    payload[CLAIM] = {"subscribe": subscribe_patterns, "publish": publish_patterns}
    if audience is not None:
        payload["aud"] = audience
    if issuer is not None:
        payload["iss"] = issuer
    if subject is not None:
        payload["sub"] = subject
    signing_key: Any = raw
    if not hmac_secret:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        signing_key = load_pem_private_key(raw, password=None)
    token: str = jwt.encode(payload, signing_key, algorithm=chosen)
    return token
