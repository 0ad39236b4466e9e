"""Who is calling: the interceptor sets the verified identity for the length of
one RPC; servicers (labels) and the store (every event a request appends)
read it here. Background work (training, re-classification) runs without one."""
from __future__ import annotations

import contextvars
from dataclasses import dataclass

from visage import tracing
from visage.auth.roles import Role

ACTOR_ATTRIBUTE = "actor"  # the event attribute that names who caused it


@dataclass(frozen=True)
class Identity:
    subject: str
    role: Role
    expires_at: float  # unix seconds


_current: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("visage_identity", default=None)


def current() -> Identity | None:
    return _current.get()


def current_subject(default: str = "anonymous") -> str:
    identity = _current.get()
    return identity.subject if identity else default


def set_current(identity: Identity | None) -> contextvars.Token:
    return _current.set(identity)


def reset_current(token: contextvars.Token) -> None:
    _current.reset(token)


class RoleRequired(Exception):
    """A request asks for more than its RPC's least role grants (e.g. an erasure
    option): the servicer answers PERMISSION_DENIED."""


def require_role(least: Role, what: str) -> None:
    """For the few request options that need more than their RPC's least role.
    No identity (a servicer mounted without build_server's interceptor) is refused."""
    caller = _current.get()
    if caller is None or caller.role < least:
        who = f"{caller.subject} is {caller.role.label}" if caller else "the caller has no token"
        raise RoleRequired(f"{what} needs the {least.label} role; {who}")


def with_actor(attributes: dict[str, str] | None) -> dict[str, str]:
    """An event's attributes plus who caused it, when a request did, and (tracing on) the
    `traceparent` of the span that appended it, which the work the event starts links to."""
    attributes = {**(attributes or {}), **tracing.event_attributes()}
    identity = _current.get()
    if identity is None:
        return attributes
    return {**attributes, ACTOR_ATTRIBUTE: identity.subject}
