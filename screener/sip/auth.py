"""HTTP digest authentication for SIP (RFC 2617 / 3261 22): MD5, with and without qop=auth. Pure."""

from __future__ import annotations

import hashlib
import secrets

from screener.sip.message import split_list


def parse_challenge(value: str) -> dict[str, str]:
    """`Digest realm="x", nonce="y", qop="auth,auth-int"` -> {"realm": "x", ...} (keys lower-case)."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise ValueError(f"unsupported authentication scheme {scheme!r}")
    out: dict[str, str] = {}
    for item in split_list(rest):
        k, eq, v = item.partition("=")
        if eq:
            v = v.strip()
            if len(v) >= 2 and v[0] == v[-1] == '"':
                v = v[1:-1]
            out[k.strip().lower()] = v
    if "nonce" not in out:
        raise ValueError("challenge without nonce")
    return out


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def authorization(challenge: dict[str, str], method: str, uri: str, user: str, password: str,
                  nc: int = 1, cnonce: str | None = None) -> str:
    """The Authorization / Proxy-Authorization value answering one challenge."""
    algorithm = challenge.get("algorithm", "MD5")
    if algorithm.upper() not in ("MD5", "MD5-SESS"):
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    realm, nonce = challenge.get("realm", ""), challenge["nonce"]
    ha1 = _md5(f"{user}:{realm}:{password}")
    qops = [q.strip().lower() for q in challenge.get("qop", "").split(",") if q.strip()]
    cnonce = cnonce or secrets.token_hex(8)
    if algorithm.upper() == "MD5-SESS":
        ha1 = _md5(f"{ha1}:{nonce}:{cnonce}")
    ha2 = _md5(f"{method}:{uri}")
    parts = [f'username="{user}"', f'realm="{realm}"', f'nonce="{nonce}"', f'uri="{uri}"']
    if "auth" in qops:
        ncs = f"{nc:08x}"
        response = _md5(f"{ha1}:{nonce}:{ncs}:{cnonce}:auth:{ha2}")
        parts += [f'response="{response}"', f"algorithm={algorithm}", f'cnonce="{cnonce}"', "qop=auth",
                  f"nc={ncs}"]
    else:
        response = _md5(f"{ha1}:{nonce}:{ha2}")
        parts += [f'response="{response}"', f"algorithm={algorithm}"]
    if "opaque" in challenge:
        parts.append(f'opaque="{challenge["opaque"]}"')
    return "Digest " + ", ".join(parts)
