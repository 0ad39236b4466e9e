"""The gateway's defences against abuse: what envoy_config adds so that idle
streams, slow or greedy callers and expensive images cannot starve others,
and so every error has one REST shape.

- Streams: every streaming route goes to a cluster of its own per service
  (`<cluster>_streams`), whose circuit breaker caps open streams at the
  services' own cap (visage.guard), on connections of their own, so unary
  calls never queue behind streams. Client streams that stay silent are
  closed after CLIENT_STREAM_IDLE; server streams (watches) after
  SERVER_STREAM_IDLE without a message (clients reconnect with their cursor).
- Connections: a downstream HTTP/2 connection may carry at most
  MAX_STREAMS_PER_CONNECTION streams; request headers must arrive within
  REQUEST_HEADERS_TIMEOUT (slowloris).
- Cost: the image routes (COSTLY_METHODS) have a token bucket per caller
  address (Envoy local rate limit with a wildcard descriptor), so one caller
  sending big images cannot take every worker from another; a refused call
  (429 / RESOURCE_EXHAUSTED) carries `retry-after` (seconds until the refill).
  A refused call is answered only after PACE (Envoy's fault filter: no CPU,
  no thread while it waits), so a caller that ignores `retry-after` gets one
  refusal per connection per PACE instead of thousands a second: such a
  flood cost a victim's Classify as much as the images did (issue 25).
- Errors: every local reply (Envoy's own 4xx/5xx) is the JSON the transcoder
  gives service errors: {"code": <gRPC code>, "message", "details": [...]};
  a service may ask for an HTTP status no gRPC code maps to (413 for an image
  over the byte limit) with the STATUS_HINT_HEADER trailer (visage.errors sets it
  for a kind registered with an HTTP status).
"""
from __future__ import annotations

import datetime
import math
from collections.abc import Mapping
from dataclasses import dataclass

from envoy_data_plane.envoy.config.accesslog.v3 import (
    AccessLogFilter,
    ComparisonFilter,
    ComparisonFilterOp,
    ExtensionFilter,
    StatusCodeFilter,
)
from envoy_data_plane.envoy.config.cluster.v3 import CircuitBreakers, CircuitBreakersThresholds
from envoy_data_plane.envoy.config.core.v3 import (
    DataSource,
    HeaderValue,
    HeaderValueOption,
    HeaderValueOptionHeaderAppendAction,
    Http2ProtocolOptions,
    HttpProtocolOptions,
    RuntimeFractionalPercent,
    RuntimeUInt32,
    SubstitutionFormatString,
)
from envoy_data_plane.envoy.config.route.v3 import (
    HeaderMatcher,
    RateLimit,
    RateLimitAction,
    RateLimitActionRemoteAddress,
)
from envoy_data_plane.envoy.extensions.filters.common.fault.v3 import FaultDelay
from envoy_data_plane.envoy.extensions.filters.http.fault.v3 import FaultAbort, HttpFault
from envoy_data_plane.envoy.extensions.common.ratelimit.v3 import LocalRateLimitDescriptor, RateLimitDescriptorEntry
from envoy_data_plane.envoy.extensions.filters.http.local_ratelimit.v3 import LocalRateLimit
from envoy_data_plane.envoy.extensions.access_loggers.filters.cel.v3 import ExpressionFilter
from envoy_data_plane.envoy.extensions.filters.http.lua.v3 import Lua
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpFilter,
    ResponseMapper,
)
from envoy_data_plane.envoy.type.v3 import FractionalPercent, FractionalPercentDenominatorType, TokenBucket
from envoy_data_plane.google.protobuf import Any, Struct

from visage.errors import STATUS_HINT_HEADER
from visage.config import GatewayConfig
from visage.guard import max_streams_from_env
from visage.server import SERVICE_NAMES

CLIENT_STREAM_IDLE = datetime.timedelta(minutes=5)
SERVER_STREAM_IDLE = datetime.timedelta(hours=1)
MAX_STREAMS_PER_CONNECTION = 100
REQUEST_HEADERS_TIMEOUT = datetime.timedelta(seconds=10)
CONNECTION_IDLE_TIMEOUT = datetime.timedelta(minutes=15)
# Calls that run the face pipeline on an uploaded image (a stream counts once, when it opens).
COSTLY_METHODS = {
    SERVICE_NAMES["classifier"]: ("Classify", "ClassifyStream", "FindSimilarFaces", "VerifyFaces"),
    SERVICE_NAMES["ingest"]: ("IngestImage", "IngestImages", "AddFace"),
}
RATE_LIMIT_FILTER = "envoy.filters.http.local_ratelimit"
FAULT_FILTER = "envoy.filters.http.fault"  # paces the refusals of the rate limit
REFILL_INTERVAL = datetime.timedelta(seconds=1)  # each caller's bucket gains `per_second` tokens this often
PACE = REFILL_INTERVAL  # a call over the limit is refused this long after its request arrived
# Set by the rate limit on a call over the limit: the fault filter refuses it after PACE.
OVER_LIMIT_HEADER = "x-visage-over-image-limit"
RETRY_AFTER_HEADER = "retry-after"  # on every 429 / RESOURCE_EXHAUSTED of the rate limit (seconds)
RATE_LIMITED_MESSAGE = ("too many image calls from this address (VISAGE_GATEWAY_IMAGE_CALLS_PER_SECOND): "
                        "try again after the seconds in the retry-after header")
# Distinct caller addresses whose buckets Envoy keeps (least recently used beyond).
MAX_TRACKED_CALLERS = 10_000

# Envoy's own replies by HTTP status, as the gRPC code a service would have used.
GRPC_CODE_FOR_HTTP = {400: 3, 401: 16, 403: 7, 404: 5, 405: 12, 408: 4, 413: 8, 429: 8, 431: 8,
                      500: 13, 501: 12, 502: 14, 503: 14, 504: 4}
GRPC_CODE_OTHER_4XX, GRPC_CODE_OTHER_5XX = 9, 14  # FAILED_PRECONDITION, UNAVAILABLE
RESOURCE_EXHAUSTED = 8


@dataclass(frozen=True)
class CallerRate:
    """Image calls each caller address may make: `per_second` on average,
    `burst` at once. 0 per second turns the limit off."""
    per_second: int = 4
    burst: int = 8

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "CallerRate":
        return cls.from_config(GatewayConfig.from_env(env))

    @classmethod
    def from_config(cls, gateway: GatewayConfig) -> "CallerRate":
        """VISAGE_GATEWAY_IMAGE_CALLS_PER_SECOND and _BURST (default twice the rate, at least 1)."""
        per_second = gateway.image_calls_per_second
        burst = gateway.image_calls_burst if gateway.image_calls_burst is not None else max(per_second * 2, 1)
        if per_second < 0 or burst < 1:
            raise ValueError("VISAGE_GATEWAY_IMAGE_CALLS_PER_SECOND must be >= 0 and _BURST >= 1")
        return cls(per_second, burst)

    @property
    def enabled(self) -> bool:
        return self.per_second > 0


def stream_cluster(cluster: str) -> str:
    return f"{cluster}_streams"


def stream_idle_timeout(client_streaming: bool) -> datetime.timedelta:
    return CLIENT_STREAM_IDLE if client_streaming else SERVER_STREAM_IDLE


def circuit_breakers(streams: bool) -> CircuitBreakers | None:
    """Streams are capped as the service caps them (so Envoy answers 503/
    UNAVAILABLE before a service must refuse); unary calls keep Envoy's defaults."""
    if not streams:
        return None
    limit = max_streams_from_env()
    return CircuitBreakers(thresholds=[CircuitBreakersThresholds(max_requests=limit, max_pending_requests=limit)])


def costly_paths(grpc_services: set[str]) -> list[str]:
    return sorted(f"/{service}/{method}" for service, methods in COSTLY_METHODS.items()
                  if service in grpc_services for method in methods)


def _percent(value: int) -> RuntimeFractionalPercent:
    return RuntimeFractionalPercent(default_value=FractionalPercent(
        numerator=value, denominator=FractionalPercentDenominatorType.HUNDRED))


_EVERY_ONE = FractionalPercent(numerator=100, denominator=FractionalPercentDenominatorType.HUNDRED)


def caller_rate_limit(rate: CallerRate) -> dict[str, Any]:
    """typed_per_filter_config for a costly route: one token bucket per caller
    address (a descriptor whose value is left blank is a wildcard: each
    distinct address gets its own bucket). The rate limit only marks a call
    over the limit (OVER_LIMIT_HEADER); the fault filter refuses it after PACE."""
    if not rate.enabled:
        return {}
    bucket = TokenBucket(max_tokens=rate.burst, tokens_per_fill=rate.per_second,
                         fill_interval=REFILL_INTERVAL)
    per_caller = LocalRateLimit(
        stat_prefix="visage_image_calls",
        # The route-wide bucket is a backstop only; the per-caller buckets decide.
        token_bucket=TokenBucket(max_tokens=rate.burst * 1000, tokens_per_fill=rate.per_second * 1000,
                                 fill_interval=datetime.timedelta(seconds=1)),
        always_consume_default_token_bucket=False,
        filter_enabled=_percent(100),
        # Not enforced here: marked for the fault filter, which answers after PACE.
        filter_enforced=_percent(0),
        request_headers_to_add_when_not_enforced=[HeaderValueOption(
            header=HeaderValue(key=OVER_LIMIT_HEADER, value="1"),
            append_action=HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD)],
        descriptors=[LocalRateLimitDescriptor(entries=[RateLimitDescriptorEntry(key="remote_address")],
                                              token_bucket=bucket)],
        rate_limits=[RateLimit(actions=[RateLimitAction(remote_address=RateLimitActionRemoteAddress())])],
        max_dynamic_descriptors=MAX_TRACKED_CALLERS,
    )
    # A client that sends OVER_LIMIT_HEADER itself only gets its own call refused.
    paced_refusal = HttpFault(
        headers=[HeaderMatcher(name=OVER_LIMIT_HEADER, present_match=True)],
        delay=FaultDelay(fixed_delay=PACE, percentage=_EVERY_ONE),
        abort=FaultAbort(grpc_status=RESOURCE_EXHAUSTED, percentage=_EVERY_ONE))
    return {RATE_LIMIT_FILTER: Any.pack(per_caller), FAULT_FILTER: Any.pack(paced_refusal)}


def rate_limit_filters() -> list[HttpFilter]:
    """Off by default: only routes with caller_rate_limit config are limited (the
    fault filter, after the rate limit, injects nothing elsewhere)."""
    return [HttpFilter(name=RATE_LIMIT_FILTER, typed_config=Any.pack(LocalRateLimit(stat_prefix="visage_rate_limit"))),
            HttpFilter(name=FAULT_FILTER, typed_config=Any.pack(HttpFault()))]


# Envoy runs response filters in reverse order: placed before the transcoder,
# this sees the transcoded JSON response and may change its status.
_STATUS_HINT_LUA = f"""
function envoy_on_response(handle)
  local headers = handle:headers()
  local hint = headers:get("{STATUS_HINT_HEADER}")
  if hint == nil then return end
  headers:remove("{STATUS_HINT_HEADER}")
  local content_type = headers:get("content-type") or ""
  if string.find(content_type, "application/json", 1, true) == 1 and string.match(hint, "^4%d%d$") then
    headers:replace(":status", hint)
  end
end
"""


def status_hint_filter() -> HttpFilter:
    """REST answers a service's STATUS_HINT_HEADER (e.g. 413 for an image over
    the byte limit, which gRPC can only call RESOURCE_EXHAUSTED, i.e. 429)."""
    return HttpFilter(name="envoy.filters.http.lua",
                      typed_config=Any.pack(Lua(default_source_code=DataSource(inline_string=_STATUS_HINT_LUA))))


def harden(hcm: HttpConnectionManager, trusted_hops: int = 0) -> HttpConnectionManager:
    """Per-connection limits and timeouts on the listener's connection manager. `trusted_hops`:
    proxies in front whose X-Forwarded-For entries name the caller (VISAGE_GATEWAY_TRUSTED_HOPS)."""
    hcm.http2_protocol_options = Http2ProtocolOptions(max_concurrent_streams=MAX_STREAMS_PER_CONNECTION)
    hcm.common_http_protocol_options = HttpProtocolOptions(idle_timeout=CONNECTION_IDLE_TIMEOUT)
    hcm.request_headers_timeout = REQUEST_HEADERS_TIMEOUT
    # Envoy is the edge: the caller is the peer address, never a client-sent X-Forwarded-For.
    hcm.use_remote_address = True
    hcm.xff_num_trusted_hops = trusted_hops
    return hcm


def _status_filter(op: ComparisonFilterOp, status: int) -> AccessLogFilter:
    return AccessLogFilter(status_code_filter=StatusCodeFilter(comparison=ComparisonFilter(
        op=op, value=RuntimeUInt32(default_value=status, runtime_key=f"visage.local_reply_{status}"))))


def _error_body(grpc_code: int, message: str = "%LOCAL_REPLY_BODY%",
                reason: str = "%RESPONSE_CODE_DETAILS%") -> SubstitutionFormatString:
    body = {"code": grpc_code, "message": message,
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                         "reason": reason, "domain": "gateway.visage"}]}
    return SubstitutionFormatString(json_format=Struct.from_dict(body), content_type="application/json")


# jwt_authn answers a well-signed token for another audience with 403; the services and
# README say UNAUTHENTICATED / 401 for every token that is not valid here (issue 25).
_JWT_REFUSED_AS_403 = ("response.code == 403 && "
                       "response.code_details.startsWith('jwt_authn_access_denied')")

# The fault filter's refusal of a call the rate limit marked (OVER_LIMIT_HEADER).
_RATE_LIMITED = "response.code_details == 'fault_filter_abort'"


def error_mappers() -> list[ResponseMapper]:
    """Every local reply >= 400 as {"code": <gRPC code>, "message", "details"}:
    the shape the transcoder gives a service's error, so a client reads one shape.
    A token jwt_authn refused is 401 / UNAUTHENTICATED, whatever status it chose."""
    jwt_refused = AccessLogFilter(extension_filter=ExtensionFilter(
        name="envoy.access_loggers.extension_filters.cel",
        typed_config=Any.pack(ExpressionFilter(expression=_JWT_REFUSED_AS_403))))
    mappers = [ResponseMapper(filter=jwt_refused, status_code=401, body_format_override=_error_body(16))]
    # The paced refusal says what to do, and when: the bucket refills every REFILL_INTERVAL.
    # A REST caller reads `retry-after` (RFC 9110); a gRPC caller finds it in the trailing metadata.
    rate_limited = AccessLogFilter(extension_filter=ExtensionFilter(
        name="envoy.access_loggers.extension_filters.cel",
        typed_config=Any.pack(ExpressionFilter(expression=_RATE_LIMITED))))
    retry_after = HeaderValueOption(
        header=HeaderValue(key=RETRY_AFTER_HEADER, value=str(math.ceil(REFILL_INTERVAL.total_seconds()))),
        append_action=HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD)
    mappers.append(ResponseMapper(filter=rate_limited, status_code=429, headers_to_add=[retry_after],
                                  body_format_override=_error_body(RESOURCE_EXHAUSTED, RATE_LIMITED_MESSAGE,
                                                                    reason="local_rate_limited")))
    mappers += [ResponseMapper(filter=_status_filter(ComparisonFilterOp.EQ, status), body_format_override=_error_body(code))
               for status, code in GRPC_CODE_FOR_HTTP.items()]
    mappers.append(ResponseMapper(filter=_status_filter(ComparisonFilterOp.GE, 500),
                                  body_format_override=_error_body(GRPC_CODE_OTHER_5XX)))
    mappers.append(ResponseMapper(filter=_status_filter(ComparisonFilterOp.GE, 400),
                                  body_format_override=_error_body(GRPC_CODE_OTHER_4XX)))
    return mappers
