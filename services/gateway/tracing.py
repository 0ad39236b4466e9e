"""Envoy's part of the traces (visage.tracing has the services' part).

With the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or `_TRACES_ENDPOINT`) set, the connection
manager uses Envoy's OpenTelemetry tracer: every request gets a span (the `traceparent` a client
sent is its parent, else it starts a trace), the router passes its context upstream as
`traceparent`, so a service's server span is its child in the same trace, and spans go over
OTLP/gRPC to the same collector as the services', through a cluster of their own.
The service name is `OTEL_SERVICE_NAME` (default `visage-gateway`); Envoy's own environment
detector adds `OTEL_RESOURCE_ATTRIBUTES`; `OTEL_EXPORTER_OTLP_HEADERS` go with each export (`_CERTIFICATE`: the CA of a TLS collector);
`OTEL_TRACES_SAMPLER` `always_off` / `traceidratio` (`_ARG`) set the share of new traces."""
from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from envoy_data_plane.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType, ClusterDnsLookupFamily
from envoy_data_plane.envoy.config.core.v3 import (
    Address,
    DataSource,
    GrpcService,
    GrpcServiceEnvoyGrpc,
    HeaderValue,
    Http2ProtocolOptions,
    SocketAddress,
    TransportSocket,
    TypedExtensionConfig,
)
from envoy_data_plane.envoy.config.endpoint.v3 import ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints
from envoy_data_plane.envoy.config.trace.v3 import OpenTelemetryConfig, TracingHttp
from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 import HttpConnectionManagerTracing
from envoy_data_plane.envoy.extensions.tracers.opentelemetry.resource_detectors.v3 import (
    EnvironmentResourceDetectorConfig,
)
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
    CertificateValidationContext,
    CommonTlsContext,
    UpstreamTlsContext,
)
from envoy_data_plane.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions,
    HttpProtocolOptionsExplicitHttpConfig,
)
from envoy_data_plane.envoy.type.v3 import Percent
from envoy_data_plane.google.protobuf import Any

from visage import tracing

COLLECTOR_CLUSTER = "visage_otel_collector"
DEFAULT_SERVICE_NAME = "visage-gateway"
OTLP_GRPC_PORT = 4317
EXPORT_TIMEOUT = datetime.timedelta(seconds=5)
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


@dataclass(frozen=True)
class Collector:
    """Where Envoy sends its spans, from the OTEL_* variables the services read too."""
    host: str
    port: int
    tls: bool
    service_name: str = DEFAULT_SERVICE_NAME
    headers: tuple[tuple[str, str], ...] = ()
    sampling_percent: float = 100.0
    resource_from_env: bool = False  # OTEL_RESOURCE_ATTRIBUTES is set: Envoy reads it itself
    ca_file: str = SYSTEM_CA_BUNDLE

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Collector | None":
        """None when tracing is off. Like the Python exporter, an endpoint without a scheme uses
        TLS unless OTEL_EXPORTER_OTLP_INSECURE=true; http:// is plaintext, https:// TLS."""
        endpoint = tracing.otlp_endpoint(env)
        if endpoint is None:
            return None
        url = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
        if not url.hostname:
            raise ValueError(f"OTLP endpoint {endpoint!r} names no host")
        insecure = env.get("OTEL_EXPORTER_OTLP_TRACES_INSECURE", env.get("OTEL_EXPORTER_OTLP_INSECURE", ""))
        tls = url.scheme == "https" or (url.scheme != "http" and insecure.strip().lower() != "true")
        return cls(host=url.hostname, port=url.port or OTLP_GRPC_PORT, tls=tls,
                   service_name=env.get("OTEL_SERVICE_NAME", "").strip() or DEFAULT_SERVICE_NAME,
                   headers=_headers(env.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
                                    or env.get("OTEL_EXPORTER_OTLP_HEADERS", "")),
                   sampling_percent=_sampling_percent(env),
                   resource_from_env=bool(env.get("OTEL_RESOURCE_ATTRIBUTES", "").strip()),
                   ca_file=env.get("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE")
                   or env.get("OTEL_EXPORTER_OTLP_CERTIFICATE") or SYSTEM_CA_BUNDLE)


def _headers(value: str) -> tuple[tuple[str, str], ...]:
    """OTEL_EXPORTER_OTLP_HEADERS: `key=value,key2=value2`, values URL-encoded."""
    pairs = (item.split("=", 1) for item in value.split(",") if "=" in item)
    return tuple((key.strip().lower(), unquote(val.strip())) for key, val in pairs)


def _sampling_percent(env: Mapping[str, str]) -> float:
    """The share of new traces Envoy starts, from the SDK's sampler variables; a request whose
    `traceparent` already decided keeps that decision."""
    sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if sampler in ("always_off", "parentbased_always_off"):
        return 0.0
    if sampler in ("traceidratio", "parentbased_traceidratio"):
        try:
            ratio = float(env.get("OTEL_TRACES_SAMPLER_ARG", "1"))
        except ValueError:
            raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={env['OTEL_TRACES_SAMPLER_ARG']!r} is not a number") from None
        return min(max(ratio, 0.0), 1.0) * 100
    return 100.0


def connection_manager_tracing(collector: Collector) -> HttpConnectionManagerTracing:
    tracer = OpenTelemetryConfig(
        grpc_service=GrpcService(envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=COLLECTOR_CLUSTER),
                                 timeout=EXPORT_TIMEOUT,
                                 initial_metadata=[HeaderValue(key=k, value=v) for k, v in collector.headers]),
        service_name=collector.service_name,
        resource_detectors=[TypedExtensionConfig(
            name="envoy.tracers.opentelemetry.resource_detectors.environment",
            typed_config=Any.pack(EnvironmentResourceDetectorConfig()))] if collector.resource_from_env else [],
    )
    return HttpConnectionManagerTracing(
        provider=TracingHttp(name="envoy.tracers.opentelemetry", typed_config=Any.pack(tracer)),
        random_sampling=Percent(value=collector.sampling_percent),
    )


def collector_cluster(collector: Collector) -> Cluster:
    """The OTLP/gRPC collector: HTTP/2, TLS when the endpoint asks for it."""
    http2 = HttpProtocolOptions(explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
        http2_protocol_options=Http2ProtocolOptions()))
    endpoint = LbEndpoint(endpoint=Endpoint(address=Address(socket_address=SocketAddress(
        address=collector.host, port_value=collector.port))))
    tls = None
    if collector.tls:
        context = UpstreamTlsContext(sni=collector.host, common_tls_context=CommonTlsContext(
            alpn_protocols=["h2"],
            validation_context=CertificateValidationContext(trusted_ca=DataSource(filename=collector.ca_file))))
        tls = TransportSocket(name="envoy.transport_sockets.tls", typed_config=Any.pack(context))
    return Cluster(
        name=COLLECTOR_CLUSTER,
        type=ClusterDiscoveryType.STRICT_DNS,  # an IP or a Kubernetes service name
        dns_lookup_family=ClusterDnsLookupFamily.V4_PREFERRED,
        connect_timeout=datetime.timedelta(seconds=5),
        typed_extension_protocol_options={"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": Any.pack(http2)},
        transport_socket=tls,
        load_assignment=ClusterLoadAssignment(cluster_name=COLLECTOR_CLUSTER,
                                              endpoints=[LocalityLbEndpoints(lb_endpoints=[endpoint])]),
    )
