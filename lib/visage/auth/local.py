"""The local issuer for one machine: an Ed25519 signing key in the data dir
(made on first start, readable only by its owner) and the public JWKS that the
services and Envoy verify against. Whoever can read the key is an admin: the
CLI uses it to make its own short-lived tokens."""
from __future__ import annotations

import base64
import getpass
import hashlib
import json
import os
import secrets
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from visage.auth.roles import Role
from visage.datadir import private_dir, private_file
from visage.auth.tokens import AuthConfig

KEY_FILE = "signing-key.pem"
JWKS_FILE = "jwks.json"
ALGORITHM = "EdDSA"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def parse_ttl(text: str) -> int:
    """'90s', '30m', '8h', '7d' or plain seconds -> seconds."""
    text = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        seconds = int(float(text[:-1]) * units[text[-1]]) if text and text[-1] in units else int(text)
    except ValueError:
        raise ValueError(f"bad duration {text!r}: use e.g. 30m, 8h or 7d") from None
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {text!r}")
    return seconds


class LocalIssuer:
    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self.dir = config.local_dir
        self.key_path = self.dir / KEY_FILE
        self._key: Ed25519PrivateKey | None = None

    @classmethod
    def from_key(cls, pem: bytes, config: AuthConfig | None = None) -> "LocalIssuer":
        """An issuer whose key is held elsewhere (the AKS deploy keeps it in Key Vault)."""
        issuer = cls(config or AuthConfig())
        issuer._key = serialization.load_pem_private_key(pem, password=None)
        return issuer

    def exists(self) -> bool:
        return self.key_path.is_file()

    def ensure(self) -> "LocalIssuer":
        """Creates the key once (several processes may race: the first link wins)
        and (re)writes the JWKS that matches it. Returns self."""
        private_dir(self.dir)
        if not self.key_path.exists():
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            tmp = self.dir / f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(pem)
            try:
                os.link(tmp, self.key_path)  # never replaces a key another process made
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        jwks = json.dumps(self.jwks(), indent=1)
        jwks_path = self.dir / JWKS_FILE
        if not jwks_path.is_file() or jwks_path.read_text() != jwks:
            tmp = private_file(self.dir / f".{JWKS_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
            tmp.write_text(jwks)
            tmp.replace(jwks_path)
        return self

    @property
    def key(self) -> Ed25519PrivateKey:
        if self._key is None:
            self._key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        return self._key

    def _public_bytes(self) -> bytes:
        return self.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def key_id(self) -> str:
        return _b64url(hashlib.sha256(self._public_bytes()).digest()[:12])

    def jwks(self) -> dict:
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": ALGORITHM, "use": "sig", "kid": self.key_id,
                          "x": _b64url(self._public_bytes())}]}

    def mint(self, role: Role, subject: str | None = None, ttl_seconds: int = 8 * 3600) -> str:
        now = int(time.time())
        claims = {"iss": self.config.issuer, "aud": self.config.audience, "sub": subject or default_subject(),
                  self.config.role_claim: [role.label], "iat": now, "nbf": now, "exp": now + ttl_seconds,
                  "jti": secrets.token_hex(8)}
        return jwt.encode(claims, self.key, algorithm=ALGORITHM, headers={"kid": self.key_id})


def default_subject() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "local-admin"
