"""Robustness benchmarks (issue #13), each against its baseline in the same run:
1. Idle streams: unary and health p50 of the query service and the classifier
   while 500 idle WatchEvents watchers and 100 idle ClassifyStream client
   streams are open at once, vs none. Target: within 10 % (ratio <= 1.10).
2. Decompression bombs: a victim's Classify p50 (REST through Envoy, its own
   caller address) idle vs while two other callers send bombs as fast as they
   are answered - a PNG whose header says 8000x8000 (over the pixel limit:
   refused from the header), a 63 KB JPEG whose header claims 6000x6000
   (too few bytes for its size: refused from the header since issue 25; it used
   to be decoded until its data ran out) and a complete 6000x6000 JPEG (a
   shared photo upscaled, 2 MB: under the limit, decoded and searched for
   faces). Side by side, in alternating rounds: the gateway of the code before
   (BENCH_ROBUSTNESS_BEFORE, a git revision: default 77b7607, before issue 25
   paced the rate limit's refusals) and the gateway of this tree, both with the
   per-caller image rate limit on (the default); p50 and p95. Target (issue
   25): the victim within 10 % (ratio <= 1.10).
Sizes: BENCH_ROBUSTNESS_CALLS unary calls per side (default 400),
BENCH_ROBUSTNESS_VICTIM_CALLS victim calls per side (default 15),
BENCH_ROBUSTNESS_ROUNDS alternating rounds of each comparison (default 3);
BENCH_ROBUSTNESS_PARTS=streams or =bombs runs one part only; BENCH_ROBUSTNESS_BOMBS=png,forged,complete
(the default: all three) picks the bombs."""
from __future__ import annotations

import base64
import http.client
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from bench import rounds
from visage.auth import client as auth_client
from visage.config import Config
from visage.mesh import start_in_process
from visage.store.sqlite import SqliteStore
from visage.v1 import classify_pb2, classify_pb2_grpc, query_pb2, query_pb2_grpc, resources_pb2
from visage_gateway.limits import CallerRate

REPO = Path(__file__).resolve().parents[1]
FACES_DIR = Path(os.environ.get("VISAGE_FACES_DIR", REPO.parent / "shared/data/faces"))
if not (FACES_DIR / "bbt").is_dir():
    FACES_DIR = Path("/work/shared/data/faces")
CALLS = int(os.environ.get("BENCH_ROBUSTNESS_CALLS", "400"))
VICTIM_CALLS = int(os.environ.get("BENCH_ROBUSTNESS_VICTIM_CALLS", "15"))
ROUNDS = int(os.environ.get("BENCH_ROBUSTNESS_ROUNDS", "3"))
PARTS = os.environ.get("BENCH_ROBUSTNESS_PARTS", "streams,bombs").split(",")
BOMBS = os.environ.get("BENCH_ROBUSTNESS_BOMBS", "png,forged,complete").split(",")
IDLE_WATCHERS, IDLE_CLIENT_STREAMS = 500, 100
BOMBERS = ("127.0.0.11", "127.0.0.12")
BEFORE = os.environ.get("BENCH_ROBUSTNESS_BEFORE", "77b7607")
VICTIM = "127.0.0.10"
VICTIM_INTERVAL = 1 / CallerRate.from_env().per_second  # seconds between the starts of its calls


def warm_p50_ms(call, count: int) -> float:
    """rounds.p50_ms after a warm-up of up to 20 calls."""
    for _ in range(min(20, count)):
        call()
    return rounds.p50_ms(call, count)


def row(name: str, base: float, loaded: float) -> None:
    print(f"| {name:<58} | {base:8.2f} | {loaded:8.2f} | {loaded / base:6.2f}x |", flush=True)


def header(left: str, right: str) -> None:
    print(f"| {'measure (p50, ms)':<58} | {left:>8} | {right:>8} | {'ratio':>7} |")
    print(f"|{'-' * 60}|{'-' * 10}|{'-' * 10}|{'-' * 9}|", flush=True)


# ---- 1. idle streams ------------------------------------------------------------
def idle_streams(mesh) -> None:
    """The target at once: 500 idle WatchEvents watchers and 100 idle
    ClassifyStream streams held together (the in-process mesh serves every
    service from this one process), against the same calls with none; the
    median of ROUNDS alternating rounds."""
    header("none", f"{IDLE_WATCHERS}+{IDLE_CLIENT_STREAMS}")
    query_channel = auth_client.channel(f"127.0.0.1:{mesh.ports['query']}")
    query = query_pb2_grpc.QueryServiceStub(query_channel)
    persona = query.CreatePersona(query_pb2.CreatePersonaRequest(persona=resources_pb2.Persona(display_name="Bench")))
    classifier_channel = auth_client.channel(f"127.0.0.1:{mesh.ports['classifier']}")
    classifier = classify_pb2_grpc.ClassifyServiceStub(classifier_channel)
    embedding = classify_pb2.ClassifyEmbeddingsRequest(embeddings=[classify_pb2.Embedding(values=[0.01] * 128)])

    def classify_embeddings():
        try:
            classifier.ClassifyEmbeddings(embedding, timeout=60)
        except grpc.RpcError as error:  # no model yet: FAILED_PRECONDITION is still a served call
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise

    calls = {
        "query GetPersona": lambda: query.GetPersona(query_pb2.GetPersonaRequest(persona_id=persona.persona_id),
                                                     timeout=60),
        "query health Check": lambda: health_pb2_grpc.HealthStub(query_channel).Check(
            health_pb2.HealthCheckRequest(), timeout=60),
        "classifier ClassifyEmbeddings": classify_embeddings,
        "classifier health Check": lambda: health_pb2_grpc.HealthStub(classifier_channel).Check(
            health_pb2.HealthCheckRequest(), timeout=60),
    }
    idle: dict[str, list[float]] = {name: [] for name in calls}
    loaded: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(ROUNDS):  # alternating, so drift in the shared machine's load hits both sides alike
        for name, call in calls.items():
            idle[name].append(warm_p50_ms(call, CALLS))
        with idle_streams_open(query, classifier):
            for name, call in calls.items():
                loaded[name].append(warm_p50_ms(call, CALLS))
    for name in calls:
        row(name, statistics.median(idle[name]), statistics.median(loaded[name]))
    query_channel.close()
    classifier_channel.close()


@contextmanager
def idle_streams_open(query, classifier) -> Iterator[None]:
    """Opens the idle streams and waits until the services hold each one:
    a watcher's initial metadata, a client stream's answer to one first item
    (after which it sends nothing)."""
    stop = threading.Event()
    first_item = classify_pb2.ClassifyStreamRequest(
        request_id="1", embedding=classify_pb2.Embedding(values=[0.01] * 128))

    def one_item_then_silent():
        yield first_item
        stop.wait()

    watchers = [query.WatchEvents(query_pb2.WatchEventsRequest()) for _ in range(IDLE_WATCHERS)]
    streams = [classifier.ClassifyStream(one_item_then_silent()) for _ in range(IDLE_CLIENT_STREAMS)]
    try:
        for watcher in watchers:
            watcher.initial_metadata()
        for stream in streams:
            next(stream)
        yield
    finally:
        stop.set()
        for stream in [*watchers, *streams]:
            stream.cancel()


# ---- 2. decompression bombs ---------------------------------------------------------
def png_bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (8000, 8000)).save(buffer, format="PNG")  # 64 Mpx in a few KB
    return buffer.getvalue()


def forged_jpeg(width: int = 6000, height: int = 6000) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((256, 256), 64).convert("RGB").save(buffer, format="JPEG", quality=95)
    data = bytearray(buffer.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def large_jpeg(side: int = 6000) -> bytes:
    """A complete side x side JPEG of a shared photo with two faces (upscaled): real work to decode and search."""
    buffer = io.BytesIO()
    Image.open(FACES_DIR / "scenes" / "two_people.jpg").convert("RGB").resize((side, side), Image.BICUBIC).save(
        buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def classify_rest(port: int, source: str, body: bytes) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300, source_address=(source, 0))
    try:
        connection.request("POST", "/v1/images:classify", body=body, headers={
            "content-type": "application/json", "authorization": f"Bearer {os.environ[auth_client.TOKEN_ENV]}"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def body_of(content: bytes) -> bytes:
    return json.dumps({"content": base64.b64encode(content).decode()}).encode()


def victim_under_bombs(port: int, victim: bytes, bomb: bytes | None, count: int,
                       statuses: dict[int, int]) -> list[float]:
    """`count` timed victim calls (after 2 untimed ones) while each bomber sends
    `bomb` from 2 connections at a time; the bombs' answers are counted in `statuses`."""
    stop = threading.Event()

    def bomber(source: str) -> None:
        while not stop.is_set():
            try:
                status = classify_rest(port, source, bomb)
            except OSError as error:  # a connection Envoy closed on a refused upload
                status = type(error).__name__
            statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=bomber, args=(source,), daemon=True)
               for source in BOMBERS for _ in range(2)] if bomb else []
    for thread in threads:
        thread.start()
    try:
        samples = []
        for number in range(count + 2):
            start = time.perf_counter()
            status = classify_rest(port, VICTIM, victim)
            if status != 200:
                raise RuntimeError(f"the victim's Classify answered {status}")
            if number >= 2:
                samples.append((time.perf_counter() - start) * 1000)
            # A caller within its own rate limit, as the UI paces itself: never refused.
            time.sleep(max(0.0, VICTIM_INTERVAL - (time.perf_counter() - start)))
        return samples
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def gateway_package(revision: str, work_dir: Path) -> Path:
    """A folder holding the `visage_gateway` package as it was at `revision` (for PYTHONPATH:
    it comes before the editable install's own)."""
    folder = work_dir / f"gateway-{revision}"
    folder.mkdir()
    archive = subprocess.run(["git", "archive", "--prefix=visage_gateway/", f"{revision}:services/gateway"],
                             cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20, method="inclusive")[18]


def bomb_row(name: str, idle: list[float], loaded: list[float]) -> None:
    print(f"| {name:<66} | {statistics.median(idle):8.0f} | {statistics.median(loaded):8.0f} | "
          f"{statistics.median(loaded) / statistics.median(idle):5.2f}x | {p95(idle):8.0f} | {p95(loaded):8.0f} | "
          f"{p95(loaded) / p95(idle):5.2f}x |", flush=True)


def bombs(mesh, work_dir: Path) -> None:
    sys.path.insert(0, str(REPO / "tests" / "gateway"))
    from gateway_stack import start_gateway

    victim = body_of((FACES_DIR / "presidents" / "obama" / sorted(os.listdir(FACES_DIR / "presidents" / "obama"))[0])
                     .read_bytes())
    before = gateway_package(BEFORE, work_dir)
    quiet = {"VISAGE_GATEWAY_ACCESS_LOG": "0"}
    gateways = {f"before ({BEFORE})": start_gateway(mesh.ports, work_dir / "before", {
                    **quiet, "PYTHONPATH": os.pathsep.join(filter(None, [str(before), os.environ.get("PYTHONPATH")])),
                    # This tree's build (an older package would look for it beside itself).
                    "VISAGE_DESCRIPTOR_SET": str(REPO / "build/visage.pb"),
                    "VISAGE_OPENAPI_JSON": str(REPO / "build/openapi.json")}),
                "now": start_gateway(mesh.ports, work_dir / "now", quiet)}
    per_round = -(-VICTIM_CALLS // ROUNDS)
    try:
        print(f"| {'victim Classify (ms); bomb, gateway':<66} | {'idle p50':>8} | {'bombed':>8} | {'ratio':>6} "
              f"| {'idle p95':>8} | {'bombed':>8} | {'ratio':>6} |")
        print(f"|{'-' * 68}|{'-' * 10}|{'-' * 10}|{'-' * 8}|{'-' * 10}|{'-' * 10}|{'-' * 8}|", flush=True)
        kinds = {"png": ("PNG header 8000x8000 (over the limit)", png_bomb),
                 "forged": ("JPEG header claims 6000x6000, 63 KB of data", forged_jpeg),
                 "complete": ("JPEG 6000x6000, complete (2 MB, under the limit)", large_jpeg)}
        for bomb_name, make_bomb in (kinds[key] for key in BOMBS):
            bomb = make_bomb()
            idle = {name: [] for name in gateways}
            loaded = {name: [] for name in gateways}
            statuses = {name: {} for name in gateways}
            for _ in range(ROUNDS):  # alternating: drift in the shared machine's load hits every side alike
                for name, gateway in gateways.items():
                    idle[name] += victim_under_bombs(gateway.port, victim, None, per_round, {})
                    loaded[name] += victim_under_bombs(gateway.port, victim, body_of(bomb), per_round, statuses[name])
            for name in gateways:
                bomb_row(f"{bomb_name}, {name}", idle[name], loaded[name])
                print(f"|   bomb answers: {statuses[name]}", flush=True)
            print(f"|   load average {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        for gateway in gateways.values():
            gateway.stop()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = Config(data_dir=Path(tmp) / "data")
        config.data_dir.mkdir(parents=True)
        store = SqliteStore(config.sqlite_path)
        store.migrate()
        with start_in_process(config, store) as mesh:
            if "streams" in PARTS:
                print(f"\n1. Idle streams: {IDLE_WATCHERS} WatchEvents watchers (query) and {IDLE_CLIENT_STREAMS} "
                      f"ClassifyStream streams (classifier) open at once, vs none ({ROUNDS} rounds of {CALLS} calls; "
                      "direct gRPC; target ratio <= 1.10; "
                      f"load average {os.getloadavg()[0]:.1f})")
                idle_streams(mesh)
            if "bombs" in PARTS:
                print(f"\n2. Decompression bombs ({VICTIM_CALLS} victim calls per side in {ROUNDS} alternating rounds; "
                      "REST through Envoy; "
                      f"two bombing callers, 2 connections each; load average {os.getloadavg()[0]:.1f})")
                bombs(mesh, Path(tmp))
        store.close()


if __name__ == "__main__":
    main()
