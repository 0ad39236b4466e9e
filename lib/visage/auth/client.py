"""Channels that send a token: the CLI's and other Python callers'. The token is
VISAGE_TOKEN when set, else a short-lived admin token signed with the local
issuer's key when this user can read it (the data dir of `make run`)."""
from __future__ import annotations

import os

import grpc

from visage import tracing
from visage.auth.roles import Role
from visage.auth.tokens import AuthConfig
from visage.config import AuthSettings, env_name
from visage.retry_after import HonourRetryAfter

TOKEN_ENV = env_name(AuthSettings, "token")  # VISAGE_TOKEN
LOCAL_CLI_TOKEN_SECONDS = 3600


def find_token(config: AuthConfig | None = None) -> str | None:
    token = AuthSettings.read("token").strip()
    if token:
        return token
    config = config or AuthConfig.from_env()
    if config.is_local:
        from visage.auth.local import LocalIssuer
        issuer = LocalIssuer(config)
        if issuer.exists() and os.access(issuer.key_path, os.R_OK):
            return issuer.mint(Role.ADMIN, ttl_seconds=LOCAL_CLI_TOKEN_SECONDS)
    return None


class BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                  grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call that has none."""

    def __init__(self, token: str) -> None:
        self.header = ("authorization", f"Bearer {token}")

    def _details(self, details):
        metadata = list(details.metadata or ())
        if not any(key == "authorization" for key, _ in metadata):
            metadata.append(self.header)
        return details._replace(metadata=metadata) if hasattr(details, "_replace") else _Details(details, metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


class _Details(grpc.ClientCallDetails):
    def __init__(self, details, metadata) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)
        self.metadata = metadata


def with_token(channel: grpc.Channel, token: str | None) -> grpc.Channel:
    return grpc.intercept_channel(channel, BearerToken(token)) if token else channel


def channel(target: str, options=None, token: str | None = None) -> grpc.Channel:
    """An insecure channel (loopback / in-cluster) that sends the caller's token (and, with
    tracing on, a client span per call: visage.tracing); a unary call the gateway's rate
    limit refuses is made again after the `retry-after` it gives (visage.retry_after)."""
    plain = tracing.traced_channel(grpc.insecure_channel(target, options=options))
    return with_token(grpc.intercept_channel(plain, HonourRetryAfter()), token or find_token())
