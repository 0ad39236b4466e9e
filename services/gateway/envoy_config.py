"""Envoy bootstrap for the Visage gateway, built from typed envoy-data-plane
classes (a typo is a pydantic error here, not a silent Envoy default).

One listener: REST/JSON is transcoded to gRPC by one grpc_json_transcoder for
all four services; routes then match the *post-transcoding* gRPC path
(`/visage.v1.QueryService/...`) and send it to that service's HTTP/2 cluster.
Native gRPC (grpcurl, other systems) takes the same routes. The web UI and
/openapi.json are direct responses read from files when Envoy starts.

Identity (visage.auth): jwt_authn verifies the bearer token of every /v1 and
gRPC request against the issuer's JWKS; rbac, after the transcoder, allows each
gRPC path to the roles of visage.auth.roles.RPC_ROLES. Only the configured host
names are served (anything else gets 421: DNS rebinding); with a certificate the
listener speaks TLS and sends HSTS."""
from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from google.protobuf import descriptor_pb2

from envoy_data_plane.envoy.config.accesslog.v3 import AccessLog
from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap, BootstrapStaticResources
from envoy_data_plane.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType, ClusterDnsLookupFamily
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    DataSource,
    HeaderValue,
    HeaderValueOption,
    HeaderValueOptionHeaderAppendAction,
    Http2ProtocolOptions,
    RuntimeFractionalPercent,
    HttpUri,
    SocketAddress,
    SubstitutionFormatString,
    TransportSocket,
)
from envoy_data_plane.envoy.config.endpoint.v3 import ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints
from envoy_data_plane.envoy.config.overload.v3 import OverloadManager, ResourceMonitor
from envoy_data_plane.envoy.extensions.resource_monitors.downstream_connections.v3 import DownstreamConnectionsConfig
from envoy_data_plane.envoy.config.listener.v3 import Filter, FilterChain, Listener
from envoy_data_plane.envoy.config.route.v3 import (
    DirectResponseAction,
    HeaderMatcher,
    RedirectAction,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)
from envoy_data_plane.envoy.extensions.access_loggers.stream.v3 import StdoutAccessLog
from envoy_data_plane.envoy.extensions.filters.http.buffer.v3 import Buffer, BufferPerRoute
from envoy_data_plane.envoy.extensions.filters.http.cors.v3 import Cors, CorsPolicy
from envoy_data_plane.envoy.extensions.filters.http.csrf.v3 import CsrfPolicy
from envoy_data_plane.envoy.extensions.filters.http.grpc_json_transcoder.v3 import (
    GrpcJsonTranscoder,
    GrpcJsonTranscoderPrintOptions,
)
from envoy_data_plane.envoy.config.rbac.v3 import (
    MetadataSource,
    Permission,
    PermissionSet,
    Policy,
    Principal,
    PrincipalSet,
    SourcedMetadata,
)
from envoy_data_plane.envoy.config.rbac.v3 import Rbac as RbacRules
from envoy_data_plane.envoy.config.rbac.v3 import RbacAction
from envoy_data_plane.envoy.extensions.filters.http.jwt_authn.v3 import (
    JwksAsyncFetch,
    JwtAuthentication,
    JwtCacheConfig,
    JwtProvider,
    JwtRequirement,
    RemoteJwks,
    RequirementRule,
)
from envoy_data_plane.envoy.extensions.filters.http.rbac.v3 import Rbac
from envoy_data_plane.envoy.extensions.filters.http.router.v3 import Router
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpFilter,
    LocalReplyConfig,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions,
    HttpProtocolOptionsExplicitHttpConfig,
)
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
    CertificateValidationContext,
    CommonTlsContext,
    DownstreamTlsContext,
    TlsCertificate,
    UpstreamTlsContext,
)
from envoy_data_plane.envoy.type.matcher.v3 import (
    ListMatcher,
    MetadataMatcher,
    MetadataMatcherPathSegment,
    PathMatcher,
    RegexMatcher,
    StringMatcher,
    ValueMatcher,
)
from envoy_data_plane.envoy.type.v3 import FractionalPercent, FractionalPercentDenominatorType
from envoy_data_plane.google.protobuf import Any, Struct

from visage.auth.roles import ROLE_NAME_SEPARATORS, RPC_ROLES, Role
from visage.auth.tokens import JWKS_URL_SETTING, AuthConfig, check_key_url
from visage.config import AuthSettings, Config, GatewayConfig, UiSignInSettings, env_name, environment
from visage import guard
from visage.datadir import private_dir, private_file
from visage.server import SERVICE_NAMES
from visage_gateway import limits
from visage_gateway import tracing as gateway_tracing

REPO = Path(__file__).resolve().parents[2]
UI_DIR = Path(__file__).resolve().parent / "ui"

# A 20 MB image is ~26.7 MB as base64 inside JSON; 30 MB leaves room for the rest.
MAX_REQUEST_BODY_BYTES = 30 * 1024 * 1024
# GetImageContent returns up to the 20 MB original; JSON responses are far smaller.
MAX_RESPONSE_BODY_BYTES = 32 * 1024 * 1024
UNARY_TIMEOUT = datetime.timedelta(seconds=60)  # ingest/classify of a big image on 2 cores
NO_TIMEOUT = datetime.timedelta(0)
MAX_STATIC_FILE_BYTES = 2 * 1024 * 1024
MAX_DOWNSTREAM_CONNECTIONS = 4096

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
}
# The UI loads only its own files (its one library is vendored: ui/vendor) and calls only its own
# origin, and the sign-in provider's (ui_security_headers); crops are same-origin too.
UI_CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data: blob:; script-src 'self'; "
                              "style-src 'self'; connect-src {connect}; frame-ancestors 'none'; base-uri 'none'")
UI_SECURITY_HEADERS = {
    "content-security-policy": UI_CONTENT_SECURITY_POLICY.format(connect="'self'"),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}
REFLECTION_PREFIX = "/grpc.reflection."
HEALTH_PREFIX = "/grpc.health.v1.Health/"
# gRPC reflection has one path for every service: this header (grpcurl
# -reflect-header / -H) picks which service answers; query by default. gRPC
# health is not routed (only /healthz).
SERVICE_HEADER = "x-visage-service"
CALLER_HEADER = guard.CALLER_HEADER  # set by Envoy (a client's own is overwritten)
JWT_PROVIDER = "visage"
JWT_PAYLOAD_METADATA = "jwt_payload"  # where jwt_authn leaves the verified claims for rbac
JWKS_CLUSTER = "visage_jwks"
JWT_CACHE_SIZE = 1000
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
LOCAL_HOSTNAMES = ("127.0.0.1", "localhost", "[::1]")
HSTS = "max-age=31536000; includeSubDomains"


def cluster_name(service: str) -> str:
    return f"visage_{service}"


@dataclass(frozen=True)
class Upstream:
    """One gRPC service behind the gateway."""
    name: str           # "query", "ingest", ...
    grpc_service: str   # "visage.v1.QueryService"
    host: str
    port: int

    @property
    def cluster(self) -> str:
        return cluster_name(self.name)


@dataclass(frozen=True)
class GatewaySettings:
    bind_host: str
    port: int
    upstreams: tuple[Upstream, ...]
    descriptor_set: Path
    openapi_json: Path
    ui_dir: Path = UI_DIR
    cors_origins: tuple[str, ...] = ()
    max_request_body_bytes: int = MAX_REQUEST_BODY_BYTES
    access_log: bool = True
    trusted_hops: int = 0  # X-Forwarded-For entries of proxies in front (VISAGE_GATEWAY_TRUSTED_HOPS)
    image_calls: limits.CallerRate = field(default_factory=limits.CallerRate)
    auth: AuthConfig = AuthConfig()
    hostnames: tuple[str, ...] = LOCAL_HOSTNAMES
    tls_cert: Path | None = None
    tls_key: Path | None = None
    redirect_port: int | None = None  # plain http → https (VISAGE_GATEWAY_REDIRECT_PORT)
    sign_in: "UiSignIn | None" = None  # sign-in with the organisation's OpenID Connect provider
    collector: gateway_tracing.Collector | None = None  # OTLP traces (OTEL_EXPORTER_OTLP_ENDPOINT)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @classmethod
    def from_config(cls, config: Config, env: Mapping[str, str] | None = None) -> "GatewaySettings":
        """Ports come from Config; VISAGE_<NAME>_HOST lets a deployment put a
        service on another host (Kubernetes service names), VISAGE_CORS_ORIGINS
        is a comma-separated list of extra origins allowed to call /v1, and
        VISAGE_GATEWAY_ACCESS_LOG=0 turns the per-request JSON log line off.
        VISAGE_GATEWAY_HOSTNAMES lists the host names clients use (default:
        loopback names); VISAGE_GATEWAY_TLS_CERT / _KEY (PEM files) turn TLS on.
        Tokens are checked against the issuer VISAGE_AUTH_* configures. The
        variables are read from `env` (default: this process's environment)."""
        gateway = GatewayConfig.from_env(env)
        hostnames = tuple(h.lower() for h in gateway.hostnames)
        cert, key = gateway.tls_cert, gateway.tls_key
        if bool(cert) != bool(key):
            raise ValueError("set both VISAGE_GATEWAY_TLS_CERT and VISAGE_GATEWAY_TLS_KEY, or neither")
        upstreams = tuple(
            Upstream(name, grpc_service, getattr(gateway, f"{name}_host") or config.host,
                     getattr(config.ports, name))
            for name, grpc_service in SERVICE_NAMES.items()
        )
        origins = tuple(o.rstrip("/") for o in gateway.cors_origins)
        # Unlike the rest, read from the process environment too: a caller's
        # partial `env` (tests) still gets the issuer everything else uses.
        auth = AuthConfig.from_env(environment(env), config.data_dir)
        return cls(
            bind_host=gateway.host or config.host,
            port=config.ports.gateway,
            upstreams=upstreams,
            descriptor_set=gateway.descriptor_set or REPO / "build/visage.pb",
            openapi_json=gateway.openapi_json or REPO / "build/openapi.json",
            cors_origins=origins,
            access_log=gateway.access_log,
            trusted_hops=gateway.trusted_hops,
            image_calls=limits.CallerRate.from_config(gateway),
            auth=auth,
            hostnames=hostnames or LOCAL_HOSTNAMES,
            tls_cert=Path(cert) if cert else None,
            tls_key=Path(key) if key else None,
            redirect_port=gateway.redirect_port if cert else None,
            sign_in=UiSignIn.from_settings(UiSignInSettings.from_env(env), auth),
            collector=gateway_tracing.Collector.from_env(environment() if env is None else env),  # OTEL_*
        )


@dataclass(frozen=True)
class UiSignIn:
    """The UI's OpenID Connect sign-in (authorization code + PKCE, in the browser with the
    vendored oidc-client-ts): the provider the page sends people to, and which of its tokens
    the page sends on (the access token: VISAGE_AUTH_* must accept it)."""
    authority: str
    client_id: str
    scopes: str
    provider_name: str

    @property
    def origin(self) -> str:
        url = urlsplit(self.authority)
        return f"{url.scheme}://{url.netloc}"

    @classmethod
    def from_settings(cls, settings: UiSignInSettings, auth: AuthConfig) -> "UiSignIn | None":
        if not settings.client_id:
            return None
        authority = (settings.authority or auth.issuer).rstrip("/")
        check_key_url(authority, f"{env_name(UiSignInSettings, 'authority')} (default: "
                                 f"{env_name(AuthSettings, 'issuer')})")
        return cls(authority, settings.client_id, settings.scopes, settings.provider_name)


def streaming_methods(descriptor_set: Path, grpc_services: set[str]) -> list[str]:
    """gRPC paths of every client- or server-streaming method: these routes get
    no timeout (a watch may stay open for hours), only an idle timeout."""
    return sorted(streaming_method_kinds(descriptor_set, grpc_services))


def _any(message) -> Any:
    return Any.pack(message)


def _headers(values: dict[str, str]) -> list[HeaderValueOption]:
    return [HeaderValueOption(header=HeaderValue(key=k, value=v),
                              append_action=HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD)
            for k, v in values.items()]


def _error(status: int, message: str) -> DirectResponseAction:
    """A local error; the local-reply mapper turns it into JSON with a `message`."""
    return DirectResponseAction(status=status, body=DataSource(inline_string=message))


# Native gRPC (grpcurl, other services) streams through unbuffered (the
# services enforce their own message limits) and skips the CSRF check: a gRPC
# server only accepts content-type application/grpc, which a cross-site page
# cannot send without a CORS preflight. Only REST requests get both.
NATIVE_GRPC = {
    "envoy.filters.http.buffer": Any.pack(BufferPerRoute(disabled=True)),
    "envoy.filters.http.csrf": Any.pack(CsrfPolicy(filter_enabled=RuntimeFractionalPercent(
        default_value=FractionalPercent(numerator=0, denominator=FractionalPercentDenominatorType.HUNDRED)))),
}


def streaming_method_kinds(descriptor_set: Path, grpc_services: set[str]) -> dict[str, bool]:
    """gRPC path of every streaming method -> whether the client streams."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    kinds = {}
    for file in files.file:
        for service in file.service:
            full_name = f"{file.package}.{service.name}" if file.package else service.name
            if full_name in grpc_services:
                kinds.update({f"/{full_name}/{m.name}": m.client_streaming
                              for m in service.method if m.client_streaming or m.server_streaming})
    return kinds


def _grpc_routes(settings: GatewaySettings) -> list[Route]:
    by_service = {u.grpc_service: u for u in settings.upstreams}
    costly = set(limits.costly_paths(set(by_service)))
    # Streams: a cluster of their own, idle timeouts by kind, image streams rate-limited per caller.
    routes = [
        Route(name=path, match=RouteMatch(path=path),
              route=RouteAction(cluster=limits.stream_cluster(by_service[path.split("/")[1]].cluster),
                                timeout=NO_TIMEOUT, idle_timeout=limits.stream_idle_timeout(client_streaming)),
              typed_per_filter_config=_route_filters(path in costly, settings))
        for path, client_streaming in sorted(streaming_method_kinds(settings.descriptor_set, set(by_service)).items())
    ]
    routes += [
        Route(name=path, match=RouteMatch(path=path),
              route=RouteAction(cluster=by_service[path.split("/")[1]].cluster, timeout=UNARY_TIMEOUT),
              typed_per_filter_config=_route_filters(True, settings))
        for path in sorted(costly) if path not in {r.name for r in routes}
    ]
    routes += [
        Route(name=u.grpc_service, match=RouteMatch(prefix=f"/{u.grpc_service}/"),
              route=RouteAction(cluster=u.cluster, timeout=UNARY_TIMEOUT), typed_per_filter_config=NATIVE_GRPC)
        for u in settings.upstreams
    ]
    default = by_service[SERVICE_NAMES["query"]]
    # gRPC health is open to anyone and its Watch is a stream that never ends: through the
    # gateway health is only /healthz, answered by Envoy itself (issue 25).
    routes.append(Route(name=HEALTH_PREFIX, match=RouteMatch(prefix=HEALTH_PREFIX), direct_response=_error(
        404, "gRPC health is not served through the gateway; use GET /healthz"), typed_per_filter_config=NATIVE_GRPC))
    for prefix in (REFLECTION_PREFIX,):
        # Reflection is a bidi stream: no timeout (the services give it a small budget of its own).
        routes += [
            Route(name=f"{prefix}{u.name}",
                  match=RouteMatch(prefix=prefix, headers=[HeaderMatcher(
                      name=SERVICE_HEADER, string_match=StringMatcher(exact=u.name))]),
                  route=RouteAction(cluster=u.cluster, timeout=NO_TIMEOUT), typed_per_filter_config=NATIVE_GRPC)
            for u in settings.upstreams
        ]
        routes.append(Route(name=f"{prefix}default", match=RouteMatch(prefix=prefix),
                            route=RouteAction(cluster=default.cluster, timeout=NO_TIMEOUT),
                            typed_per_filter_config=NATIVE_GRPC))
    return routes


def _route_filters(costly: bool, settings: GatewaySettings) -> dict[str, Any]:
    """Per-route filter config of a gRPC route: a costly one is rate-limited per caller."""
    return {**NATIVE_GRPC, **(limits.caller_rate_limit(settings.image_calls) if costly else {})}


def _static_routes(settings: GatewaySettings) -> list[Route]:
    """`/` and every UI file, plus /openapi.json; a missing OpenAPI document is
    a 503 that says how to make it, so the UI still works."""
    routes = []
    for path in sorted(settings.ui_dir.rglob("*")):  # ui/vendor/ too
        if path.suffix not in CONTENT_TYPES or not path.is_file():
            continue
        headers = {"content-type": CONTENT_TYPES[path.suffix], **ui_security_headers(settings)}
        url_path = f"/{path.relative_to(settings.ui_dir).as_posix()}"
        for url in (["/", "/index.html"] if url_path == "/index.html" else [url_path]):
            routes.append(Route(name=url, match=RouteMatch(path=url),
                                direct_response=DirectResponseAction(status=200, body=DataSource(filename=str(path))),
                                response_headers_to_add=_headers(headers)))
    if settings.openapi_json.is_file():
        openapi = DirectResponseAction(status=200, body=DataSource(filename=str(settings.openapi_json.resolve())))
    else:
        openapi = _error(503, f"the OpenAPI document {settings.openapi_json.name} was not generated: run `make openapi`")
    routes.append(Route(name="/openapi.json", match=RouteMatch(path="/openapi.json"), direct_response=openapi,
                        response_headers_to_add=_headers({"content-type": "application/json",
                                                          "cache-control": "no-cache"})))
    routes.append(Route(name="/healthz", match=RouteMatch(path="/healthz"),
                        direct_response=DirectResponseAction(status=200, body=DataSource(inline_string="ok\n"))))
    routes.append(Route(name="/ui-config.json", match=RouteMatch(path="/ui-config.json"),
                        direct_response=DirectResponseAction(status=200, body=DataSource(
                            inline_string=json.dumps(ui_config(settings)))),
                        response_headers_to_add=_headers({"content-type": "application/json",
                                                          "cache-control": "no-cache"})))
    return routes


def ui_security_headers(settings: GatewaySettings) -> dict[str, str]:
    """UI_SECURITY_HEADERS; with OpenID Connect sign-in the page may also call the provider
    (discovery, token and refresh requests: the provider answers them with CORS)."""
    if settings.sign_in is None:
        return UI_SECURITY_HEADERS
    connect = f"'self' {settings.sign_in.origin}"
    return {**UI_SECURITY_HEADERS, "content-security-policy": UI_CONTENT_SECURITY_POLICY.format(connect=connect)}


def ui_config(settings: GatewaySettings) -> dict:
    """What the UI needs to read a token as the services do (which claims carry the role and the
    name), and how fast it may send image calls (uploads pace themselves under the limit; 0: none)."""
    config = {"roleClaim": settings.auth.role_claim, "subjectClaim": settings.auth.subject_claim,
              "imageCallsPerSecond": settings.image_calls.per_second}
    if settings.sign_in is not None:  # the "Sign in with …" button (oidc-client-ts's settings)
        sign_in = settings.sign_in
        config["signIn"] = {"authority": sign_in.authority, "clientId": sign_in.client_id, "scope": sign_in.scopes,
                            "providerName": sign_in.provider_name}
    return config


def _fallback_routes(settings: GatewaySettings) -> list[Route]:
    """Reached by REST paths the transcoder did not map to an RPC, and - for
    the filters before the transcoder (CORS, CSRF) - by every REST request."""
    unknown = _error(404, "no REST method matches this path and HTTP method; see /openapi.json")
    # CSRF concerns browsers, and browsers always send Origin on cross-site
    # writes: a request without Origin (curl, scripts, other systems) skips the check.
    without_origin = HeaderMatcher(name="origin", present_match=True, invert_match=True)
    csrf_off = CsrfPolicy(filter_enabled=_enabled(percent=0))
    # The CORS filter only acts on routes that forward somewhere: preflights from an
    # allowed origin get one (the filter answers them itself, so nothing reaches the
    # query service); any other preflight is refused here, without a token or a service.
    preflight = HeaderMatcher(name=":method", string_match=StringMatcher(exact="OPTIONS"))
    allowed = [Route(name=f"cors-preflight {origin}", match=RouteMatch(prefix="/v1/", headers=[
                   preflight, HeaderMatcher(name="origin", string_match=StringMatcher(exact=origin))]),
                     route=RouteAction(cluster=cluster_name("query"), timeout=UNARY_TIMEOUT))
               for origin in settings.cors_origins]
    return [
        *allowed,
        Route(name="cors-preflight-refused", match=RouteMatch(prefix="/v1/", headers=[preflight]),
              direct_response=_error(403, "cross-origin requests from this origin are not allowed "
                                          "(VISAGE_CORS_ORIGINS lists the origins that are)")),
        Route(name="unknown-rest-no-origin", match=RouteMatch(prefix="/v1/", headers=[without_origin]),
              direct_response=unknown, typed_per_filter_config={"envoy.filters.http.csrf": _any(csrf_off)}),
        Route(name="unknown-rest", match=RouteMatch(prefix="/v1/"), direct_response=unknown),
        Route(name="not-found", match=RouteMatch(prefix="/"), direct_response=_error(404, "not found")),
    ]


def _local_reply_config() -> LocalReplyConfig:
    """Every error Envoy itself answers (malformed JSON, no backend, CSRF,
    unknown path, body too large, rate limited) as the JSON the transcoder
    gives service errors: {"code": <gRPC code>, "message", "details"}."""
    return LocalReplyConfig(mappers=limits.error_mappers())


def _cors_policy(settings: GatewaySettings) -> dict[str, Any]:
    """Same-origin only unless VISAGE_CORS_ORIGINS names origins: then those
    may call the API from a browser (preflights are answered by Envoy)."""
    if not settings.cors_origins:
        return {}
    policy = CorsPolicy(
        allow_origin_string_match=[StringMatcher(exact=o) for o in settings.cors_origins],
        allow_methods="GET, POST, PATCH, DELETE, OPTIONS",
        allow_headers="authorization, content-type, x-grpc-web, grpc-timeout",
        expose_headers="grpc-status, grpc-message",
        max_age="600",
        forward_not_matching_preflights=False,
    )
    return {"envoy.filters.http.cors": _any(policy)}


def _enabled(percent: int = 100) -> RuntimeFractionalPercent:
    return RuntimeFractionalPercent(default_value=FractionalPercent(
        numerator=percent, denominator=FractionalPercentDenominatorType.HUNDRED))


def _http_filters(settings: GatewaySettings) -> list[HttpFilter]:
    transcoder = GrpcJsonTranscoder(
        proto_descriptor=str(settings.descriptor_set.resolve()),
        services=[u.grpc_service for u in settings.upstreams],
        print_options=GrpcJsonTranscoderPrintOptions(
            always_print_primitive_fields=True, stream_sse_style_delimited=True),
        convert_grpc_status=True,
        # Without it an unknown ?param silently skips transcoding and falls through to `/`.
        ignore_unknown_query_parameters=True,
        case_insensitive_enum_parsing=True,
        max_request_body_size=settings.max_request_body_bytes,
        max_response_body_size=MAX_RESPONSE_BODY_BYTES,
    )
    # Browsers send Origin on cross-site POST/PATCH/DELETE: only our own origin
    # (and the CORS allow-list) may change data, even with a "simple" request.
    csrf = CsrfPolicy(filter_enabled=_enabled(),
                      additional_origins=[StringMatcher(exact=o) for o in settings.cors_origins])
    return [
        HttpFilter(name="envoy.filters.http.csrf", typed_config=_any(csrf)),
        # Before the buffer: a request without a valid token is refused before its body is read.
        HttpFilter(name="envoy.filters.http.jwt_authn", typed_config=_any(_jwt_authn(settings))),
        # Whole REST bodies, so an oversized upload is a 413 here, before any service sees it.
        HttpFilter(name="envoy.filters.http.buffer",
                   typed_config=_any(Buffer(max_request_bytes=settings.max_request_body_bytes))),
        # Before the transcoder, so it sees (and may re-status) the transcoded response.
        limits.status_hint_filter(),
        HttpFilter(name="envoy.filters.http.grpc_json_transcoder", typed_config=_any(transcoder)),
        # After the transcoder: REST requests carry their RPC's gRPC path by now.
        HttpFilter(name="envoy.filters.http.rbac", typed_config=_any(Rbac(rules=_rbac_rules(settings)))),
        # After the transcoder: it must see the route of the gRPC path (REST paths
        # only match direct responses, which the CORS filter ignores).
        HttpFilter(name="envoy.filters.http.cors", typed_config=_any(Cors())),
        *limits.rate_limit_filters(),  # likewise: per-route config on the gRPC path's route
        HttpFilter(name="envoy.filters.http.router", typed_config=_any(Router())),
    ]


def _jwt_authn(settings: GatewaySettings) -> JwtAuthentication:
    """Every /v1 REST call and every Visage gRPC call needs a valid token; the UI's
    files, /openapi.json, /healthz, reflection, health and CORS preflights do not."""
    auth = settings.auth
    if auth.jwks_url:
        keys = {"remote_jwks": RemoteJwks(
            http_uri=HttpUri(uri=auth.jwks_url, cluster=JWKS_CLUSTER, timeout=datetime.timedelta(seconds=5)),
            cache_duration=datetime.timedelta(hours=1),
            async_fetch=JwksAsyncFetch(failed_refetch_duration=datetime.timedelta(seconds=30)))}
    else:
        keys = {"local_jwks": DataSource(filename=str(auth.jwks_path.resolve()))}
    provider = JwtProvider(
        issuer=auth.issuer, audiences=[auth.audience], require_expiration=True, clock_skew_seconds=30,
        forward=True,  # the services check the same token again
        payload_in_metadata=JWT_PAYLOAD_METADATA,
        # A client's repeated token skips the signature check (each worker keeps its own cache).
        jwt_cache_config=JwtCacheConfig(jwt_cache_size=JWT_CACHE_SIZE), **keys)
    required = JwtRequirement(provider_name=JWT_PROVIDER)
    return JwtAuthentication(
        providers={JWT_PROVIDER: provider},
        bypass_cors_preflight=True,
        rules=[RequirementRule(match=RouteMatch(prefix="/v1/"), requires=required)]
              + [RequirementRule(match=RouteMatch(prefix=f"/{service}/"), requires=required)
                 for service in sorted(SERVICE_NAMES.values())])


def _has_role_at_least(settings: GatewaySettings, least: Role) -> Principal:
    """A token whose role claim (a list, or one string of names separated by spaces or
    commas, as visage.auth.roles.claim_role reads it: exact names) names `least` or a higher role."""
    def claim_is(value_matcher: ValueMatcher) -> Principal:
        # sourced_metadata: Principal.metadata is deprecated (Envoy warns once per use).
        return Principal(sourced_metadata=SourcedMetadata(
            metadata_source=MetadataSource.DYNAMIC,
            metadata_matcher=MetadataMatcher(
                filter="envoy.filters.http.jwt_authn",
                path=[MetadataMatcherPathSegment(key=JWT_PAYLOAD_METADATA),
                      MetadataMatcherPathSegment(key=settings.auth.role_claim)],
                value=value_matcher)))
    ids = []
    separators = ROLE_NAME_SEPARATORS  # plain characters, literal inside an RE2 class
    for role in (r for r in Role if r >= least):
        # Exactly as claim_role reads it: the exact name, no trimming, no case folding.
        exact = ValueMatcher(string_match=StringMatcher(exact=role.label))
        named_in_string = ValueMatcher(string_match=StringMatcher(safe_regex=RegexMatcher(
            regex=rf"(.*[{separators}])?{role.label}([{separators}].*)?")))  # RE2 matches the whole value
        ids += [claim_is(ValueMatcher(list_match=ListMatcher(one_of=exact))), claim_is(named_in_string)]
    return Principal(or_ids=PrincipalSet(ids=ids))


def _rbac_rules(settings: GatewaySettings) -> RbacRules:
    """Allow-list: each RPC to the roles at or above its least role (visage.auth.roles);
    an RPC missing from the table to admins; everything that is not a Visage RPC
    (UI, reflection, health, unmapped REST paths that end in a 404) to anyone."""
    rpc_prefixes = [f"/{service}/" for service in sorted(SERVICE_NAMES.values())]
    not_an_rpc = Permission(not_rule=Permission(or_rules=PermissionSet(
        rules=[Permission(url_path=PathMatcher(path=StringMatcher(prefix=p))) for p in rpc_prefixes])))
    policies = {"not-an-rpc": Policy(permissions=[not_an_rpc], principals=[Principal(any=True)])}
    for role in Role:
        methods = sorted(m for m, least in RPC_ROLES.items() if least == role)
        permissions = [Permission(url_path=PathMatcher(path=StringMatcher(exact=m))) for m in methods]
        if role == Role.ADMIN:
            permissions += [Permission(url_path=PathMatcher(path=StringMatcher(prefix=p))) for p in rpc_prefixes]
        if permissions:
            policies[f"{role.label}-rpcs"] = Policy(permissions=permissions,
                                                   principals=[_has_role_at_least(settings, role)])
    return RbacRules(action=RbacAction.ALLOW, policies=policies)


def _access_logs(settings: GatewaySettings) -> list[AccessLog]:
    if not settings.access_log:
        return []
    fmt = {"ts": "%START_TIME%", "service": "gateway", "method": "%REQ(:METHOD)%",
           # Never the query string: it may hold a person's name (?query=...).
           "path": "%PATH(NQ:ORIG)%", "grpc_path": "%PATH(NQ)%",
           "status": "%RESPONSE_CODE%", "grpc_status": "%GRPC_STATUS%", "ms": "%DURATION%",
           "bytes_in": "%BYTES_RECEIVED%", "bytes_out": "%BYTES_SENT%", "upstream": "%UPSTREAM_CLUSTER%",
           "flags": "%RESPONSE_FLAGS%"}
    stdout = StdoutAccessLog(log_format=SubstitutionFormatString(json_format=Struct.from_dict(fmt)))
    return [AccessLog(name="envoy.access_loggers.stdout", typed_config=_any(stdout))]


def _listener(settings: GatewaySettings) -> Listener:
    routes = _grpc_routes(settings) + _static_routes(settings) + _fallback_routes(settings)
    # A page on another origin that rebinds its DNS name to this machine reaches
    # Envoy with its own name as Host: only the configured names are served.
    other_hosts = VirtualHost(name="other-hosts", domains=["*"], routes=[
        # Kubernetes probes address the pod by IP.
        Route(name="/healthz-any-host", match=RouteMatch(path="/healthz"),
              direct_response=DirectResponseAction(status=200, body=DataSource(inline_string="ok\n"))),
        Route(name="misdirected", match=RouteMatch(prefix="/"), direct_response=_error(
            421, "this gateway does not serve that host name; add it to VISAGE_GATEWAY_HOSTNAMES")),
    ])
    route_config = RouteConfiguration(
        name="visage",
        max_direct_response_body_size_bytes=MAX_STATIC_FILE_BYTES,
        # Each name with any port (the Host header keeps it: the CSRF filter compares it with Origin).
        virtual_hosts=[VirtualHost(name="visage", domains=[d for h in settings.hostnames for d in (h, f"{h}:*")],
                                   routes=routes,
                                   typed_per_filter_config=_cors_policy(settings),
                                   # The caller as Envoy verified it, for the services' fairness (visage.guard.caller_of).
                                   request_headers_to_add=_headers({CALLER_HEADER: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}),
                                   response_headers_to_add=_headers({"strict-transport-security": HSTS})
                                   if settings.tls else []),
                       other_hosts],
    )
    hcm = limits.harden(HttpConnectionManager(
        stat_prefix="visage_gateway",
        route_config=route_config,
        http_filters=_http_filters(settings),
        access_log=_access_logs(settings),
        local_reply_config=_local_reply_config(),
        server_name="visage",
        tracing=gateway_tracing.connection_manager_tracing(settings.collector) if settings.collector else None,
    ), trusted_hops=settings.trusted_hops)
    return Listener(
        name="visage_http",
        address=Address(socket_address=SocketAddress(address=settings.bind_host, port_value=settings.port)),
        # The transcoder buffers a whole request body; uploads are up to 30 MB.
        per_connection_buffer_limit_bytes=settings.max_request_body_bytes,
        filter_chains=[FilterChain(filters=[Filter(
            name="envoy.filters.network.http_connection_manager", typed_config=_any(hcm))],
            transport_socket=_downstream_tls(settings))],
    )


def _redirect_listener(settings: GatewaySettings) -> Listener:
    """Plain http on a public address (port 80 behind the load balancer): every request is sent to the
    same host and path over https; nothing else is served there. /healthz answers for probes."""
    routes = [Route(name="/healthz", match=RouteMatch(path="/healthz"),
                    direct_response=DirectResponseAction(status=200, body=DataSource(inline_string="ok\n"))),
              Route(name="to-https", match=RouteMatch(prefix="/"),
                    redirect=RedirectAction(https_redirect=True, port_redirect=443))]
    hcm = HttpConnectionManager(
        stat_prefix="visage_redirect",
        route_config=RouteConfiguration(name="redirect", virtual_hosts=[
            VirtualHost(name="any", domains=["*"], routes=routes)]),
        http_filters=[HttpFilter(name="envoy.filters.http.router", typed_config=_any(Router()))],
        server_name="visage")
    return Listener(
        name="visage_http_redirect",
        address=Address(socket_address=SocketAddress(address=settings.bind_host, port_value=settings.redirect_port)),
        filter_chains=[FilterChain(filters=[Filter(name="envoy.filters.network.http_connection_manager",
                                                   typed_config=_any(hcm))])])


def _downstream_tls(settings: GatewaySettings) -> TransportSocket | None:
    if not settings.tls:
        return None
    context = DownstreamTlsContext(common_tls_context=CommonTlsContext(
        tls_certificates=[TlsCertificate(certificate_chain=DataSource(filename=str(settings.tls_cert)),
                                         private_key=DataSource(filename=str(settings.tls_key)))],
        alpn_protocols=["h2", "http/1.1"]))
    return TransportSocket(name="envoy.transport_sockets.tls", typed_config=_any(context))


def _jwks_cluster(jwks_url: str) -> Cluster:
    """The external issuer's key endpoint (e.g. login.microsoftonline.com), over TLS; plain
    http only to a provider on this machine (visage.auth.tokens.check_key_url)."""
    check_key_url(jwks_url, JWKS_URL_SETTING)
    url = urlsplit(jwks_url)
    tls = UpstreamTlsContext(sni=url.hostname, common_tls_context=CommonTlsContext(
        validation_context=CertificateValidationContext(trusted_ca=DataSource(filename=SYSTEM_CA_BUNDLE))))
    endpoint = LbEndpoint(endpoint=Endpoint(address=Address(socket_address=SocketAddress(
        address=url.hostname, port_value=url.port or (443 if url.scheme == "https" else 80)))))
    return Cluster(
        name=JWKS_CLUSTER,
        type=ClusterDiscoveryType.STRICT_DNS,
        dns_lookup_family=ClusterDnsLookupFamily.V4_PREFERRED,
        connect_timeout=datetime.timedelta(seconds=5),
        transport_socket=TransportSocket(name="envoy.transport_sockets.tls", typed_config=_any(tls))
        if url.scheme == "https" else None,
        load_assignment=ClusterLoadAssignment(cluster_name=JWKS_CLUSTER,
                                              endpoints=[LocalityLbEndpoints(lb_endpoints=[endpoint])]),
    )


def _cluster(upstream: Upstream, streams: bool = False) -> Cluster:
    """The service's cluster, or (`streams`) the one its streaming routes use."""
    http2 = HttpProtocolOptions(explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
        http2_protocol_options=Http2ProtocolOptions()))
    endpoint = LbEndpoint(endpoint=Endpoint(address=Address(socket_address=SocketAddress(
        address=upstream.host, port_value=upstream.port))))
    name = limits.stream_cluster(upstream.cluster) if streams else upstream.cluster
    return Cluster(
        name=name,
        type=ClusterDiscoveryType.STRICT_DNS,  # an IP or a Kubernetes service name
        dns_lookup_family=ClusterDnsLookupFamily.V4_PREFERRED,
        connect_timeout=datetime.timedelta(seconds=2),
        per_connection_buffer_limit_bytes=MAX_RESPONSE_BODY_BYTES,
        typed_extension_protocol_options={"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _any(http2)},
        load_assignment=ClusterLoadAssignment(cluster_name=name,
                                              endpoints=[LocalityLbEndpoints(lb_endpoints=[endpoint])]),
        circuit_breakers=limits.circuit_breakers(streams),
    )


def _overload_manager() -> OverloadManager:
    """Caps open client connections (each SSE watch holds one)."""
    limit = DownstreamConnectionsConfig(max_active_downstream_connections=MAX_DOWNSTREAM_CONNECTIONS)
    return OverloadManager(resource_monitors=[ResourceMonitor(
        name="envoy.resource_monitors.global_downstream_max_connections", typed_config=_any(limit))])


def build_bootstrap(settings: GatewaySettings) -> dict:
    """The whole Envoy config as the JSON-ready dict Envoy's `-c` accepts."""
    bootstrap = Bootstrap(
        static_resources=BootstrapStaticResources(
            listeners=[_listener(settings)] + ([_redirect_listener(settings)] if settings.redirect_port else []),
            clusters=[_cluster(u, streams) for u in settings.upstreams for streams in (False, True)]
            + ([_jwks_cluster(settings.auth.jwks_url)] if settings.auth.jwks_url else [])
            + ([gateway_tracing.collector_cluster(settings.collector)] if settings.collector else []),
        ),
        overload_manager=_overload_manager(),
    )
    return bootstrap.to_dict()


def write_bootstrap(settings: GatewaySettings, path: Path) -> Path:
    private_dir(path.parent)
    private_file(path).write_text(json.dumps(build_bootstrap(settings), indent=1))
    return path
