"""`visage token create --role ROLE [--subject NAME] [--ttl 8h]`: a token signed
by the local issuer (its key in the data dir; whoever can read it is an admin).
The token is the last line of the output, alone on it, so scripts can take it
with `| tail -1`."""
from __future__ import annotations

import datetime
import sys

from visage.auth.local import LocalIssuer, default_subject, parse_ttl
from visage.auth.roles import Role
from visage.auth.tokens import AuthConfig


def register(subparsers) -> None:
    token = subparsers.add_parser("token", help="make tokens with the local issuer")
    actions = token.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="print a new token (its last line)")
    create.add_argument("--role", required=True, choices=[r.label for r in Role])
    create.add_argument("--subject", default=None, help="who the token names (default: your user name)")
    create.add_argument("--ttl", default="8h", help="lifetime, e.g. 30m, 8h, 7d (default 8h)")
    create.set_defaults(run=create_token)


def create_token(args) -> int:
    config = AuthConfig.from_env()
    try:
        ttl = parse_ttl(args.ttl)
    except ValueError as error:
        print(f"visage token create: {error}", file=sys.stderr)
        return 2
    if not config.is_local:
        print("visage token create: tokens come from the external issuer configured by VISAGE_AUTH_JWKS_URL/"
              "_JWKS_FILE (e.g. `az account get-access-token`), not from this machine", file=sys.stderr)
        return 2
    issuer = LocalIssuer(config)
    if not issuer.exists():
        print(f"visage token create: no local signing key in {config.local_dir}: start the mesh once with "
              "`make run` (or set VISAGE_DATA_DIR / VISAGE_AUTH_DIR to where it is)", file=sys.stderr)
        return 2
    subject = args.subject or default_subject()
    expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=ttl)
    token = issuer.mint(Role.parse(args.role), subject, ttl)
    print(f"# {args.role} token for {subject}, valid until {expires:%Y-%m-%d %H:%M} UTC")
    print(token)
    return 0
