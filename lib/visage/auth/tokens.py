"""Auth configuration (VISAGE_AUTH_*) and token verification with PyJWT.

Local mode (the default): keys of the local issuer in VISAGE_AUTH_DIR
(default $VISAGE_DATA_DIR/auth). External mode: VISAGE_AUTH_JWKS_URL (an OIDC
issuer's keys, e.g. Microsoft Entra ID) or VISAGE_AUTH_JWKS_FILE (public keys
mounted from a Secret), with the issuer and audience it puts in its tokens."""
from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import jwt

from visage.auth.identity import Identity
from visage.auth.roles import Role

LOCAL_ISSUER = "visage-local"
DEFAULT_AUDIENCE = "visage"
# Asymmetric algorithms only: a JWKS never holds a shared secret, and "none" is never accepted.
ALGORITHMS = ["EdDSA", "ES256", "RS256", "PS256"]
CLOCK_SKEW_SECONDS = 30
CACHE_SIZE = 4096


class AuthError(Exception):
    """A token is missing, invalid, or does not grant what is asked: `status`
    is "unauthenticated" (401) or "permission_denied" (403); "unavailable" (503)
    when the issuer's keys cannot be fetched, so the token cannot be judged yet."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def unauthenticated(message: str) -> AuthError:
    return AuthError("unauthenticated", message)


def permission_denied(message: str) -> AuthError:
    return AuthError("permission_denied", message)


@dataclass(frozen=True)
class AuthConfig:
    issuer: str = LOCAL_ISSUER
    audience: str = DEFAULT_AUDIENCE
    jwks_url: str = ""   # external issuer's keys (https)
    jwks_file: str = ""  # or a file of public keys
    role_claim: str = "roles"   # a string or a list of role names (Entra ID app roles: "roles")
    subject_claim: str = "sub"  # e.g. "preferred_username" for Entra ID users; falls back to "sub"
    local_dir: Path = Path("data/auth")

    @property
    def is_local(self) -> bool:
        return not (self.jwks_url or self.jwks_file)

    @property
    def jwks_path(self) -> Path:
        """The public keys as a file: the configured one, else the local issuer's."""
        return Path(self.jwks_file) if self.jwks_file else self.local_dir / "jwks.json"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, data_dir: Path | None = None) -> "AuthConfig":
        env = os.environ if env is None else env
        data_dir = data_dir or Path(env.get("VISAGE_DATA_DIR", "data"))
        return cls(
            issuer=env.get("VISAGE_AUTH_ISSUER", LOCAL_ISSUER),
            audience=env.get("VISAGE_AUTH_AUDIENCE", DEFAULT_AUDIENCE),
            jwks_url=env.get("VISAGE_AUTH_JWKS_URL", ""),
            jwks_file=env.get("VISAGE_AUTH_JWKS_FILE", ""),
            role_claim=env.get("VISAGE_AUTH_ROLE_CLAIM", "roles"),
            subject_claim=env.get("VISAGE_AUTH_SUBJECT_CLAIM", "sub"),
            local_dir=Path(env.get("VISAGE_AUTH_DIR", str(data_dir / "auth"))),
        )


def bearer_token(metadata) -> str | None:
    """The token of an `authorization: Bearer ...` entry in gRPC metadata."""
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


def role_of(claims: dict, claim: str) -> Role | None:
    """The highest known role among the claim's values (a string or a list)."""
    values = claims.get(claim)
    if isinstance(values, str):
        values = values.replace(",", " ").split()
    roles = []
    for value in values if isinstance(values, list) else []:
        try:
            roles.append(Role.parse(str(value)))
        except ValueError:
            continue  # other applications' roles in the same claim
    return max(roles, default=None)


class TokenVerifier:
    """Verifies tokens against one issuer's keys. A verified token is cached
    until it expires, so a client's repeated calls cost a dictionary look-up."""

    def __init__(self, config: AuthConfig, jwks: dict | None = None) -> None:
        self.config = config
        self._keys: dict[str, jwt.PyJWK] = {}
        self._jwk_client = None
        if config.jwks_url and jwks is None:
            self._jwk_client = jwt.PyJWKClient(config.jwks_url, cache_keys=True, lifespan=3600)
        else:
            if jwks is None:
                path = config.jwks_path
                if not path.is_file():
                    raise FileNotFoundError(f"no token keys at {path}: start the mesh with `make run` (it creates "
                                            "the local issuer) or set VISAGE_AUTH_JWKS_URL / VISAGE_AUTH_JWKS_FILE")
                jwks = json.loads(path.read_text())
            self._keys = {key.key_id or "": key for key in jwt.PyJWKSet.from_dict(jwks).keys}
        self._cache: OrderedDict[str, Identity] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> "TokenVerifier":
        config = AuthConfig.from_env()
        if config.is_local:
            from visage.auth.local import LocalIssuer
            LocalIssuer(config).ensure()  # a service started before `make run` ever was
        return cls(config)

    def verify(self, token: str | None) -> Identity:
        if not token:
            raise unauthenticated("this call needs a token: send `authorization: Bearer <token>` "
                                  "(`visage token create --role ROLE` makes one)")
        now = time.time()
        with self._lock:
            cached = self._cache.get(token)
        if cached is not None and cached.expires_at > now - CLOCK_SKEW_SECONDS:
            return cached
        identity = self._verify_uncached(token)
        with self._lock:
            self._cache[token] = identity
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return identity

    def _signing_key(self, token: str) -> jwt.PyJWK:
        if self._jwk_client is not None:
            return self._jwk_client.get_signing_key_from_jwt(token)
        kid = jwt.get_unverified_header(token).get("kid", "")
        key = self._keys.get(kid) or (next(iter(self._keys.values())) if len(self._keys) == 1 and not kid else None)
        if key is None:
            raise unauthenticated("the token was not signed by a key this service trusts")
        return key

    def _verify_uncached(self, token: str) -> Identity:
        try:
            key = self._signing_key(token)
            claims = jwt.decode(token, key, algorithms=ALGORITHMS, audience=self.config.audience,
                                issuer=self.config.issuer, leeway=CLOCK_SKEW_SECONDS,
                                options={"require": ["exp", "iss", "aud", "sub"]})
        except AuthError:
            raise
        except jwt.PyJWKClientConnectionError as error:
            # The issuer is down, not the caller wrong: a retryable status, and nothing cached.
            raise AuthError("unavailable", f"the token issuer's keys cannot be fetched now: {error}") from None
        except jwt.ExpiredSignatureError:
            raise unauthenticated("the token has expired: sign in again") from None
        except (jwt.PyJWTError, ValueError) as error:
            raise unauthenticated(f"invalid token: {error}") from None
        role = role_of(claims, self.config.role_claim)
        if role is None:
            raise permission_denied(f"the token grants no Visage role (claim {self.config.role_claim!r})")
        subject = claims.get(self.config.subject_claim) or claims["sub"]
        return Identity(subject=str(subject), role=role, expires_at=float(claims["exp"]))
