"""Auth configuration (VISAGE_AUTH_*) and token verification with PyJWT.

Local mode (the default): keys of the local issuer in VISAGE_AUTH_DIR
(default $VISAGE_DATA_DIR/auth). External mode: VISAGE_AUTH_JWKS_URL (an OIDC
issuer's keys, e.g. Microsoft Entra ID) or VISAGE_AUTH_JWKS_FILE (public keys
mounted from a Secret), with the issuer and audience it puts in its tokens."""
from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import jwt

from visage.auth.identity import Identity
from visage.auth.roles import Role, claim_role
from visage.config import AuthSettings, Config, env_name

LOCAL_ISSUER = AuthSettings.issuer  # "visage-local": VISAGE_AUTH_ISSUER's default
DEFAULT_AUDIENCE = AuthSettings.audience  # "visage"
# Asymmetric algorithms only: a JWKS never holds a shared secret, and "none" is never accepted.
ALGORITHMS = ["EdDSA", "ES256", "RS256", "PS256"]
CLOCK_SKEW_SECONDS = 30
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
JWKS_URL_SETTING = env_name(AuthSettings, "jwks_url")
CACHE_SIZE = 4096


class AuthError(Exception):
    """The caller is refused: a token is missing, invalid, or does not grant what is
    asked. Each subclass is a kind visage.errors answers with its own status."""
    status = ""  # the kind's name, for logs and tests

    @property
    def message(self) -> str:
        return str(self)


class Unauthenticated(AuthError):
    """No token, or one this service cannot accept (UNAUTHENTICATED, REST 401)."""
    status = "unauthenticated"


class PermissionDenied(AuthError):
    """A valid token whose role does not grant the call (PERMISSION_DENIED, REST 403)."""
    status = "permission_denied"


class IssuerUnavailable(AuthError):
    """The issuer's keys cannot be fetched, so the token cannot be judged yet (UNAVAILABLE, REST 503)."""
    status = "unavailable"


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
    def from_env(cls, env: Mapping[str, str] | None = None, data_dir: Path | None = None) -> "AuthConfig":
        """From VISAGE_AUTH_* (visage.config.AuthSettings); the local issuer's keys in
        VISAGE_AUTH_DIR, else `data_dir` (default VISAGE_DATA_DIR) / auth."""
        return cls.from_settings(AuthSettings.from_env(env), data_dir or Config.read("data_dir", env))

    @classmethod
    def from_settings(cls, settings: AuthSettings, data_dir: Path) -> "AuthConfig":
        return cls(issuer=settings.issuer, audience=settings.audience, jwks_url=settings.jwks_url,
                   jwks_file=settings.jwks_file, role_claim=settings.role_claim,
                   subject_claim=settings.subject_claim, local_dir=settings.dir or data_dir / "auth")


def check_key_url(url: str, setting: str) -> None:
    """An issuer's keys or sign-in page are fetched over https; plain http only on this machine
    (a provider started beside the mesh), where nobody on the network can swap the keys."""
    parts = urlsplit(url)
    if (parts.scheme == "https" and parts.hostname) or (parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS):
        return
    raise ValueError(f"{setting}={url!r} must be an https URL (plain http only to 127.0.0.1, localhost or [::1])")


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
    """The highest role the claim names exactly (visage.auth.roles.claim_role: the one
    reading, which Envoy's rbac matchers are built from too)."""
    return claim_role(claims.get(claim))


class TokenVerifier:
    """Verifies tokens against one issuer's keys. A verified token is cached
    until it expires, so a client's repeated calls cost a dictionary look-up."""

    def __init__(self, config: AuthConfig, jwks: dict | None = None) -> None:
        self.config = config
        self._keys: dict[str, jwt.PyJWK] = {}
        self._jwk_client = None
        if config.jwks_url and jwks is None:
            check_key_url(config.jwks_url, JWKS_URL_SETTING)
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
            raise Unauthenticated("this call needs a token: send `authorization: Bearer <token>` "
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
            raise Unauthenticated("the token was not signed by a key this service trusts")
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
            raise IssuerUnavailable(f"the token issuer's keys cannot be fetched now: {error}") from None
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired: sign in again") from None
        except (jwt.PyJWTError, ValueError) as error:
            raise Unauthenticated(f"invalid token: {error}") from None
        role = role_of(claims, self.config.role_claim)
        if role is None:
            raise PermissionDenied(f"the token grants no Visage role (claim {self.config.role_claim!r})")
        subject = claims.get(self.config.subject_claim) or claims["sub"]
        return Identity(subject=str(subject), role=role, expires_at=float(claims["exp"]))
