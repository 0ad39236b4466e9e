"""The Cassandra store on a real 3-node Apache Cassandra cluster (127.0.0.1-3, CQL port 9242 on
each, replication factor 3), started by scripts/cassandra.py from this module's fixture (one
already running is used) and stopped at its end whatever happened (VISAGE_TEST_KEEP_CLUSTER=1
leaves it running for the next run). Select it with `-m cassandra_cluster`, leave it out with
`-m "not cassandra_cluster"`.

- The store conformance suite, the replica races (test_store_conformance.py, test_store_races.py:
  several store instances over one keyspace, as service replicas hold them) and the mesh's
  replica test (tests/mesh/test_replicas.py: service processes) run here unchanged: their tests
  are imported below and their fixtures see a keyspace of this cluster (this module overrides
  `cassandra_session_keyspace` and `store_spec`).
- The node-loss test: one node is killed with SIGKILL in the middle of a bulk ingest and a
  labelling burst (and reads), writing goes on while it is down, it is started again, and once
  every client's driver sees it back, every write the store acknowledged is read back at the
  store's consistency (LOCAL_QUORUM / LOCAL_SERIAL): acknowledged must equal found.
"""
from __future__ import annotations

import fcntl
import functools
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

import test_store_conformance
import test_store_races
from store_spec import spec_of
from tests.mesh import test_replicas
from tests.conftest import CASSANDRA_CONNECT_TIMEOUT_S, REPO, migrated_keyspace, missing_prerequisite
from visage.config import CassandraConfig
from visage.store.base import StoreUnavailable
from visage.store.records import FaceRecord, ImageRecord, LabelRecord
from visage.v1 import resources_pb2 as pb

NODES = 3
CLUSTER_PORT = int(os.environ.get("VISAGE_TEST_CASSANDRA_CLUSTER_PORT", "9242"))  # as scripts/cassandra.py
HOSTS = tuple(f"127.0.0.{i}" for i in range(1, NODES + 1))
REPLICATION = "{'class': 'SimpleStrategy', 'replication_factor': 3}"
SCRIPT = REPO / "scripts/cassandra.py"
LOCK = REPO / "build/cassandra-cluster/in-use.lock"  # `bench store --nodes 3` takes it too
# Hang guards only (nothing waits for them to pass): starting three JVMs on 2 shared cores,
# and any one condition the node-loss test waits for.
SCRIPT_TIMEOUT_S = 900
CONDITION_TIMEOUT_S = 600
VICTIM = 3  # the node killed: not the seed (127.0.0.1), so its return needs nothing special

pytestmark = [pytest.mark.cassandra, pytest.mark.cassandra_cluster, pytest.mark.slow,
              pytest.mark.timeout(SCRIPT_TIMEOUT_S + 2 * CONDITION_TIMEOUT_S)]

# ---- the suites run here unchanged ---------------------------------------------------
# Every test of these modules (and the races' `replicas` fixture) becomes a test of this
# module, so the fixtures below, not the single node's, give them their store. The mesh's
# replica test starts two ingest and two classifier replicas and a query service as
# processes over the keyspace (hosts and replication from `cassandra_config`).
for _module in (test_store_conformance, test_store_races, test_replicas):
    globals().update({name: value for name, value in vars(_module).items()
                      if name.startswith("test_") or name == "replicas"})


# A known store defect on more than one replica (reported with issue 23): a conditional write
# (LWT) whose Paxos proposal only some replicas accepted - racing writers contending for one
# partition, or a slow replica - ends in a WriteTimeout of write type CAS (Cassandra's
# StorageProxy.proposePaxos, "timeoutIfPartial"): its outcome is unknown, it may still apply.
# The store raised it as StoreUnavailable without settling it (a SERIAL read would; the store's
# `_cas` now settles some of its conditional writes), so the races below can end with it here,
# never on one node (RF 1: a proposal is accepted or refused whole). That one symptom makes such
# a test an xfail; any other failure still fails it. Remove this once every LWT is settled.
def cas_outcome_unknown(error: BaseException) -> bool:
    while error is not None:
        if "'write_type': 'CAS'" in str(error) or "'write_type': 'CAS'" in str(getattr(error, "details", str)()):
            return True
        error = error.__cause__
    return False


def tolerating_unknown_cas_outcomes(test):
    @functools.wraps(test)  # pytest reads the fixtures from the original's signature
    def run(*args, **kwargs):
        try:
            return test(*args, **kwargs)
        except Exception as e:
            if cas_outcome_unknown(e):
                pytest.xfail(f"known store defect, a contended LWT's unknown outcome raised as unavailable: "
                             f"{str(e)[:300]}")
            raise
    return run


for _name in [n for n in globals() if n.startswith("test_concurrent_") or n == "test_replicas_over_one_cassandra"]:
    globals()[_name] = tolerating_unknown_cas_outcomes(globals()[_name])

# A second known defect on more than one replica (found 2026-12-08, failing 2 of the last 3 runs): swap_meta
# settles a CAS whose outcome is unknown by comparing the stored value with the one it wanted; when its
# write did apply and another writer's swap followed before the settling read, it looks lost and is
# applied again (a counter of 18 swaps reads 19). Needs a writer token in `meta` (as images'
# committed_by). On one node the test stays strict (tests/store/test_store_races.py).
test_concurrent_meta_swaps_each_see_the_value_the_one_before_left = pytest.mark.xfail(
    reason="known store defect: swap_meta's unknown CAS outcome settled by value can apply a swap twice on 3 nodes",
    strict=False)(test_concurrent_meta_swaps_each_see_the_value_the_one_before_left)


def cluster_script(*args: str) -> subprocess.CompletedProcess:
    """scripts/cassandra.py CMD --cluster 3 ARGS (its own hang guards; SCRIPT_TIMEOUT_S above them)."""
    return subprocess.run([sys.executable, str(SCRIPT), *args, "--cluster", str(NODES)], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=SCRIPT_TIMEOUT_S)


@pytest.fixture(scope="module")
def three_nodes():
    """The running cluster (started here unless it runs already); stopped at the end.
    Test runs in one checkout take it in turn (a lock file): one run's stop must not pull
    the cluster from under another's tests."""
    if shutil.which("java") is None:
        missing_prerequisite("no `java` on PATH for the 3-node Cassandra cluster", "apt-get install openjdk-17-jre")
    if not list((REPO / ".tools/cassandra/lib").glob("cassandra-all-*.jar")):
        missing_prerequisite("no Cassandra jars in .tools/cassandra/lib", "make cassandra-fetch")
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("w") as lock:
        waited = time.monotonic()
        fcntl.flock(lock, fcntl.LOCK_EX)  # pytest-timeout is the hang guard
        print(f"3-node cluster lock taken after {time.monotonic() - waited:.1f}s")
        yield from _cluster_up()


def _cluster_up():
    began = time.monotonic()
    try:
        started = cluster_script("start", "--fresh")  # --fresh: only when no node runs
        print(started.stdout)
        if started.returncode != 0:
            pytest.fail(f"the 3-node cluster did not start:\n{started.stdout[-3000:]}", pytrace=False)
        print(f"3-node cluster ready {time.monotonic() - began:.1f}s after the fixture began")
        yield
    finally:
        if os.environ.get("VISAGE_TEST_KEEP_CLUSTER") != "1":
            print(cluster_script("stop").stdout)


@pytest.fixture(scope="module")
def cassandra_session_keyspace(three_nodes):
    """Overrides tests/conftest.py's for this module: a keyspace of replication factor 3 on
    the cluster, migrated once, dropped at the end (tests/conftest.py's `cassandra_config`
    empties it before each test, as it does the single node's)."""
    yield from migrated_keyspace(CassandraConfig(contact_points=HOSTS, port=CLUSTER_PORT, replication=REPLICATION,
                                                 keyspace=f"visage_rf3_{uuid.uuid4().hex[:12]}",
                                                 connect_timeout_seconds=CASSANDRA_CONNECT_TIMEOUT_S))


@pytest.fixture
def store_spec(cassandra_config) -> dict:
    """Overrides tests/store/conftest.py's (SQLite, Cassandra): the cluster only."""
    return spec_of("cassandra", cassandra=cassandra_config)


def test_the_keyspace_is_replicated_on_every_node(store):
    """Each of the three nodes holds a replica of every partition (RF 3 on 3 nodes)."""
    hosts = store._cluster.metadata.all_hosts()
    assert sorted(h.address for h in hosts) == list(HOSTS) and all(h.is_up for h in hosts)
    keyspace = store._cluster.metadata.keyspaces[store.keyspace]
    assert keyspace.replication_strategy.replication_factor == NODES
    replicas = store._cluster.metadata.get_replicas(store.keyspace, b"any-partition-key")
    assert sorted(h.address for h in replicas) == list(HOSTS)


# ---- a node killed mid-ingest and mid-labelling ------------------------------------
IMAGE_FACES = 2
# Writes acknowledged in each phase before the test moves on (conditions, not durations).
BEFORE = {"image": 10, "label": 6}
WHILE_DOWN = {"image": 20, "label": 12, "read": 10}
AFTER = {"image": 10, "label": 6, "read": 5}
# Ingest stays at most this many faces ahead of labelling (bounds the images to read back).
UNLABELLED_AHEAD = 24


@dataclass
class Op:
    kind: str       # "image", "label" or "read"
    key: str        # image id; face id for a label
    phase: str      # when it was sent (see NodeLoss.phase)
    ok: bool = False
    error: str = ""


@dataclass
class NodeLoss:
    """What the writers and readers did, per phase: "before" the kill, "killed" (the node is
    dead, not every driver has noticed), "down" (every driver has marked it down), "returning"
    (it is being started again), "after" (every driver sees it up again)."""
    phase: str = "before"
    ops: list[Op] = field(default_factory=list)
    images: dict[str, tuple[ImageRecord, bytes, list[FaceRecord]]] = field(default_factory=dict)
    labels: dict[str, LabelRecord] = field(default_factory=dict)
    unlabelled: list[str] = field(default_factory=list)  # faces of acknowledged images, each labelled once
    unexpected: list[str] = field(default_factory=list)  # anything but StoreUnavailable: a failure
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, kind: str, key: str, call) -> bool:
        op = Op(kind, key, self.phase)
        try:
            result = call()
            op.ok = result is not False
        except StoreUnavailable as e:
            op.error = str(e)[:200]
        except Exception as e:  # noqa: BLE001 - recorded, the test fails on it
            op.error = f"{type(e).__name__}: {e}"[:300]
            with self.lock:
                self.unexpected.append(f"{kind} {key} ({op.phase}): {op.error}")
        with self.lock:
            self.ops.append(op)
        return op.ok

    def acknowledged(self, phase: str | None = None) -> Counter:
        with self.lock:
            return Counter(op.kind for op in self.ops if op.ok and (phase is None or op.phase == phase))

    def refused(self, phases: tuple[str, ...] | None = None) -> list[Op]:
        with self.lock:
            return [op for op in self.ops if not op.ok and (phases is None or op.phase in phases)]


def wait_for(what: str, condition, loss: NodeLoss | None = None) -> None:
    """Polls `condition` until true; fails after CONDITION_TIMEOUT_S (a hang guard) or as soon
    as a worker met an unexpected error."""
    began = time.monotonic()
    while not condition():
        if loss is not None and loss.unexpected:
            pytest.fail(f"while waiting for {what}: {loss.unexpected[:5]}")
        if time.monotonic() - began > CONDITION_TIMEOUT_S:
            pytest.fail(f"still waiting for {what} after {CONDITION_TIMEOUT_S}s")
        time.sleep(0.1)


def host_of(store, address: str):
    return next(h for h in store._cluster.metadata.all_hosts() if h.address == address)


def answers_there(store, address: str) -> bool:
    """A query routed to that node (as coordinator) answers."""
    try:
        store._session.execute("SELECT release_version FROM system.local", host=host_of(store, address), timeout=10)
        return True
    except Exception:  # noqa: BLE001 - not back yet
        return False


def photo_bytes(faces_dir: Path) -> list[bytes]:
    """The shared photos up to 64 KB: real JPEG bytes, kept small."""
    photos = [p.read_bytes() for p in sorted(faces_dir.rglob("*.jpg")) if p.stat().st_size <= 64 * 1024]
    assert photos, f"no small photos in {faces_dir}"
    return photos


def new_image(photos: list[bytes], n: int, rng: np.random.Generator) -> tuple[ImageRecord, bytes, list[FaceRecord]]:
    """A distinct image: a shared photo's bytes plus a tail (a JPEG ignores bytes after its end)."""
    import hashlib

    content = photos[n % len(photos)] + f"\nvisage node-loss image {n} {uuid.uuid4().hex}".encode()
    image_id = hashlib.sha256(content).hexdigest()
    image = ImageRecord(image_id, f"node-loss-{n}.jpg", "image/jpeg", 320, 240, len(content), IMAGE_FACES,
                        pb.IMAGE_STATUS_FACES_FOUND)
    faces = [FaceRecord(f"{image_id[:16]}-{i}", image_id, i, (10 + 40 * i, 20, 40 + 40 * i, 60),
                        [(1.0 + i, 2.0)] * 5, rng.standard_normal(128).astype(np.float32),
                        content[64 * i:64 * i + 1024]) for i in range(IMAGE_FACES)]
    return image, content, faces


def test_a_node_killed_mid_ingest_and_labelling_loses_no_acknowledged_write(cassandra_config, faces_dir, capsys):
    from visage.store.cassandra import CassandraStore

    config = cassandra_config
    victim = HOSTS[VICTIM - 1]
    photos = photo_bytes(faces_dir)
    loss = NodeLoss()
    numbers = iter(range(10**9))
    number_lock = threading.Lock()
    stores = [CassandraStore(config) for _ in range(5)]  # two ingest replicas, two labellers, a reader
    admin = stores[2]
    personas = [admin.create_persona(f"node-loss {i}").persona_id for i in range(4)]

    def ingest(store, seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not loss.stop.is_set():
            with loss.lock:
                ahead = len(loss.unlabelled)
            if ahead >= UNLABELLED_AHEAD:
                time.sleep(0.01)
                continue
            with number_lock:
                n = next(numbers)
            image, content, faces = new_image(photos, n, rng)
            if loss.run("image", image.image_id, lambda: store.put_image(image, content, faces)):
                with loss.lock:
                    loss.images[image.image_id] = (image, content, faces)
                    loss.unlabelled.extend(f.face_id for f in faces)
            else:
                with loss.lock:  # refused: kept to check it is all there or not there at all
                    loss.images.setdefault("refused:" + image.image_id, (image, content, faces))

    def label(store, k: int) -> None:
        verdicts = [pb.VERDICT_BELONGS, pb.VERDICT_NOT_BELONGS]
        while not loss.stop.is_set():
            with loss.lock:
                face_id = loss.unlabelled.pop(0) if loss.unlabelled else None
            if face_id is None:
                time.sleep(0.01)
                continue
            record = LabelRecord(face_id, personas[k % len(personas)], verdicts[k % 2], labelled_by="node-loss")
            k += 2
            if loss.run("label", face_id, lambda: store.put_label(record)):
                with loss.lock:
                    loss.labels[face_id] = record

    def read(store) -> None:
        pick = random.Random(5)
        while not loss.stop.is_set():
            with loss.lock:
                known = [key for key in loss.images if not key.startswith("refused:")]
            if not known:
                time.sleep(0.01)
                continue
            image_id = pick.choice(known)
            image, content, faces = loss.images[image_id]

            def read_back() -> bool:
                same = (store.get_image_content(image_id) == content
                        and [f.face_id for f in store.faces_of_image(image_id)] == [f.face_id for f in faces])
                if not same:
                    with loss.lock:
                        loss.unexpected.append(f"read {image_id}: an acknowledged image read back different")
                return same

            loss.run("read", image_id, read_back)

    workers = [threading.Thread(target=ingest, args=(stores[0], 1), daemon=True),
               threading.Thread(target=ingest, args=(stores[1], 2), daemon=True),
               threading.Thread(target=label, args=(stores[2], 0), daemon=True),
               threading.Thread(target=label, args=(stores[3], 1), daemon=True),
               threading.Thread(target=read, args=(stores[4],), daemon=True)]
    began = time.monotonic()

    def reached(phase: str, counts: dict[str, int]):
        return lambda: all(loss.acknowledged(phase)[kind] >= n for kind, n in counts.items())

    try:
        for worker in workers:
            worker.start()
        wait_for("writes before the kill", reached("before", BEFORE), loss)

        killed = cluster_script("kill", "--node", str(VICTIM))
        assert killed.returncode == 0, killed.stdout
        killed_at = time.monotonic()
        loss.phase = "killed"
        wait_for(f"every driver to mark {victim} down", lambda: not any(host_of(s, victim).is_up for s in stores), loss)
        marked_down_s = time.monotonic() - killed_at
        loss.phase = "down"
        wait_for("writes and reads while the node is down", reached("down", WHILE_DOWN), loss)

        loss.phase = "returning"
        restarting_at = time.monotonic()
        started = cluster_script("start")
        assert started.returncode == 0, f"the killed node did not start again:\n{started.stdout[-3000:]}"
        restarted_at = time.monotonic()
        wait_for(f"every driver to see {victim} up and answer a query routed to it",
                 lambda: all(host_of(s, victim).is_up and answers_there(s, victim) for s in stores), loss)
        back_at = time.monotonic()
        restart_s = restarted_at - restarting_at
        loss.phase = "after"
        wait_for("writes and reads after the node's return", reached("after", AFTER), loss)
    finally:
        loss.stop.set()
        for worker in workers:
            worker.join(timeout=120)
        for store in stores:
            store.close()
    assert not any(worker.is_alive() for worker in workers), "a worker did not finish"
    assert not loss.unexpected, loss.unexpected[:10]

    # Every acknowledged write, read back through a new client at the store's consistency.
    reader = CassandraStore(config)
    try:
        acked_images = {k: v for k, v in loss.images.items() if not k.startswith("refused:")}

        def image_found(item) -> bool:
            image_id, (image, content, faces) = item
            stored = reader.get_image(image_id)
            placed = [f.face_id for f in reader.faces_of_image(image_id)]
            got = reader.get_faces([f.face_id for f in faces])
            return (stored is not None and stored.image_id == image_id and stored.face_count == IMAGE_FACES
                    and reader.get_image_content(image_id) == content
                    and placed == [f.face_id for f in faces] == [f.face_id for f in got]
                    and all(np.array_equal(g.embedding, w.embedding) and g.crop_jpeg == w.crop_jpeg
                            for g, w in zip(got, faces)))

        with ThreadPoolExecutor(8) as pool:
            found_images = sum(pool.map(image_found, acked_images.items()))
        stored_labels = reader.labels_of_faces(list(loss.labels))
        by_persona = {(p, v): {l.face_id for l in reader.labels_of_persona(p, v)}
                      for p in personas for v in (pb.VERDICT_BELONGS, pb.VERDICT_NOT_BELONGS)}
        found_labels = sum(
            1 for face_id, record in loss.labels.items()
            if [(l.persona_id, l.verdict, l.labelled_by) for l in stored_labels.get(face_id, [])]
            == [(record.persona_id, record.verdict, "node-loss")]
            and face_id in by_persona[(record.persona_id, record.verdict)])
        events = Counter((e.type, e.subject) for e in reader.read_events("", 1_000_000))
        missing_events = [k for k in acked_images if not events[(pb.EVENT_TYPE_IMAGE_INGESTED, k)]] + \
            [k for k in loss.labels if not events[(pb.EVENT_TYPE_FACE_LABELLED, k)]]
        # A refused ingest may have landed or not (its commit row is conditional and a timeout
        # does not say which), but never halfway: visible means complete.
        landed = landed_silently = 0
        for key, (image, content, faces) in loss.images.items():
            if key.startswith("refused:") and reader.get_image(image.image_id) is not None:
                landed += 1
                landed_silently += not events[(pb.EVENT_TYPE_IMAGE_INGESTED, image.image_id)]
                assert reader.get_image_content(image.image_id) == content
                assert [f.face_id for f in reader.faces_of_image(image.image_id)] == [f.face_id for f in faces]
    finally:
        reader.close()

    acknowledged = len(acked_images) + len(loss.labels)
    found = found_images + found_labels
    refused = loss.refused()
    refused_by_phase = Counter(op.phase for op in refused)
    down = loss.acknowledged("down")
    line = (f"acknowledged {acknowledged}, found {found}, refused {len(refused)}, "
            f"node down for {back_at - killed_at:.1f} s, node seen back")
    details = (f"  ({len(acked_images)} images x {IMAGE_FACES} faces, {len(loss.labels)} labels, "
               f"{sum(1 for op in loss.ops if op.kind == 'read' and op.ok)} reads acknowledged; "
               f"while down: {down['image']} images, {down['label']} labels, {down['read']} reads; "
               f"refused by phase {dict(refused_by_phase)} ({landed} refused ingests landed anyway, "
               f"{landed_silently} of them without IMAGE_INGESTED); "
               f"drivers marked it down {marked_down_s:.1f} s after the kill; the node's start took {restart_s:.1f} s, "
               f"then drivers saw it back in {back_at - restarted_at:.1f} s; test {time.monotonic() - began:.0f} s)")
    with capsys.disabled():
        print(f"\nnode loss: {line}\n{details}")
    for op in refused[:10]:
        print(f"refused: {op.kind} {op.key[:16]} in phase {op.phase}: {op.error}")
    assert found == acknowledged, line
    assert not missing_events, f"events missing for acknowledged writes: {missing_events[:10]}"
    # The cluster kept serving: writes and reads went on while the node was down (WHILE_DOWN
    # of each), and none sent after every driver had marked it down was refused, nor any
    # after every driver saw it back.
    late = loss.refused(("down", "after"))
    assert not late, [(op.kind, op.phase, op.error) for op in late]
