"""HTTP digest authentication for SIP (RFC 2617, RFC 3261 22, RFC 7616, RFC 8760). Pure.

MD5, SHA-256 and SHA-512-256 with their -sess variants, qop auth and auth-int, and the choice of the strongest of
several challenges.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable

from screener.sip.message import split_list

HashFn = Callable[[bytes], str]


def _hash_fn(name: str) -> HashFn | None:
    try:
        hashlib.new(name, usedforsecurity=False)
    except ValueError:  # sha512_256 needs an OpenSSL build of hashlib (1.1.1+)
        return None
    return lambda data: hashlib.new(name, data, usedforsecurity=False).hexdigest()


# digest algorithm (upper case, without -sess) -> hex digest function, strongest first; only those this Python has
HASHES: dict[str, HashFn] = {alg: fn for alg, name in (("SHA-512-256", "sha512_256"), ("SHA-256", "sha256"),
                                                        ("MD5", "md5")) if (fn := _hash_fn(name)) is not None}
_KNOWN = ("SHA-512-256", "SHA-256", "MD5")
_QOPS = ("auth", "auth-int")
_NEW_CHALLENGE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+(\s+[!#$%&'*+.^_`|~0-9A-Za-z-]+\s*=|\s*$)")


def parse_challenge(value: str) -> dict[str, str]:
    """`Digest realm="x", nonce="y", qop="auth,auth-int"` -> {"realm": "x", ...} (keys lower-case).

    Raises ValueError for another scheme, a missing nonce, or an algorithm or qop this module cannot answer.
    """
    challenge = _parse(value)
    _check_supported(challenge)
    return challenge


def best_challenge(values: list[str]) -> dict[str, str]:
    """The strongest answerable of the challenges in these WWW-/Proxy-Authenticate values (SHA-512-256 > SHA-256 >
    MD5; the server's order among equals); ValueError naming what was offered when none can be answered."""
    found: list[dict[str, str]] = []
    errors: list[str] = []
    unsupported: list[str] = []
    for value in values:
        for text in _split_challenges(value):
            try:
                challenge = _parse(text)
            except ValueError as e:
                errors.append(str(e))
                continue
            if _base(challenge) not in HASHES:
                unsupported.append(challenge.get("algorithm", "MD5"))
                continue
            try:
                _check_supported(challenge)
            except ValueError as e:
                errors.append(str(e))
                continue
            found.append(challenge)
    if found:
        return min(found, key=lambda c: _KNOWN.index(_base(c)))  # min() keeps the first of equals
    if unsupported:
        raise ValueError(_algorithm_error(unsupported))
    if errors:
        raise ValueError("; ".join(dict.fromkeys(errors)))
    raise ValueError("no challenge")


def authorization(challenge: dict[str, str], method: str, uri: str, user: str, password: str,
                  nc: int = 1, cnonce: str | None = None, *, body: bytes = b"") -> str:
    """The Authorization / Proxy-Authorization value answering one challenge.

    qop=auth is used when offered, else auth-int, which hashes `body` (the request's body, b"" when it has none).
    """
    _check_supported(challenge)
    algorithm = challenge.get("algorithm", "MD5")
    h = HASHES[_base(challenge)]
    realm, nonce = challenge.get("realm", ""), challenge["nonce"]
    qops = _qops(challenge)
    qop = "auth" if "auth" in qops else "auth-int" if qops else None
    cnonce = cnonce or secrets.token_hex(8)
    ha1 = h(f"{user}:{realm}:{password}".encode())
    if algorithm.upper().endswith("-SESS"):
        ha1 = h(f"{ha1}:{nonce}:{cnonce}".encode())
    a2 = f"{method}:{uri}" + (f":{h(body)}" if qop == "auth-int" else "")
    ha2 = h(a2.encode())
    ncs = f"{nc:08x}"
    if qop:
        response = h(f"{ha1}:{nonce}:{ncs}:{cnonce}:{qop}:{ha2}".encode())
    else:  # RFC 2069 compatibility: no cnonce or nc in the response
        response = h(f"{ha1}:{nonce}:{ha2}".encode())
    userhash = challenge.get("userhash", "").lower() == "true"
    name = h(f"{user}:{realm}".encode()) if userhash else user
    parts = [f"username={_quote(name)}", f"realm={_quote(realm)}", f"nonce={_quote(nonce)}", f"uri={_quote(uri)}",
             f'response="{response}"', f"algorithm={algorithm}"]
    if qop or algorithm.upper().endswith("-SESS"):
        parts.append(f"cnonce={_quote(cnonce)}")
    if qop:
        parts += [f"qop={qop}", f"nc={ncs}"]
    if "opaque" in challenge:
        parts.append(f"opaque={_quote(challenge['opaque'])}")
    if userhash:
        parts.append("userhash=true")
    return "Digest " + ", ".join(parts)


def _parse(value: str) -> dict[str, str]:
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise ValueError(f"unsupported authentication scheme {scheme!r}")
    out: dict[str, str] = {}
    for item in split_list(rest):
        k, eq, v = item.partition("=")
        if eq:
            v = v.strip()
            if len(v) >= 2 and v[0] == v[-1] == '"':
                v = re.sub(r"\\(.)", r"\1", v[1:-1])
            out[k.strip().lower()] = v
    if "nonce" not in out:
        raise ValueError("challenge without nonce")
    return out


def _check_supported(challenge: dict[str, str]) -> None:
    if _base(challenge) not in HASHES:
        raise ValueError(_algorithm_error([challenge.get("algorithm", "MD5")]))
    qops = _qops(challenge)
    if qops and not set(qops) & set(_QOPS):
        raise ValueError(f"unsupported qop: {challenge['qop']}")


def _algorithm_error(names: list[str]) -> str:
    text = f"unsupported digest algorithm: {', '.join(dict.fromkeys(names))}"
    if any(n.strip().upper().removesuffix("-SESS") in _KNOWN for n in names):
        text += " (not in this Python's hashlib)"  # SHA-512/256 needs an OpenSSL build
    return text


def _base(challenge: dict[str, str]) -> str:
    algorithm = challenge.get("algorithm", "MD5").strip().upper()
    return algorithm.removesuffix("-SESS")


def _qops(challenge: dict[str, str]) -> list[str]:
    return [q.strip().lower() for q in challenge.get("qop", "").split(",") if q.strip()]


def _split_challenges(value: str) -> list[str]:
    """`Digest a=1, b=2, Digest a=3` -> two challenges (RFC 7235 allows several in one header value)."""
    out: list[str] = []
    for item in split_list(value):
        if _NEW_CHALLENGE.match(item) or not out:
            out.append(item)
        else:
            out[-1] += ", " + item
    return out


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
