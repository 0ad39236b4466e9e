"""Two replicas each of ingest and classifier, and a query service, as separate processes
over one real Cassandra keyspace: the same images ingested through both ingest replicas at
once, racing labels, racing activations, a classifier replica killed while it holds a
re-classification shard. Afterwards every image is stored once, one version is active, each
shard of its re-classification was done exactly once, and every unlabelled face's stored
verdict is the active model's answer."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from visage.loopback import free_ports
from visage.model import OpenSetCentroidClassifier, Predictor, distance_to_confidence, export_onnx
from visage.store.base import PREDICTION_TOLERANCE
from visage.store.cassandra import CassandraStore
from visage.store.records import FaceRecord, ImageRecord, ModelVersionRecord
from visage.v1 import ingest_pb2, ingest_pb2_grpc, query_pb2, query_pb2_grpc
from visage.v1 import resources_pb2 as pb
from visage_classifier.models import predict
from visage_classifier.reclassify import shared_job

pytestmark = pytest.mark.cassandra

SYNTHETIC_FACES = 12_000  # enough for the re-classification to outlast the kill
SHARDS = 16
READY_SECONDS = 180


def start(module: str, port: int, env: dict, log_dir: Path, name: str) -> subprocess.Popen:
    log = (log_dir / f"{name}.log").open("w")
    return subprocess.Popen([sys.executable, "-m", module], env={**env, f"VISAGE_{module[7:].upper()}_PORT": str(port),
                                                                  "VISAGE_REPLICA_ID": name},
                            stdout=log, stderr=subprocess.STDOUT)


def wait_serving(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_SECONDS
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        while True:
            assert process.poll() is None, f"replica on {port} exited"
            try:
                if health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status \
                        == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, f"replica on {port} never served"
            time.sleep(0.5)


def wait_until(condition, what: str, timeout: float = 240.0):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return result


def together(calls):
    barrier = threading.Barrier(len(calls))
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: (barrier.wait(60), call())[1], calls))


def put_synthetic_faces(store, count: int) -> None:
    rng = np.random.default_rng(7)
    for start_row in range(0, count, 500):
        image_id = uuid.uuid4().hex
        faces = [FaceRecord(f"{image_id}-{i}", image_id, i, (0, 0, 9, 9), [],
                            rng.normal(0, 0.1, 128).astype(np.float32)) for i in range(min(500, count - start_row))]
        store.put_image(ImageRecord(image_id, "synthetic", "image/jpeg", 9, 9, 1, len(faces),
                                    pb.IMAGE_STATUS_FACES_FOUND), b"x", faces)


def version_of(store, labelled: dict[str, str]) -> ModelVersionRecord:
    """A centroid model of the labelled faces (face id -> persona id), stored as a candidate."""
    faces = store.get_faces(labelled)
    estimator = OpenSetCentroidClassifier(0.55).fit(np.stack([f.embedding for f in faces]),
                                                    [labelled[f.face_id] for f in faces])
    record = ModelVersionRecord(0, pb.MODEL_STATE_CANDIDATE, "test", float(distance_to_confidence(0.55)),
                                list(estimator.classes_), {}, {})
    return store.put_model_version(record, export_onnx(estimator))


def test_replicas_over_one_cassandra(cassandra_config, tmp_path, faces_dir):
    # The config's nodes and replication: tests/store/test_three_nodes.py runs this on its 3-node cluster.
    env = {**os.environ, "VISAGE_STORE": "cassandra",
           "VISAGE_CASSANDRA_HOSTS": ",".join(cassandra_config.contact_points),
           "VISAGE_CASSANDRA_REPLICATION": cassandra_config.replication,
           "VISAGE_CASSANDRA_PORT": str(cassandra_config.port), "VISAGE_CASSANDRA_KEYSPACE": cassandra_config.keyspace,
           "VISAGE_CASSANDRA_CONNECT_TIMEOUT_SECONDS": str(cassandra_config.connect_timeout_seconds),
           "VISAGE_WORKERS": "1", "VISAGE_METRICS_PORT": "0", "VISAGE_DATA_DIR": str(tmp_path / "data"),
           "VISAGE_RECLASSIFY_SHARDS": str(SHARDS), "VISAGE_RECLASSIFY_LEASE_SECONDS": "3",
           "VISAGE_RECLASSIFY_BATCH_ROWS": "100"}
    names = ["ingest-a", "ingest-b", "classifier-a", "classifier-b", "query"]
    ports = dict(zip(names, free_ports(len(names))))
    modules = {"ingest-a": "visage_ingest", "ingest-b": "visage_ingest", "classifier-a": "visage_classifier",
               "classifier-b": "visage_classifier", "query": "visage_query"}
    processes = {name: start(modules[name], ports[name], env, tmp_path, name) for name in names}
    store, other = CassandraStore(cassandra_config), CassandraStore(cassandra_config)
    channels = {name: grpc.insecure_channel(f"127.0.0.1:{ports[name]}") for name in names}
    try:
        for name in names:
            wait_serving(ports[name], processes[name])
        # The same photos through both ingest replicas at once: each stored once.
        photos = sorted((faces_dir / "bbt").glob("*/*.png"))
        ingest = [ingest_pb2_grpc.IngestServiceStub(channels[n]) for n in ("ingest-a", "ingest-b")]
        face_of = {}
        for photo in photos:
            request = ingest_pb2.IngestImageRequest(content=photo.read_bytes(), filename=photo.name)
            answers = together([lambda stub=stub: stub.IngestImage(request, timeout=120) for stub in ingest])
            assert len({a.image.image_id for a in answers}) == 1 and len(answers[0].faces) == 1
            face_of[photo] = answers[0].faces[0].face_id
        ingested = Counter(e.subject for e in store.read_events("", 100_000) if e.type == pb.EVENT_TYPE_IMAGE_INGESTED)
        assert len(ingested) == store.count_images() and set(ingested.values()) == {1}
        put_synthetic_faces(store, SYNTHETIC_FACES)

        # Labels through the query service; two BELONGS labels of one face race: one stands.
        query = query_pb2_grpc.QueryServiceStub(channels["query"])
        persons = sorted({photo.parent.name for photo in photos})
        personas = {p: query.CreatePersona(query_pb2.CreatePersonaRequest(persona={"display_name": p})).persona_id
                    for p in persons}
        labelled = {}
        for photo in photos:
            face_id = face_of[photo]
            labelled[face_id] = personas[photo.parent.name]
            query.LabelFace(query_pb2.LabelFaceRequest(face_id=face_id, persona_id=labelled[face_id],
                                                       verdict=pb.VERDICT_BELONGS))
        contested = next(iter(labelled))
        rivals = [p for p in personas.values() if p != labelled[contested]][:2]
        together([lambda p=p: query.LabelFace(query_pb2.LabelFaceRequest(face_id=contested, persona_id=p,
                                                                           verdict=pb.VERDICT_BELONGS))
                  for p in rivals])
        standing = [l.persona_id for l in store.labels_of_face(contested) if l.verdict == pb.VERDICT_BELONGS]
        assert len(standing) == 1 and standing[0] in rivals
        labelled[contested] = standing[0]

        # Two versions activated at once from two store instances: one ends up active.
        versions = [version_of(store, labelled).version for _ in range(2)]
        together([lambda s=s, v=v: s.activate_model_version(v) for s, v in zip((store, other), versions)])
        active = [v for v in store.list_model_versions() if v.state == pb.MODEL_STATE_ACTIVE]
        assert len(active) == 1 and active[0].version == store.active_model_version().version
        job = shared_job(active[0].version)

        # Freeze classifier-a while it holds an unfinished shard, then kill it.
        victim = processes["classifier-a"]
        marker = f"-{victim.pid}-"

        def victim_mid_shard() -> bool:
            victim.send_signal(signal.SIGSTOP)
            if any(marker in s.owner and not s.done for s in store.job_shards(job)):
                return True
            victim.send_signal(signal.SIGCONT)
            assert not all(s.done for s in store.job_shards(job)) or len(store.job_shards(job)) < SHARDS, \
                "the re-classification ended before classifier-a could be caught mid-shard"
            return False

        wait_until(victim_mid_shard, "classifier-a to hold an unfinished shard")
        held = [s.shard for s in store.job_shards(job) if marker in s.owner and not s.done]
        victim.kill()
        victim.wait(timeout=60)

        # classifier-b takes the dead replica's shard over when its lease ends and finishes.
        shards = wait_until(lambda: (lambda s: s if len(s) == SHARDS and all(x.done for x in s) else None)(
            store.job_shards(job)), "every shard to be finished")
        assert all(marker not in shards[shard].owner for shard in held)
        unlabelled = store.count_faces() - len(labelled)
        assert sum(s.faces for s in shards) == unlabelled  # every face by exactly one shard
        wait_until(lambda: any(e.type == pb.EVENT_TYPE_PREDICTIONS_WRITTEN and e.subject == str(active[0].version)
                               for e in store.read_events("", 100_000)), "the end of the re-classification")
        predictions = {p.face_id: p for p in store.iter_predictions()}
        assert len(predictions) == unlabelled and not set(predictions) & set(labelled)
        # Every stored verdict is the active model's answer (a shard taken over is evaluated
        # again; what the dead replica had written stands when the answer is the same).
        predictor = Predictor.load(active[0], store.get_model_artifact(active[0].version))
        for face_ids, matrix in store.iter_embeddings():
            keep = [i for i, face_id in enumerate(face_ids) if face_id not in labelled]
            answers = predict(predictor, matrix[keep])
            for i, persona_id, confidence in zip(keep, answers.persona_ids, answers.confidences.tolist()):
                verdict = predictions[face_ids[i]]
                assert verdict.persona_id == persona_id and abs(verdict.confidence - confidence) <= PREDICTION_TOLERANCE
        assert {p.model_version for p in predictions.values()} == {active[0].version}  # none stored before it
        written = [e for e in store.read_events("", 100_000) if e.type == pb.EVENT_TYPE_PREDICTIONS_WRITTEN]
        assert len(written) == 1
    finally:
        for channel in channels.values():
            channel.close()
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        store.close()
        other.close()
