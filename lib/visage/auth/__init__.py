"""Identity and roles: every RPC needs a JWT whose role is at least the RPC's
least role (roles.RPC_ROLES). Tokens come from the local issuer (a signing key
in the data dir, `make run`) or an external OIDC issuer (Microsoft Entra ID)
configured by VISAGE_AUTH_* variables; services check them with one gRPC
server interceptor, the gateway with Envoy's jwt_authn + rbac filters.

Submodules: roles (the table), identity (who is calling, for servicers and
the store), tokens (configuration and verification), local (the local issuer),
interceptor (the server side), client (channels that send a token)."""
