"""JWTAuth token verification (no sockets): sources, statuses, every refusal reason,
the algorithm allow-list and asymmetric keys."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import fastws
from fastws.auth import REFRESH_PREFIX, InvalidToken, JWTAuth, user_id
from fastws.handshake import Headers, Request

SECRET = "test-secret-0123456789abcdef-0123456789"


def token(claims: dict | None = None, key: str | bytes = SECRET, alg: str = "HS256", **extra) -> str:
    body = {"sub": "alice", "exp": int(time.time()) + 60}
    body.update(claims or {})
    body.update(extra)
    return jwt.encode(body, key, algorithm=alg)


def request(target: str = "/", headers: dict[str, str] | None = None) -> Request:
    return Request("GET", target, Headers(list((headers or {}).items())), remote_address=("127.0.0.1", 5000))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def refused(auth: JWTAuth, req: Request) -> tuple[int, str]:
    with pytest.raises(fastws.HandshakeError) as info:
        auth.authenticate(req)
    return info.value.status, info.value.reason


# ---------------------------------------------------------------- sources


def test_token_from_bearer_header():
    auth = JWTAuth(SECRET)
    claims = auth.authenticate(request(headers={"Authorization": f"Bearer {token()}"}))
    assert claims["sub"] == "alice"


def test_token_from_query():
    auth = JWTAuth(SECRET)
    claims = auth.authenticate(request(f"/chat?room=1&token={token(userId=42)}"))
    assert claims["userId"] == 42
    assert user_id(claims) == 42


def test_header_scheme_is_case_insensitive():
    auth = JWTAuth(SECRET)
    assert auth.authenticate(request(headers={"authorization": f"bearer {token()}"}))["sub"] == "alice"


def test_query_param_can_be_renamed_or_disabled():
    assert JWTAuth(SECRET, query_param="jwt").authenticate(request(f"/?jwt={token()}"))["sub"] == "alice"
    assert refused(JWTAuth(SECRET, query_param=None), request(f"/?token={token()}")) == (401, "Unauthorized")


@pytest.mark.parametrize("req", [
    request("/"),
    request("/?token="),
    request("/?other=1"),
    request(headers={"Authorization": "Bearer "}),
    request(headers={"Authorization": "Basic dXNlcjpwYXNz"}),
], ids=["none", "empty-query", "other-query", "empty-bearer", "basic"])
def test_missing_token_is_401_unauthorized(req):
    auth = JWTAuth(SECRET)
    with pytest.raises(fastws.HandshakeError) as info:
        auth.authenticate(req)
    assert (info.value.status, info.value.reason) == (401, "Unauthorized")
    assert ("WWW-Authenticate", "Bearer") in info.value.headers


# ---------------------------------------------------------------- refusals


def _none_token() -> str:
    return b64(b'{"alg":"none","typ":"JWT"}') + "." + b64(json.dumps({"sub": "mallory"}).encode()) + "."


def _tampered() -> str:
    head, body, sig = token().split(".")
    evil = b64(json.dumps({"sub": "admin", "exp": int(time.time()) + 60}).encode())
    return f"{head}.{evil}.{sig}"


BAD_TOKENS = {
    "wrong-secret": lambda: token(key="another-secret-0123456789abcdef-01234"),
    "tampered-claims": _tampered,
    "expired": lambda: token(exp=int(time.time()) - 10),
    "not-yet-valid": lambda: token(nbf=int(time.time()) + 60),
    "alg-none": _none_token,
    "alg-none-uppercase": lambda: b64(b'{"alg":"NONE"}') + "." + b64(b'{"sub":"x"}') + ".",
    "alg-not-allowed": lambda: token(key=SECRET + "-longer-key-for-hs512-0123456789abcdef", alg="HS512"),
    "truncated": lambda: token()[:-10],
    "two-segments": lambda: ".".join(token().split(".")[:2]),
    "four-segments": lambda: token() + ".abc",
    "garbage": lambda: "not a token at all",
    "bad-base64": lambda: "@@@.###.$$$",
    "header-not-json": lambda: b64(b"[1,2") + "." + b64(b"{}") + ".sig",
    "header-not-object": lambda: b64(b"[1,2]") + "." + b64(b"{}") + ".sig",
    "huge": lambda: "a" * 100_000,
    "claims-not-object": lambda: jwt.api_jws.encode(b"[1,2,3]", SECRET, algorithm="HS256"),
}


@pytest.mark.parametrize("name", list(BAD_TOKENS))
def test_bad_tokens_are_401_invalid_token(name):
    auth = JWTAuth(SECRET)
    bad = BAD_TOKENS[name]()
    for req in (request(headers={"Authorization": f"Bearer {bad}"}), request(f"/?token={bad}")):
        with pytest.raises(fastws.HandshakeError) as info:
            auth.authenticate(req)
        assert (info.value.status, info.value.reason) == (401, "Invalid token"), name
    with pytest.raises(InvalidToken):
        auth.verify(bad)


def test_audience_and_issuer():
    auth = JWTAuth(SECRET, audience="fastws-tests", issuer="https://issuer.example")
    good = token(aud="fastws-tests", iss="https://issuer.example")
    assert auth.verify(good)["aud"] == "fastws-tests"
    for bad in (token(aud="other", iss="https://issuer.example"), token(aud="fastws-tests", iss="https://evil"),
                token(iss="https://issuer.example"), token(aud="fastws-tests")):
        assert refused(auth, request(f"/?token={bad}")) == (401, "Invalid token")
    # a token meant for some audience is refused where no audience is configured
    assert refused(JWTAuth(SECRET), request(f"/?token={good}")) == (401, "Invalid token")


def test_several_audiences_accepted():
    auth = JWTAuth(SECRET, audience=["a", "b"])
    assert auth.verify(token(aud="b"))["aud"] == "b"
    with pytest.raises(InvalidToken):
        auth.verify(token(aud="c"))


def test_leeway_accepts_recently_expired():
    t = token(exp=int(time.time()) - 5)
    with pytest.raises(InvalidToken):
        JWTAuth(SECRET).verify(t)
    assert JWTAuth(SECRET, leeway=30).verify(t)["sub"] == "alice"


def test_required_claims():
    auth = JWTAuth(SECRET, require=("exp", "sub"))
    no_exp = jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken, match="exp"):
        auth.verify(no_exp)
    assert JWTAuth(SECRET).verify(no_exp) == {"sub": "alice"}


def test_max_token_size():
    auth = JWTAuth(SECRET, max_token_size=64)
    with pytest.raises(InvalidToken, match="too long"):
        auth.verify(token())


# ---------------------------------------------------------------- configuration


def test_none_cannot_be_allowed():
    with pytest.raises(ValueError, match="none"):
        JWTAuth(SECRET, algorithms=("HS256", "none"))


def test_missing_keys_and_unknown_algorithms():
    with pytest.raises(ValueError, match="secret"):
        JWTAuth()
    with pytest.raises(ValueError, match="public_key"):
        JWTAuth(SECRET, algorithms=("RS256",))
    with pytest.raises(ValueError, match="unknown"):
        JWTAuth(SECRET, algorithms=("XX999",))
    with pytest.raises(ValueError, match="at least one"):
        JWTAuth(SECRET, algorithms=())


def _rsa_pair() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def test_rs256_with_pem_public_key():
    private, public = _rsa_pair()
    auth = JWTAuth(public_key=public, algorithms=("RS256",))
    assert auth.verify(token(key=private, alg="RS256"))["sub"] == "alice"
    other_private, _ = _rsa_pair()
    with pytest.raises(InvalidToken):
        auth.verify(token(key=other_private, alg="RS256"))
    # an HS256 token is not in the allow-list
    with pytest.raises(InvalidToken):
        auth.verify(token())


def test_es256_with_pem_public_key():
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    auth = JWTAuth(public_key=public.decode(), algorithms=("ES256",))
    assert auth.verify(token(key=private, alg="ES256"))["sub"] == "alice"


def test_public_key_is_never_an_hmac_secret():
    """The classic algorithm confusion: an HS256 token signed with the RSA public key as its secret."""
    private, public = _rsa_pair()
    auth = JWTAuth(SECRET, public_key=public, algorithms=("RS256", "HS256"))
    assert auth.verify(token(key=private, alg="RS256"))["sub"] == "alice"
    assert auth.verify(token())["sub"] == "alice"
    forged = jwt.api_jws.PyJWS().encode(
        json.dumps({"sub": "admin", "exp": int(time.time()) + 60}).encode(), b"x" * 32, algorithm="HS256")
    # re-sign by hand with the PEM bytes as the HMAC key (pyjwt refuses to do it for us)
    import hashlib
    import hmac
    head, body, _ = forged.split(".")
    sig = hmac.new(public, f"{head}.{body}".encode(), hashlib.sha256).digest()
    with pytest.raises(InvalidToken):
        auth.verify(f"{head}.{body}.{b64(sig)}")


def test_refresh_prefix_matches_json_stringify():
    # what JSON.stringify({type: "auth", token}) produces
    assert json.dumps({"type": "auth", "token": "x"}, separators=(",", ":")).startswith(REFRESH_PREFIX)


def test_user_id():
    assert user_id({"userId": "u1", "sub": "s"}) == "u1"
    assert user_id({"sub": "s"}) == "s"
    assert user_id({}) is None
    assert user_id(None) is None
