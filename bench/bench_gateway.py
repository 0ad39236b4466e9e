"""REST through the Envoy gateway vs direct gRPC, for one small query RPC
(GetPersona) on loopback: p50/p99 latency, req/s, and the latency the gateway
adds at p50 (issue #6 target: <= 0.2 ms). Baseline: direct gRPC.

Set-up as deployed (`make run`): the query service runs as its own process
(`python -m visage_query`), the gateway is `python -m visage_gateway` (access
log off: we measure the proxy, not a log line per request). Everything runs
twice, in two CPU placements (visage.placement):
- shared cores: the OS places every process (`make run`'s default);
- gateway on a core of its own (VISAGE_GATEWAY_CPUS=last core,
  VISAGE_SERVICE_CPUS=the others), as production gets it from a Guaranteed
  pod under Kubernetes' static CPU manager (deploy/aks, prod). The clients
  (this process, h2load) sit on the gateway's core, so both paths cross from
  the client's core to the service's core once each way, as a remote client's
  calls cross the network. Each path is
called sequentially (one request in flight: latency, not the GIL-bound
server's throughput) on one keep-alive connection; the paths are interleaved
over rounds (order rotated) so background load from other users of the machine
hits all alike, and each p50 is the median of the per-round p50s.

Verdict: with h2load installed, C clients on both sides (h2load gRPC direct
vs h2load HTTP/1.1 REST through Envoy), so the difference is the gateway and
not two different clients; without it, Python clients: grpcio direct vs a lean
HTTP/1.1 client through Envoy (one send, read to Content-Length, json.loads).
grpcio's client costs ~0.2-0.25 ms a call more than that lean client here,
which hides most of the hop, so the Python figure is printed but not judged
when h2load is there. The other rows are the per-component breakdown:
- REST with Python's http.client: its email-parser headers cost ~0.15 ms a call.
- REST via an Envoy with only transcoder + router, started directly: what the
  gateway's own filters (CSRF, buffer, CORS, local replies, overload manager)
  and its supervisor launch cost.
- gRPC via Envoy: the same grpcio client through the proxy, no transcoding.
- Envoy local reply (/healthz): client + Envoy, no upstream; then the same with
  the client idle 1 ms before each call. On this VM (KVM guest, nested PVM,
  haltpoll.guest_halt_poll_ns=0) a process that runs after its vCPU idled or
  after other processes ran starts cold and is several times slower for its
  first ~100 us: Envoy's CPU per /healthz goes from ~17 us back to back to
  ~120 us after 1 ms idle. A proxied call runs Envoy twice (the request, then
  the response after ~0.3 ms of Python in the service): ~250 us of Envoy CPU
  per call here, whatever the filters, where an Envoy proxying to another
  Envoy (no Python between its two runs) used ~50 us.
- direct gRPC with the server inside the bench's own process (the old
  baseline): in-process, gRPC skips the cross-process wake-ups that every real
  client (grpcurl, other services, Envoy) pays.
- h2load (Debian nghttp2-client), when installed: C clients on both sides,
  so neither Python client's cost hides or inflates the hop; and the same
  Envoy hop in front of a C++ upstream (a second Envoy answering directly):
  what one Envoy hop costs on this machine when no Python process runs
  between its two halves.
CPU columns: CPU time per call of Envoy and of the query process (/proc)."""
from __future__ import annotations

import dataclasses
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc

from visage import placement
from visage.auth import client as auth_client
from visage.config import Config, Ports
from visage.store.sqlite import SqliteStore
from visage.v1 import query_pb2, query_pb2_grpc
from visage.v1 import resources_pb2 as pb
from visage_gateway import envoy_config
from visage_gateway.supervisor import envoy_command
from visage.loopback import free_port
from visage_query import server as query_server

REQUESTS = int(os.environ.get("VISAGE_BENCH_GATEWAY_REQUESTS", "3000"))  # per path, over all rounds
ROUNDS = 3
WARMUP = 200
TARGET_ADDED_MS = 0.2
READY_SECONDS = 60
IDLE_SECONDS = 0.001  # about the query service's time per call: Envoy sleeps that long on every proxied call

DIRECT = "direct gRPC (baseline)"
REST = "REST via Envoy"
REST_STDLIB = "REST via Envoy, http.client"
REST_MINIMAL = "REST via Envoy, minimal config"
PROXIED = "gRPC via Envoy"
LOCAL_REPLY = "Envoy local reply /healthz"
LOCAL_REPLY_IDLE = "  same, idle 1 ms before"
IN_PROCESS = "direct gRPC, in-process server"
C_DIRECT = "direct gRPC, h2load (C)"
C_REST = "REST via Envoy, h2load --h1 (C)"
C_PROXIED = "gRPC via Envoy, h2load (C)"
C_CPP_DIRECT = "C++ upstream direct, h2load (C)"
C_CPP_PROXIED = "C++ upstream via Envoy, h2load (C)"
ORDER = [DIRECT, REST, REST_STDLIB, REST_MINIMAL, PROXIED, LOCAL_REPLY, LOCAL_REPLY_IDLE, IN_PROCESS,
         C_DIRECT, C_REST, C_PROXIED, C_CPP_DIRECT, C_CPP_PROXIED]

Runner = Callable[[int], list[float]]  # count -> that many timed calls, in seconds


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process (Linux /proc); None where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError, TypeError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pid(parent: int, name: str) -> int | None:
    """The gateway supervisor's Envoy child, for its CPU time."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            comm, rest = stat.read_text().split(" (", 1)[1].rsplit(")", 1)
        except (OSError, ValueError):
            continue
        if comm == name and int(rest.split()[1]) == parent:
            return int(stat.parent.name)
    return None


def bearer() -> str:
    return f"Bearer {os.environ[auth_client.TOKEN_ENV]}"  # set by `python -m bench`


class LeanHttpClient:
    """HTTP/1.1 keep-alive GETs on one socket: what a C client does (one write,
    read to Content-Length), without http.client's email-parser headers."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def get(self, path: str) -> tuple[int, bytes]:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: {bearer()}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += self._recv()
        head, _, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
        if not length:
            raise RuntimeError(f"no content-length in {head!r}")
        while len(body) < int(length.group(1)):
            body += self._recv()
        return int(head[9:12]), body

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("gateway closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


def python_runner(call: Callable[[], None], idle: float = 0.0) -> Runner:
    def run(count: int) -> list[float]:
        for _ in range(WARMUP):
            call()
        samples = []
        for _ in range(count):
            if idle:
                time.sleep(idle)
            start = time.perf_counter()
            call()
            samples.append(time.perf_counter() - start)
        return samples
    return run


def h2load_runner(url: str, log: Path, *args: str) -> Runner:
    """h2load, one connection, one request at a time; per-request times from its log."""
    def run(count: int) -> list[float]:
        log.unlink(missing_ok=True)
        total = count + WARMUP
        result = subprocess.run(["h2load", "-n", str(total), "-c1", "-m1", "-t1", f"--log-file={log}",
                                 "-H", f"authorization: {bearer()}", *args, url],
                                capture_output=True, text=True, timeout=120)
        ok = re.search(r"status codes: (\d+) 2xx", result.stdout)
        if result.returncode != 0 or not ok or int(ok.group(1)) != total:
            raise RuntimeError(f"h2load failed on {url}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        return [int(line.split("\t")[2]) / 1e6 for line in log.read_text().splitlines()][WARMUP:]
    return run


@dataclass
class Measured:
    p50s: list[float] = field(default_factory=list)       # ms, one per round
    samples: list[float] = field(default_factory=list)    # seconds
    envoy_cpu: list[float] = field(default_factory=list)  # us per call, one per round
    query_cpu: list[float] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return statistics.median(self.p50s)


@dataclass
class Stack:
    work: Path
    query: subprocess.Popen
    query_port: int
    gateway: subprocess.Popen | None = None
    gateway_port: int = 0
    envoy_pid: int | None = None
    minimal: subprocess.Popen | None = None
    minimal_port: int = 0
    cpp_upstream: subprocess.Popen | None = None
    cpp_upstream_port: int = 0
    cpp_front: subprocess.Popen | None = None
    cpp_front_port: int = 0

    def stop(self) -> None:
        for process in (self.cpp_front, self.cpp_upstream, self.minimal, self.gateway, self.query):
            if process is None:
                continue
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


@dataclass(frozen=True)
class Placement:
    name: str
    service_cpus: frozenset[int] | None = None  # the query service and the C++ upstream
    gateway_cpus: frozenset[int] | None = None  # every Envoy in front, and the clients

    def env(self, variable: str, cpus: frozenset[int] | None) -> dict[str, str]:
        return {variable: ",".join(map(str, sorted(cpus)))} if cpus else {}


def placements() -> list[Placement]:
    cpus = sorted(os.sched_getaffinity(0))
    shared = Placement("shared cores: the OS places every process")
    if len(cpus) < 2:
        return [shared]
    return [shared, Placement(f"gateway on a core of its own: Envoy and clients on CPU {cpus[-1]}, "
                              f"the service on CPU {','.join(map(str, cpus[:-1]))}",
                              service_cpus=frozenset(cpus[:-1]), gateway_cpus=frozenset(cpus[-1:]))]


def pinned_to(cpus: frozenset[int] | None) -> Callable[[], None]:
    """A Popen preexec_fn that pins the child before exec."""
    return lambda: placement.pin_this_process(cpus)


def start_query_service(work: Path, where: Placement) -> Stack:
    port = free_port()
    env = dict(os.environ, VISAGE_DATA_DIR=str(work / "query"), VISAGE_QUERY_PORT=str(port),
               **where.env(placement.SERVICE_CPUS_ENV, where.service_cpus))
    process = subprocess.Popen([sys.executable, "-m", "visage_query"], env=env,
                               stdout=subprocess.DEVNULL, stderr=(work / "query.log").open("wb"))
    return Stack(work, process, port)


def wait_for_http(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        try:
            client = LeanHttpClient(port)
            status, _ = client.get("/healthz")
            client.close()
            if status == 200:
                return
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"Envoy on port {port} did not start:\n{log.read_text()[-3000:]}")


def start_gateway(stack: Stack, where: Placement) -> None:
    """The real gateway: `python -m visage_gateway`, which runs Envoy."""
    stack.gateway_port = free_port()
    env = dict(os.environ, VISAGE_DATA_DIR=str(stack.work / "gateway"), VISAGE_GATEWAY_PORT=str(stack.gateway_port),
               VISAGE_QUERY_PORT=str(stack.query_port), VISAGE_GATEWAY_ACCESS_LOG="0",
               **where.env(placement.GATEWAY_CPUS_ENV, where.gateway_cpus))
    log = stack.work / "gateway.log"
    stack.gateway = subprocess.Popen([sys.executable, "-m", "visage_gateway"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    wait_for_http(stack.gateway_port, stack.gateway, log)
    stack.envoy_pid = child_pid(stack.gateway.pid, "envoy")


def start_minimal_envoy(stack: Stack, where: Placement) -> None:
    """The same routes and transcoder with no other filter, no local-reply
    mapping, no overload manager, Envoy started directly: REST minus this is
    what the gateway's own features and launch cost."""
    stack.minimal_port = free_port()
    settings = envoy_config.GatewaySettings.from_config(
        Config(ports=Ports(query=stack.query_port, gateway=stack.minimal_port)), {})
    bootstrap = envoy_config.build_bootstrap(dataclasses.replace(settings, access_log=False))
    hcm = bootstrap["staticResources"]["listeners"][0]["filterChains"][0]["filters"][0]["typedConfig"]
    hcm["httpFilters"] = [f for f in hcm["httpFilters"]
                          if f["name"] in ("envoy.filters.http.grpc_json_transcoder", "envoy.filters.http.router")]
    hcm.pop("localReplyConfig")
    bootstrap.pop("overloadManager")
    path = stack.work / "minimal-envoy.json"
    path.write_text(json.dumps(bootstrap))
    log = stack.work / "minimal-envoy.log"
    stack.minimal = subprocess.Popen(envoy_command(path, cpus=where.gateway_cpus), stdout=subprocess.DEVNULL,
                                     stderr=log.open("wb"), preexec_fn=pinned_to(where.gateway_cpus))
    wait_for_http(stack.minimal_port, stack.minimal, log)


def _plain_listener(port: int, route: dict) -> dict:
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                    "HttpConnectionManager",
           "stat_prefix": "bench", "codec_type": "AUTO",
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    return {"name": f"bench_{port}", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}]}


def start_cpp_pair(stack: Stack, where: Placement) -> None:
    """An Envoy answering every request itself over HTTP/2 (a C++ upstream),
    and a plain Envoy proxy in front of it: one Envoy hop with no Python."""
    stack.cpp_upstream_port, stack.cpp_front_port = free_port(), free_port()
    upstream = {"static_resources": {"listeners": [_plain_listener(stack.cpp_upstream_port, {
        "match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "x" * 64}}})]}}
    h2 = {"@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
          "explicit_http_config": {"http2_protocol_options": {}}}
    endpoint = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                            "port_value": stack.cpp_upstream_port}}}}
    front = {"static_resources": {
        "listeners": [_plain_listener(stack.cpp_front_port, {"match": {"prefix": "/"}, "route": {"cluster": "cpp"}})],
        "clusters": [{"name": "cpp", "type": "STATIC",
                      "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": h2},
                      "load_assignment": {"cluster_name": "cpp", "endpoints": [{"lb_endpoints": [endpoint]}]}}]}}
    for name, bootstrap, port, cpus in (("cpp-upstream", upstream, stack.cpp_upstream_port, where.service_cpus),
                                        ("cpp-front", front, stack.cpp_front_port, where.gateway_cpus)):
        path, log = stack.work / f"{name}.json", stack.work / f"{name}.log"
        path.write_text(json.dumps(bootstrap))
        process = subprocess.Popen(envoy_command(path, cpus=cpus), stdout=subprocess.DEVNULL, stderr=log.open("wb"),
                                   preexec_fn=pinned_to(cpus))
        setattr(stack, name.replace("-", "_"), process)
        wait_for_http(port, process, log)


def time_round(run: Runner, count: int, envoy_pid: int | None, query_pid: int | None, into: Measured) -> None:
    envoy0, query0 = cpu_seconds(envoy_pid), cpu_seconds(query_pid)
    samples = run(count)
    envoy1, query1 = cpu_seconds(envoy_pid), cpu_seconds(query_pid)
    into.samples += samples
    into.p50s.append(percentile(samples, 0.5) * 1e3)
    calls = count + WARMUP
    if envoy0 is not None and envoy1 is not None:
        into.envoy_cpu.append((envoy1 - envoy0) / calls * 1e6)
    if query0 is not None and query1 is not None:
        into.query_cpu.append((query1 - query0) / calls * 1e6)


def measure(stack: Stack, in_process_port: int) -> dict[str, Measured]:
    # The token as call metadata, as h2load and the REST clients send it (a Python client
    # interceptor would add its own ~0.04 ms to the gRPC rows only).
    auth = (("authorization", bearer()),)
    channel = grpc.insecure_channel(f"127.0.0.1:{stack.query_port}")
    stub = query_pb2_grpc.QueryServiceStub(channel)
    persona = stub.CreatePersona(query_pb2.CreatePersonaRequest(persona=pb.Persona(display_name="Bench")), metadata=auth,
                                 wait_for_ready=True, timeout=READY_SECONDS)
    request = query_pb2.GetPersonaRequest(persona_id=persona.persona_id)
    rest_path = f"/v1/personas/{persona.persona_id}"
    proxied_channel = grpc.insecure_channel(f"127.0.0.1:{stack.gateway_port}")
    proxied_stub = query_pb2_grpc.QueryServiceStub(proxied_channel)
    in_process_channel = grpc.insecure_channel(f"127.0.0.1:{in_process_port}")
    in_process_stub = query_pb2_grpc.QueryServiceStub(in_process_channel)
    in_process_request = query_pb2.GetPersonaRequest(persona_id=in_process_stub.CreatePersona(
        query_pb2.CreatePersonaRequest(persona=pb.Persona(display_name="Bench")), timeout=10, metadata=auth).persona_id)
    lean, minimal = LeanHttpClient(stack.gateway_port), LeanHttpClient(stack.minimal_port)
    stdlib = http.client.HTTPConnection("127.0.0.1", stack.gateway_port)

    def rest_via(client: LeanHttpClient) -> Callable[[], None]:
        def call() -> None:
            status, body = client.get(rest_path)
            assert status == 200 and json.loads(body)["personaId"] == persona.persona_id, (status, body)
        return call

    def rest_stdlib() -> None:
        stdlib.request("GET", rest_path, headers={"authorization": bearer()})
        response = stdlib.getresponse()
        assert response.status == 200 and json.loads(response.read())["personaId"] == persona.persona_id

    def local_reply() -> None:
        assert lean.get("/healthz")[0] == 200

    envoy, minimal_envoy, query = stack.envoy_pid, stack.minimal.pid, stack.query.pid
    rows: dict[str, tuple[Runner, int | None, int | None]] = {
        DIRECT: (python_runner(lambda: stub.GetPersona(request, timeout=5, metadata=auth)), None, query),
        REST: (python_runner(rest_via(lean)), envoy, query),
        REST_STDLIB: (python_runner(rest_stdlib), envoy, query),
        REST_MINIMAL: (python_runner(rest_via(minimal)), minimal_envoy, query),
        PROXIED: (python_runner(lambda: proxied_stub.GetPersona(request, timeout=5, metadata=auth)), envoy, query),
        LOCAL_REPLY: (python_runner(local_reply), envoy, None),
        LOCAL_REPLY_IDLE: (python_runner(local_reply, idle=IDLE_SECONDS), envoy, None),
        IN_PROCESS: (python_runner(lambda: in_process_stub.GetPersona(in_process_request, timeout=5, metadata=auth)), None, None),
    }
    if shutil.which("h2load"):
        grpc_body = stack.work / "get-persona.grpc"
        message = request.SerializeToString()
        grpc_body.write_bytes(b"\0" + struct.pack(">I", len(message)) + message)  # gRPC length-prefixed frame
        grpc_args = ("-d", str(grpc_body), "-H", "content-type: application/grpc", "-H", "te: trailers")
        method = "/visage.v1.QueryService/GetPersona"
        log = stack.work / "h2load.log"
        rows[C_DIRECT] = (h2load_runner(f"http://127.0.0.1:{stack.query_port}{method}", log, *grpc_args), None, query)
        rows[C_REST] = (h2load_runner(f"http://127.0.0.1:{stack.gateway_port}{rest_path}", log, "--h1"), envoy, query)
        rows[C_PROXIED] = (h2load_runner(f"http://127.0.0.1:{stack.gateway_port}{method}", log, *grpc_args),
                           envoy, query)
        rows[C_CPP_DIRECT] = (h2load_runner(f"http://127.0.0.1:{stack.cpp_upstream_port}/", log, "--h1"), None, None)
        rows[C_CPP_PROXIED] = (h2load_runner(f"http://127.0.0.1:{stack.cpp_front_port}/", log, "--h1"),
                               stack.cpp_front.pid, None)

    results = {name: Measured() for name in rows}
    names = list(rows)
    for round_index in range(ROUNDS):
        for name in names[round_index:] + names[:round_index]:
            run, envoy_pid, query_pid = rows[name]
            time_round(run, REQUESTS // ROUNDS, envoy_pid, query_pid, results[name])
    for client in (lean, minimal, stdlib):
        client.close()
    for open_channel in (channel, proxied_channel, in_process_channel):
        open_channel.close()
    return results


def verdict(added: float) -> str:
    return f"{added:.3f} ms (target <= {TARGET_ADDED_MS} ms: {'met' if added <= TARGET_ADDED_MS else 'NOT met'})"


def report(where: Placement, results: dict[str, Measured]) -> str:
    """Prints one placement's table and breakdown; returns its verdict line."""
    print(f"\n== {where.name}")
    print(f"GetPersona on loopback: {ROUNDS} rounds x {REQUESTS // ROUNDS} sequential calls per path, "
          f"one keep-alive connection; p50 = median of the per-round p50s")
    print(f"{'path':<34}{'p50 ms':>8}{'p99 ms':>8}{'req/s':>8}{'envoy us/call':>15}{'query us/call':>15}")

    def cpu(values: list[float]) -> str:
        return f"{statistics.median(values):>15.0f}" if values else f"{'-':>15}"

    for name in (n for n in ORDER if n in results):
        m = results[name]
        rate = f"{'-':>8}" if name == LOCAL_REPLY_IDLE else f"{len(m.samples) / sum(m.samples):>8.0f}"
        print(f"{name:<34}{m.p50:>8.3f}{percentile(m.samples, 0.99) * 1e3:>8.3f}{rate}"
              f"{cpu(m.envoy_cpu)}{cpu(m.query_cpu)}")

    direct, rest = results[DIRECT], results[REST]
    rate_ratio = (len(rest.samples) / sum(rest.samples)) / (len(direct.samples) / sum(direct.samples))
    python_added = rest.p50 - direct.p50
    ratios = f"p50 ratio gateway/direct {rest.p50 / direct.p50:.2f}x; req/s ratio {rate_ratio:.2f}x"
    if C_DIRECT in results:
        judged = (f"added latency at p50 ({C_REST} - {C_DIRECT}): "
                  f"{verdict(results[C_REST].p50 - results[C_DIRECT].p50)}")
        print(judged)
        print(f"  with Python clients ({REST} - {DIRECT}): {python_added:.3f} ms, not judged: "
              f"two different clients; {ratios}")
    else:
        judged = f"added latency at p50 ({REST} - {DIRECT}): {verdict(python_added)}"
        print(f"{judged}; {ratios}")
        print("  (install h2load, Debian nghttp2-client, to measure with C clients on both sides)")

    proxied, local = results[PROXIED].p50, results[LOCAL_REPLY].p50
    breakdown = [
        ("gateway features + launch (REST - REST via minimal config)", rest.p50 - results[REST_MINIMAL].p50),
        ("proxy hop, same grpcio client (gRPC via Envoy - direct)", proxied - direct.p50),
        ("lean REST client + transcoding vs grpcio client (REST - gRPC via Envoy)", rest.p50 - proxied),
        ("client + Envoy, no upstream (/healthz back to back)", local),
        ("client + Envoy waking after 1 ms idle (/healthz idle - back to back)", results[LOCAL_REPLY_IDLE].p50 - local),
        ("Python http.client instead of the lean client", results[REST_STDLIB].p50 - rest.p50),
        ("query service inside the bench process (old baseline - direct)", results[IN_PROCESS].p50 - direct.p50),
    ]
    if C_DIRECT in results:
        breakdown.append(("proxy hop with a C client (gRPC via Envoy - direct, h2load)",
                          results[C_PROXIED].p50 - results[C_DIRECT].p50))
        breakdown.append(("one Envoy hop, no Python between its halves (C++ upstream via Envoy - direct)",
                          results[C_CPP_PROXIED].p50 - results[C_CPP_DIRECT].p50))
    print("breakdown at p50 (ms):")
    for label, value in breakdown:
        print(f"  {label:<80}{value:+.3f}")
    return f"{where.name}:\n  {judged}"


def run(where: Placement) -> dict[str, Measured]:
    """Starts every process in this placement, measures every path, stops them."""
    everywhere = frozenset(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        stack = start_query_service(work, where)
        try:
            start_gateway(stack, where)
            start_minimal_envoy(stack, where)
            if shutil.which("h2load"):
                start_cpp_pair(stack, where)
            placement.pin_this_process(where.gateway_cpus)  # the clients (and h2load) sit with the gateway
            store = SqliteStore(work / "in-process.db")
            store.migrate()
            in_process = query_server.start(Config(data_dir=work), store, "127.0.0.1:0")
            try:
                return measure(stack, in_process.port)
            finally:
                in_process.stop(grace=0)
                store.close()
        finally:
            placement.pin_this_process(everywhere)
            stack.stop()


def main() -> None:
    verdicts = [report(where, run(where)) for where in placements()]
    print("\nREST through the gateway vs direct gRPC, by CPU placement:")
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
