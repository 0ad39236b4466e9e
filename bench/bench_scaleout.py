"""Scale-out bench (issue 15), measured on the real Cassandra of `make cassandra-start`
(127.0.0.1:9142, a keyspace of its own, dropped afterwards), with data generated in bulk
(the rows ingest and labelling write, many requests in flight; one BELONGS label per persona):
1. label -> new active version: the trainer service in-process, its default debounce
   (target < 30 s at 1M faces / 10k personas), for every one-label change of 2.
2. Re-classification by long-lived worker processes (classifier replicas, each remembering the
   shards it passed over) sharing 64 shards, in this order: the first classification (version 1,
   worker A, no verdicts yet); BENCH_ROUNDS one-label changes (a new version each, A:
   incremental); full re-classifications by A, then by A and B (an operator's run: every face
   evaluated, changed-only writes); BENCH_ROUNDS one-label changes (A and B: incremental).
   Each: effective faces/s (faces / wall time of the whole job; target >= 100k faces/s after a
   one-label change), the faces the model ran on and the rows written, counted at the driver;
   the 2-vs-1 scaling ratios and incremental vs full.
3. ListUnknownFaces page latency through the query service (p50/p90 of page 1 and the next;
   every 10th face is a stranger no version knows), after the re-classifications, each of
   BENCH_ROUNDS rounds of 10 pages.
4. The ceiling: the active version's Predictor alone on 100k embeddings in memory (no store),
   i.e. the most a re-classification that computes every face's verdict can do on these cores;
   BENCH_ROUNDS times.
Repeated figures (bench.rounds) show min / median / max. Single runs, said so in the table: the
bulk generation, the first classification and the two full re-classifications (each as long as
all the rest, at 1M faces; and a first classification happens once). The one-label rounds run in
two blocks, 1 worker then 2, not alternated: a replica's memory of a shard holds only while no
other replica wrote the shard, so interleaving 1- and 2-worker runs would measure lost memory.

    python -m bench.bench_scaleout --faces 50000     # a smaller run (default: BENCH_SCALEOUT_FACES or 1M)
"""
from __future__ import annotations

import argparse
import io
import itertools
import multiprocessing
import os
import re
import socket
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cassandra.concurrent import execute_concurrent, execute_concurrent_with_args
from cassandra.query import BatchStatement, BatchType, BoundStatement, Statement
from cassandra.util import uuid_from_time
from PIL import Image

from bench.rounds import ROUNDS, alternating, by_figure, load_average, ratios, spread
from visage.auth import client as auth_client
from visage.config import CassandraConfig, Config
from visage.store.base import StoreUnavailable
from visage.store.cassandra import CassandraStore, _bucket
from visage.store.records import FaceRecord, LabelRecord, UnknownFaceKey
from visage.v1 import query_pb2, query_pb2_grpc
from visage.v1 import resources_pb2 as pb
from visage_classifier.models import ActiveModel
from visage import metrics
from visage_classifier.incremental import ReclassifyMemory
from visage_classifier.reclassify import TERMINAL, Run, SharedWork, follow
from visage_trainer.server import start as start_trainer
from visage_trainer.training import TrainerSettings

CASSANDRA_PORT = int(os.environ.get("VISAGE_TEST_CASSANDRA_PORT", "9142"))
FACES_PER_IMAGE = 10
FACES_PER_PERSONA = 100  # 1M faces: 10k personas
STRANGER_EVERY = 10  # every 10th face is a stranger seen once (unknown to every version): 10 % unknown faces
LATE_LABELS = 3  # labels written through the store one by one: versions 1, 2 and 3
CHIP_SIZE = 150  # the face pipeline's crop (visage.faces.pipeline.CHIP_SIZE; not imported: it loads dlib)
FIVE_LANDMARKS = [(10.0, 12.0), (26.0, 12.0), (18.0, 20.0), (12.0, 28.0), (24.0, 28.0)]


def cassandra_config(keyspace: str) -> CassandraConfig:
    return CassandraConfig(contact_points=("127.0.0.1",), port=CASSANDRA_PORT, keyspace=keyspace)


def bulk(store: CassandraStore, cql: str, rows: list[tuple]) -> None:
    execute_concurrent_with_args(store._session, store._stmt(cql), rows, concurrency=128, raise_on_first_error=True)


def run_all(store: CassandraStore, statements: Iterable[Statement]) -> None:
    """Bound statements and single-partition batches, many in flight (as the store's bulk writes).
    Built first, here: the driver pulls from a generator on its event loop thread, where
    preparing a statement would wait for that very loop."""
    statements = list(statements)
    for ok, result in execute_concurrent(store._session, [(statement, None) for statement in statements],
                                         concurrency=128, raise_on_first_error=True, results_generator=True):
        pass


def grey_jpeg(width: int, height: int) -> bytes:
    """A real JPEG, encoded as the face pipeline encodes crops (quality 90)."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (128, 128, 128)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def image_batches(statements: Iterable[Statement]) -> Iterator[Statement]:
    """The store's per-face batches (face + crop rows), FACES_PER_IMAGE at a time in one unlogged
    batch: the same rows in a tenth of the requests (a bulk load on one node; the store itself
    never batches across partitions), and its faces_by_image batches as they are."""
    group = BatchStatement(BatchType.UNLOGGED)
    for statement in statements:
        if not isinstance(statement, BatchStatement) or len(statement) != 2:
            yield statement
            continue
        for prepared, query_id, values in statement._statements_and_parameters:
            group._add_statement_and_params(prepared, query_id, values)
        if len(group) == 2 * FACES_PER_IMAGE:
            yield group
            group = BatchStatement(BatchType.UNLOGGED)
    if len(group):
        yield group


def event_rows(type: int, stamped: list[tuple[float, str, dict[str, str]]]) -> list[tuple]:
    """events_by_minute rows of first copies (origin null), as append_event writes them."""
    rows = []
    for at, subject, attributes in stamped:
        event_id = uuid_from_time(at)
        rows.append((_bucket(event_id), event_id, None, type, subject, attributes))
    return rows


def event_writes(store: CassandraStore, rows: list[tuple]) -> Iterator[Statement]:
    yield from store._bound("INSERT INTO {ks}.event_buckets (shard, bucket) VALUES (0, ?)",
                            [(bucket,) for bucket in sorted({row[0] for row in rows})])
    yield from store._batches("INSERT INTO {ks}.events_by_minute (bucket, id, origin, type, subject, attributes) "
                              "VALUES (?, ?, ?, ?, ?, ?)", rows, partition=lambda row: row[0])


def generate(store: CassandraStore, faces: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Personas, images of FACES_PER_IMAGE faces (a persona's or a stranger's) and one BELONGS
    label per persona, in bulk
    (but the last LATE_LABELS, which Trainer.label_to_active writes through the store). The rows are the
    ones the services write - ingest's image, chunk, face, crop and index rows (the store's
    own statements), IMAGE_INGESTED, PERSONA_CREATED and FACE_LABELLED events - but written
    many at a time as plain inserts (no conditional image insert or label batch: nothing races
    here). Crops and image bytes are small real JPEGs. Returns the persona ids and the face
    ids of the labelled faces (in persona order)."""
    rng = np.random.default_rng(seed)
    personas = max(2, faces // FACES_PER_PERSONA)
    centres = rng.normal(scale=0.9 / np.sqrt(2 * 128), size=(personas, 128)).astype(np.float32)
    persona_ids = [f"{k:016x}" for k in range(personas)]
    crop, content = grey_jpeg(CHIP_SIZE, CHIP_SIZE), grey_jpeg(160, 120)
    now = time.time()
    bulk(store, "INSERT INTO {ks}.personas (persona_id, display_name, create_time, update_time) VALUES (?, ?, ?, ?)",
         [(p, f"persona {k}", now, now) for k, p in enumerate(persona_ids)])
    run_all(store, event_writes(store, event_rows(pb.EVENT_TYPE_PERSONA_CREATED,
                                                  [(now, p, {}) for p in persona_ids])))
    day = int(now // 86400)
    store._run("INSERT INTO {ks}.days (kind, day) VALUES ('images', ?)", (day,))
    labelled: list[str] = []
    index_keys: dict[str, UnknownFaceKey] = {}  # the labelled faces' unknown-faces index keys
    step = 50_000
    for start_row in range(0, faces, step):
        count = min(step, faces - start_row)
        k = np.arange(start_row, start_row + count)
        stranger = k % STRANGER_EVERY == STRANGER_EVERY - 1
        known = k - k // STRANGER_EVERY  # the face's place among the personas' faces
        rows = centres[known % personas] + rng.normal(scale=0.3 / np.sqrt(128), size=(count, 128)).astype(np.float32)
        rows[stranger] = rng.normal(scale=0.9 / np.sqrt(2 * 128), size=(int(stranger.sum()), 128))
        created = time.time()
        images = [(f"{n // FACES_PER_IMAGE:064x}", created + n * 1e-6)
                  for n in range(start_row, start_row + count, FACES_PER_IMAGE)]
        face_records = []
        for i in range(count):
            image_id, idx = f"{(start_row + i) // FACES_PER_IMAGE:064x}", (start_row + i) % FACES_PER_IMAGE
            face_records.append(FaceRecord(f"{image_id}-{idx}", image_id, idx, (40 * idx, 40, 40 * idx + 36, 76),
                                           FIVE_LANDMARKS, rows[i], crop, created))
            if not stranger[i] and known[i] < personas:  # each persona's first face
                labelled.append(face_records[-1].face_id)
        image_time = dict(images)
        unknown = [UnknownFaceKey(image_time[f.image_id], f.image_id, f.index, f.face_id) for f in face_records]
        labelled_so_far = set(labelled)
        index_keys.update((key.face_id, key) for key in unknown if key.face_id in labelled_so_far)
        run_all(store, itertools.chain(
            store._unknown_rows(unknown),  # a new face is unknown until labelled or predicted (as put_image)
            store._bound("INSERT INTO {ks}.image_chunks (image_id, chunk, data) VALUES (?, 0, ?)",
                         [(image_id, content) for image_id, _ in images]),
            image_batches(store._face_writes(face_records)),
            store._batches("INSERT INTO {ks}.images_by_day (day, create_time, image_id) VALUES (?, ?, ?)",
                           [(day, at, image_id) for image_id, at in images], partition=lambda row: row[0])))
        # The commit rows last, then the events (as put_image: dependent rows, image row, event).
        run_all(store, store._bound(
            "INSERT INTO {ks}.images (image_id, filename, content_type, width, height, size_bytes, "
            "face_count, status, create_time, chunk_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
            [(image_id, "bulk.jpg", "image/jpeg", 160, 120, len(content), FACES_PER_IMAGE,
              pb.IMAGE_STATUS_FACES_FOUND, at) for image_id, at in images]))
        run_all(store, event_writes(store, event_rows(pb.EVENT_TYPE_IMAGE_INGESTED, [
            (at, image_id, {"face_count": str(FACES_PER_IMAGE)}) for image_id, at in images])))
        print(f"  generated {start_row + count:,} of {faces:,} faces "
              f"({(start_row + count) / (time.time() - now):,.0f} faces/s)", flush=True)
    bulk(store, "INSERT INTO {ks}.labels_by_persona (persona_id, verdict, face_id) VALUES (?, ?, ?)",
         [(persona_ids[k], pb.VERDICT_BELONGS, face_id) for k, face_id in enumerate(labelled[:-LATE_LABELS])])
    bulk(store, "INSERT INTO {ks}.labels (face_id, persona_id, verdict, labelled_by, create_time) "
                "VALUES (?, ?, ?, 'bench', ?)",
         [(face_id, persona_ids[k], pb.VERDICT_BELONGS, now) for k, face_id in enumerate(labelled[:-LATE_LABELS])])
    # The face's BELONGS cell names the persona: the label stands (as write_label's compare-and-set leaves it).
    bulk(store, "INSERT INTO {ks}.face_belongs (face_id, persona_id) VALUES (?, ?)",
         [(face_id, persona_ids[k]) for k, face_id in enumerate(labelled[:-LATE_LABELS])])
    # Labelled faces are known: out of the unknown-faces index, as put_labels would leave them.
    run_all(store, store._unknown_rows([index_keys[face_id] for face_id in labelled[:-LATE_LABELS]], present=False))
    labelled_at = time.time()
    run_all(store, event_writes(store, event_rows(pb.EVENT_TYPE_FACE_LABELLED, [
        (labelled_at, face_id, {"persona_id": persona_ids[k], "verdict": "VERDICT_BELONGS"})
        for k, face_id in enumerate(labelled[:-LATE_LABELS])])))
    return persona_ids, labelled


def wait_active(store, version: int, timeout: float = 900.0) -> None:
    deadline = time.monotonic() + timeout
    while (active := active_or_none(store)) is None or active.version < version:
        if time.monotonic() > deadline:
            raise RuntimeError(f"version {version} not active; jobs {store.list_training_jobs(3)}")
        time.sleep(0.05)


def active_or_none(store):
    """The active version; None while the node is too busy to say (the trainer, in this process,
    reads every label with many requests in flight on the same connection)."""
    try:
        return store.active_model_version()
    except StoreUnavailable:
        return None


class Trainer:
    """The trainer service in-process (its default debounce), woken by labels written through the store."""

    def __init__(self, store: CassandraStore):
        self.store = store
        self._tmp = tempfile.TemporaryDirectory()
        self.service = start_trainer(Config(data_dir=Path(self._tmp.name)), store, "127.0.0.1:0",
                                     TrainerSettings.from_env())

    def label_to_active(self, face_id: str, persona_id: str) -> float:
        """Seconds from one more BELONGS label to the version trained on it being active."""
        active = self.store.active_model_version()
        began = time.perf_counter()
        self.store.put_label(LabelRecord(face_id, persona_id, pb.VERDICT_BELONGS))
        wait_active(self.store, (active.version if active else 0) + 1)
        return time.perf_counter() - began

    def stop(self) -> None:
        self.service.stop(0)
        self._tmp.cleanup()


WRITE = re.compile(r"^\s*(?:INSERT\s+INTO|UPDATE|DELETE\b.*?\bFROM)\s+(?:\w+\.)?(\w+)", re.IGNORECASE | re.DOTALL)


class WriteCounter:
    """Rows a process writes, by table, counted at the driver: every INSERT, UPDATE and DELETE
    statement, alone or in a batch, whichever store method sends it (so a change of the
    prediction write path is measured as it is)."""

    def __init__(self, session):
        self.rows: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._prepared = session.cluster._prepared_statements  # query id -> PreparedStatement
        send = session.execute_async

        def counting(query, *args, **kwargs):
            self._count(query)
            return send(query, *args, **kwargs)
        session.execute_async = counting  # Session.execute and execute_concurrent go through it

    def _count(self, query) -> None:
        if isinstance(query, BatchStatement):
            cqls = [self._prepared[statement].query_string if prepared else statement
                    for prepared, statement, _ in query._statements_and_parameters]
        elif isinstance(query, BoundStatement):
            cqls = [query.prepared_statement.query_string]
        else:
            cqls = [getattr(query, "query_string", query)]
        tables = [match.group(1) for cql in cqls if (match := WRITE.match(str(cql)))]
        with self._lock:
            self.rows.update(tables)


def worker(keyspace: str, shards: int, commands, results) -> None:
    """One classifier replica (a separate process: its own interpreter, session and memory of
    the shards it passed over) doing the jobs it is sent, as `(job, incremental)`, until None."""
    store = CassandraStore(cassandra_config(keyspace))
    try:
        writes = WriteCounter(store._session)
        models, memory = ActiveModel(store), ReclassifyMemory.from_env()
        results.put("ready")
        while (command := commands.get()) is not None:
            job, incremental = command
            writes.rows.clear()
            predicted = metrics.FACES_PREDICTED._value.get()
            run = Run(store, models.refresh(), work=SharedWork(shards=shards, poll_seconds=0.05), job=job,
                      memory=memory, incremental=incremental)
            began = time.time()
            run.start()
            final = list(follow(run, lambda: True))[-1]
            assert final.state in TERMINAL, final
            results.put((began, time.time(), final.done, dict(writes.rows),
                         int(metrics.FACES_PREDICTED._value.get() - predicted)))
    finally:
        store.close()


@dataclass
class Reclassified:
    what: str
    workers: int
    faces: int
    seconds: float
    rows: Counter  # rows written by all workers, by table
    predicted: int  # faces the model ran on, all workers

    @property
    def rate(self) -> float:
        return self.faces / self.seconds

    def rows_text(self) -> str:
        predictions = sum(n for table, n in self.rows.items() if table not in JOB_TABLES)
        return f"{predictions:,} rows ({', '.join(f'{t} {n:,}' for t, n in self.rows.most_common(4))})"


JOB_TABLES = {"work_shards", "events_by_minute", "event_buckets", "meta"}  # the job's own bookkeeping


class Replicas:
    """Long-lived worker processes (classifier replicas), so each keeps what it remembers
    between jobs, as a running classifier does."""

    def __init__(self, keyspace: str, count: int, shards: int):
        context = multiprocessing.get_context("spawn")
        self.shards = shards
        self._results = context.Queue()
        self._commands = [context.Queue() for _ in range(count)]
        self._processes = [context.Process(target=worker, args=(keyspace, shards, commands, self._results))
                           for commands in self._commands]
        for process in self._processes:
            process.start()
        for _ in self._processes:
            assert self._results.get(timeout=600) == "ready"

    def reclassify(self, what: str, workers: int, incremental: bool) -> Reclassified:
        """One job of the active version shared by the first `workers` replicas."""
        job = f"bench-{uuid.uuid4().hex[:8]}"
        for commands in self._commands[:workers]:
            commands.put((job, incremental))
        finished = [self._results.get(timeout=3600) for _ in range(workers)]
        began, ended = min(r[0] for r in finished), max(r[1] for r in finished)
        rows = sum((Counter(r[3]) for r in finished), Counter())
        return Reclassified(what, workers, finished[0][2], ended - began, rows, sum(r[4] for r in finished))

    def stop(self) -> None:
        for commands in self._commands:
            commands.put(None)
        for process in self._processes:
            process.join()


def unknown_page_latency(store: CassandraStore, pages: int = 10) -> dict[str, list[float]]:
    """{first_p50, first_p90, next_p50, next_p90: [ms, each round]}: ROUNDS rounds of `pages`
    first pages, each followed by its next page, through one query service."""
    from visage_query.server import start as start_query
    with tempfile.TemporaryDirectory() as tmp:
        service = start_query(Config(data_dir=Path(tmp)), store, "127.0.0.1:0")
        try:
            with auth_client.channel(f"127.0.0.1:{service.port}") as channel:
                stub = query_pb2_grpc.QueryServiceStub(channel)
                return by_figure(alternating({"pages": lambda: page_round(stub, pages)})["pages"])
        finally:
            service.stop(0)


def page_round(stub, pages: int) -> dict[str, float]:
    first, next_ = [], []
    for _ in range(pages):
        began = time.perf_counter()
        page = stub.ListUnknownFaces(query_pb2.ListUnknownFacesRequest(page_size=50))
        first.append(time.perf_counter() - began)
        if page.next_page_token:
            began = time.perf_counter()
            stub.ListUnknownFaces(query_pb2.ListUnknownFacesRequest(page_size=50, page_token=page.next_page_token))
            next_.append(time.perf_counter() - began)
    return {"first_p50": ms(first, 50), "first_p90": ms(first, 90), "next_p50": ms(next_, 50),
            "next_p90": ms(next_, 90)}


def model_alone_rates(store: CassandraStore, sample: int = 100_000) -> list[float]:
    """Faces/s of the active version's Predictor on embeddings already in memory: the ceiling
    of a re-classification that computes every face's verdict on these cores, whatever the store."""
    batches, rows = [], 0
    for _face_ids, matrix in store.iter_embeddings(8192):
        batches.append(matrix)
        rows += len(matrix)
        if rows >= sample:
            break
    embeddings = np.concatenate(batches)[:sample]
    predictor = ActiveModel(store).refresh()
    predictor.predict(embeddings[:1000])  # warm up the session

    def rate() -> float:
        began = time.perf_counter()
        predictor.predict(embeddings)
        return len(embeddings) / (time.perf_counter() - began)
    return alternating({"model": rate})["model"]


def ms(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q)) * 1000 if samples else float("nan")


def persona_face(known: int) -> str:
    """Face id of the `known`-th persona face generate() writes (every STRANGER_EVERY-th face is a stranger)."""
    k = known + known // (STRANGER_EVERY - 1)
    return f"{k // FACES_PER_IMAGE:064x}-{k % FACES_PER_IMAGE}"


def one_label_changes(store: CassandraStore, persona_ids: list[str]) -> Iterator[tuple[str, str]]:
    """(face, persona) BELONGS labels not written yet: the LATE_LABELS personas' first faces,
    then (a run resumed on its data) personas' second faces."""
    personas = len(persona_ids)
    candidates = [(persona_face(p), persona_ids[p]) for p in range(personas - LATE_LABELS, personas)]
    candidates += [(persona_face(personas + p), persona_ids[p]) for p in range(personas)]
    return ((face, persona) for face, persona in candidates if not store.labels_of_face(face))


def measure_runs(store: CassandraStore, trainer: Trainer, changes: Iterator[tuple[str, str]], replicas: Replicas
                 ) -> list[tuple[float | None, Reclassified]]:
    """The re-classifications, in an order that lets each replica remember what it passed over:
    the first classification (replica A alone, every verdict new); ROUNDS one-label changes (A,
    incremental); full re-classifications by A, then A and B (an operator's run: every face
    evaluated, changed-only writes; B learns its shards); ROUNDS one-label changes (A and B,
    incremental). Returns (label -> active seconds, or None, and the run) for each."""
    measured: list[tuple[float | None, Reclassified]] = []

    def reclassify(what: str, workers: int, incremental: bool, latency: float | None = None) -> float:
        run_ = replicas.reclassify(what, workers, incremental)
        measured.append((latency, run_))
        print(f"  {what}, {workers} worker(s): {run_.rate:,.0f} faces/s, {run_.predicted:,} predicted, "
              f"{run_.rows_text()}; load: {load()}", flush=True)
        return run_.rate

    def one_label_change(workers: int) -> float:
        return reclassify(ONE_LABEL, workers, True, trainer.label_to_active(*next(changes)))

    reclassify(FIRST, 1, incremental=False)
    alternating({"1 worker": lambda: one_label_change(1)})
    reclassify(FULL, 1, incremental=False)
    reclassify(FULL, 2, incremental=False)
    alternating({"2 workers": lambda: one_label_change(2)})
    return measured


FIRST, ONE_LABEL, FULL = "first classification (no verdicts yet)", "after a one-label change", "full re-classification"


def print_runs(runs: list[Reclassified], latencies: list[float]) -> None:
    """Each kind of run (what, workers): faces/s, min / median / max where it ran ROUNDS times."""
    print(f"{'label -> new active version (every one-label change)':<62} {spread(latencies, 1):>24} s {'< 30 s':>12}")
    by_kind: dict[tuple[str, int], list[Reclassified]] = {}
    for run_ in runs:
        by_kind.setdefault((run_.what, run_.workers), []).append(run_)
    for (what, workers), kind in by_kind.items():
        target = ">= 100k/s" if what == ONE_LABEL else ""
        rates = spread([run_.rate for run_ in kind], 0) if len(kind) > 1 else f"{kind[0].rate:,.0f} (single run)"
        print(f"{f'{what}, {workers} worker(s)':<62} {rates:>24} faces/s {target:>10}")
        print(f"{'  faces predicted / rows written (the last run)':<62} "
              f"{spread([run_.predicted for run_ in kind], 0) if len(kind) > 1 else f'{kind[0].predicted:,}':>24} "
              f"/ {kind[-1].rows_text()}")
    rates = {kind: [run_.rate for run_ in runs_] for kind, runs_ in by_kind.items()}
    full_one, full_two = rates[(FULL, 1)][0], rates[(FULL, 2)][0]
    print(f"{f'  scaling 2 vs 1 workers, {FULL} (single runs)':<62} {full_two / full_one:>24.2f}x")
    one, two = rates[(ONE_LABEL, 1)], rates[(ONE_LABEL, 2)]
    print(f"{f'  scaling 2 vs 1 workers, {ONE_LABEL} (round by round)':<62} {spread(ratios(two, one)):>24}x")
    print(f"{f'  {ONE_LABEL} vs full, 1 worker (each round / the full run)':<62} "
          f"{spread([rate / full_one for rate in one]):>24}x")


def run(faces: int, shards: int, keyspace: str = "") -> None:
    try:
        socket.create_connection(("127.0.0.1", CASSANDRA_PORT), timeout=2).close()
    except OSError:
        print(f"no Cassandra on 127.0.0.1:{CASSANDRA_PORT}: run `make cassandra-fetch cassandra-start`")
        return
    reuse = bool(keyspace)  # a run resumed on the data of one that stopped (its keyspace is dropped at the end)
    keyspace = keyspace or f"visage_bench_scaleout_{uuid.uuid4().hex[:8]}"
    store = CassandraStore(cassandra_config(keyspace))
    store.migrate()
    trainer = None
    try:
        began = time.perf_counter()
        if reuse:
            persona_ids = [f"{k:016x}" for k in range(max(2, faces // FACES_PER_PERSONA))]
        else:
            persona_ids, _labelled = generate(store, faces)
        generated = time.perf_counter() - began
        print(f"  generated in {generated:.0f} s; load: {load()}", flush=True)
        trainer = Trainer(store)
        changes = one_label_changes(store, persona_ids)
        if store.active_model_version() is None:
            first = trainer.label_to_active(*next(changes))  # v1: every label but LATE_LABELS - 1
            print(f"  version 1 active after {first:.1f} s", flush=True)
        replicas = Replicas(keyspace, 2, shards)
        try:
            runs = measure_runs(store, trainer, changes, replicas)
        finally:
            replicas.stop()
        latencies = [latency for latency, _ in runs if latency is not None]
        runs = [run_ for _, run_ in runs]
        pages = unknown_page_latency(store)
        print(f"  ListUnknownFaces p50 page 1 {spread(pages['first_p50'], 0)} ms, next {spread(pages['next_p50'], 0)} "
              "ms", flush=True)
        ceiling = model_alone_rates(store)
        print(f"  the model alone (no store) {spread(ceiling, 0)} faces/s; load: {load()}", flush=True)
        made = ("the data of a stopped run" if reuse
                else f"generated in {generated:.0f} s, {faces / generated:,.0f} faces/s, a single run")
        print(f"Cassandra, {faces:,} faces / {len(persona_ids):,} personas ({made}), {shards} shards; "
              f"min / median / max of {ROUNDS} rounds where repeated; at the end {load_average()}:")
        print(f"{'measure':<62} {'measured':>26} {'target':>12}")
        print_runs(runs, latencies)
        print(f"{'the active model alone, in memory, 1 process (ceiling of full)':<62} {spread(ceiling, 0):>24} faces/s")
        print(f"{'  faces re-classified per run':<62} {runs[-1].faces:>24,}")
        print(f"{'ListUnknownFaces page 1, p50 (50 faces), ms':<62} {spread(pages['first_p50'], 0):>24}")
        print(f"{'  p90':<62} {spread(pages['first_p90'], 0):>24}")
        print(f"{'ListUnknownFaces next page, p50, ms':<62} {spread(pages['next_p50'], 0):>24}")
        print(f"{'  p90':<62} {spread(pages['next_p90'], 0):>24}")
        print("(all processes and the Cassandra node share this machine's cores)")
    finally:
        if trainer is not None:
            trainer.stop()
        store._session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=300)
        store.close()


def load() -> str:
    return "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=int(os.environ.get("BENCH_SCALEOUT_FACES", "1000000")))
    parser.add_argument("--shards", type=int, default=64)
    parser.add_argument("--keyspace", default="", help="resume on the data a stopped run (same --faces) left")
    args = parser.parse_args(argv if argv is not None else [])
    run(args.faces, args.shards, args.keyspace)


if __name__ == "__main__":
    import sys

    from bench.__main__ import use_a_bench_issuer
    use_a_bench_issuer()  # as `python -m bench scaleout` does: the query service checks tokens
    main(sys.argv[1:])
