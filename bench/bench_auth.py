"""Identity benchmark (issue 12): what checking a token adds to a unary RPC at
the service. The same QueryServicer is served twice in this process, by
visage.server.build_server (with the auth interceptor) and by a bare
grpc.server (without), on one SQLite store; GetPersona is called on both in
alternating rounds from one client, and the added p50 is the difference
(target: <= 0.1 ms). The breakdown times the check itself in-process: a token
seen before (the verifier's cache) and a fresh one (signature verified)."""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from concurrent import futures
from pathlib import Path

import grpc

from visage.auth.interceptor import AuthInterceptor
from visage.auth.local import LocalIssuer
from visage.auth.roles import Role
from visage.auth.tokens import AuthConfig, TokenVerifier, bearer_token
from visage.config import Config
from visage.server import SERVER_OPTIONS
from visage.store.sqlite import SqliteStore
from visage.v1 import query_pb2, query_pb2_grpc
from visage.v1 import resources_pb2 as pb
from visage_query import server as query_server

CALLS = int(os.environ.get("BENCH_AUTH_CALLS", "2000"))  # per side per round
ROUNDS = 7
TARGET_MS = 0.1


class PassThrough(grpc.ServerInterceptor):
    """Does nothing: what any Python server interceptor costs in gRPC itself."""

    def intercept_service(self, continuation, handler_call_details):
        return continuation(handler_call_details)


def bare_server(servicer, interceptors=()) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), interceptors=list(interceptors),
                         options=SERVER_OPTIONS)
    query_pb2_grpc.add_QueryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def time_calls(call, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def p50_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def rpc_rows(store: SqliteStore, token: str) -> tuple[list[float], list[float], list[float]]:
    """p50s in ms per round: with the auth interceptor, without any, with a pass-through one."""
    checked = query_server.start(Config(data_dir=Path(tempfile.gettempdir())), store, "127.0.0.1:0")
    # GetPersona reads no suggested people: the servicers' default (not started) is enough.
    bare, bare_port = bare_server(query_server.QueryServicer(store=store))
    noop, noop_port = bare_server(query_server.QueryServicer(store=store), [PassThrough()])
    persona = store.create_persona("Bench")
    request = query_pb2.GetPersonaRequest(persona_id=persona.persona_id)
    p50s: tuple[list[float], list[float], list[float]] = ([], [], [])
    try:
        # The same client sending the same token on every side: the difference is the service's.
        auth = (("authorization", f"Bearer {token}"),)
        with grpc.insecure_channel(f"127.0.0.1:{checked.port}") as a, \
                grpc.insecure_channel(f"127.0.0.1:{bare_port}") as b, \
                grpc.insecure_channel(f"127.0.0.1:{noop_port}") as c:
            stubs = [query_pb2_grpc.QueryServiceStub(channel) for channel in (a, b, c)]
            for stub in stubs:  # warm-up (the first call also fills the verifier's cache)
                time_calls(lambda: stub.GetPersona(request, timeout=10, metadata=auth), 200)
            for _ in range(ROUNDS):
                for stub, into in zip(stubs, p50s):
                    into.append(p50_ms(time_calls(lambda: stub.GetPersona(request, timeout=10, metadata=auth), CALLS)))
    finally:
        checked.stop(grace=0)
        bare.stop(0)
        noop.stop(0)
    return p50s


def check_rows(issuer: LocalIssuer) -> dict[str, float]:
    """In-process cost of the check, µs per call."""
    verifier = TokenVerifier(issuer.config)
    interceptor = AuthInterceptor(verifier)
    token = issuer.mint(Role.VIEWER, "bench")
    metadata = (("user-agent", "bench"), ("authorization", f"Bearer {token}"))
    method = "/visage.v1.QueryService/GetPersona"
    interceptor.authorize(method, metadata)
    cached = time_calls(lambda: interceptor.authorize(method, metadata), 20000)
    fresh_tokens = [issuer.mint(Role.VIEWER, f"bench-{i}") for i in range(2000)]
    fresh = [time_calls(lambda t=t: verifier.verify(t), 1)[0] for t in fresh_tokens]
    parse = time_calls(lambda: bearer_token(metadata), 20000)
    return {"header parse": p50_ms(parse) * 1e3, "authorize, token seen before (cache)": p50_ms(cached) * 1e3,
            "verify a new token (Ed25519 signature + claims)": p50_ms(fresh) * 1e3}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="visage-bench-auth-") as tmp:
        issuer = LocalIssuer(AuthConfig.from_env()).ensure()
        store = SqliteStore(Path(tmp) / "bench.db")
        store.migrate()
        token = issuer.mint(Role.VIEWER, "bench", ttl_seconds=3600)
        with_auth, without, pass_through = rpc_rows(store, token)
        breakdown = check_rows(issuer)
        store.close()
    added = [a - b for a, b in zip(with_auth, without)]
    print(f"\nGetPersona at the service, {ROUNDS} rounds x {CALLS} calls per side (target: added p50 <= {TARGET_MS} ms)")
    print(f"{'round':<8}{'with token check ms':>22}{'without ms':>14}{'added ms':>12}{'ratio':>9}")
    for i, (a, b) in enumerate(zip(with_auth, without), 1):
        print(f"{i:<8}{a:>22.3f}{b:>14.3f}{a - b:>12.3f}{a / b:>9.3f}")
    median_added = statistics.median(added)
    verdict = "met" if median_added <= TARGET_MS else "NOT met"
    print(f"added p50 (median of rounds): {median_added:.3f} ms -> target {verdict}")
    print(f"of which gRPC's own cost of any Python server interceptor (a pass-through one): "
          f"{statistics.median([p - b for p, b in zip(pass_through, without)]):.3f} ms")
    print("\nThe check in-process (p50, µs per call)")
    for name, micros in breakdown.items():
        print(f"  {name:<50}{micros:>8.1f}")


if __name__ == "__main__":
    from bench.__main__ import use_a_bench_issuer
    use_a_bench_issuer()
    main()
