"""The Cassandra store speaks only the CQL that Apache Cassandra, Azure Managed Instance and
Azure Cosmos DB for Apache Cassandra all accept (visage.store.portable_cql), against the real
node. Every test of the suite also fails when the store sends a statement outside that subset
(tests/conftest.py: _cql_stays_portable); these tests check the rules themselves, the store's
source, its schema and protocol, and its answer to Cosmos DB's overload (429)."""
from __future__ import annotations

import ast
import dataclasses
import uuid
from pathlib import Path

import pytest
from cassandra.query import BatchStatement, BatchType

from visage.metrics import STORE_OVERLOADED_RETRIES
from visage.store import portable_cql
from visage.store.base import StoreUnavailable
from visage.store.cassandra import BASELINE, ERASABLE_CONTENT_TABLES, MIGRATIONS, CassandraStore
from visage.store.records import LabelRecord
from visage.v1 import resources_pb2 as pb

from cql_proxy import CqlProxy
from test_store_conformance import make_image

SOURCE = Path(__file__).resolve().parents[2] / "lib/visage/store/cassandra.py"

# What the store sent before it kept to the subset (each refused by Cosmos DB).
REFUSED_BEFORE = [
    "DELETE FROM ks.images WHERE image_id = ? IF EXISTS",
    "UPDATE ks.model_versions SET state = ?, gate_reason = ? WHERE version = ? IF state IN (1, 2, 3, 5)",
    "CREATE TABLE ks.labels (face_id text, persona_id text, belongs text static, PRIMARY KEY ((face_id), persona_id))",
]


@pytest.mark.parametrize("cql", REFUSED_BEFORE)
def test_the_rules_refuse_what_cosmos_db_refuses(cql):
    assert portable_cql.violations(cql)


def test_a_conditional_logged_batch_is_refused():
    label_batch = ["INSERT INTO ks.labels (face_id, persona_id, verdict) VALUES (?, ?, ?)",
                   "UPDATE ks.labels SET belongs = ? WHERE face_id = ? IF belongs = ?"]
    assert len(portable_cql.batch_violations(True, label_batch)) == 2  # logged, and conditional
    assert portable_cql.batch_violations(False, label_batch[:1]) == []


@pytest.mark.parametrize("cql", [
    "INSERT INTO ks.images (image_id) VALUES (?) IF NOT EXISTS",
    "UPDATE ks.meta SET value = ? WHERE key = ? IF value = ?",
    "UPDATE ks.work_shards SET done = true WHERE job = ? AND shard = ? IF owner = ? AND done = false",
    "UPDATE ks.model_versions SET state = ? WHERE version = ? IF EXISTS",
    "DELETE FROM ks.images USING TIMESTAMP 1700000000000000 WHERE image_id = ?",
    "SELECT COUNT(*) FROM ks.faces WHERE token(face_id) >= ? AND token(face_id) < ?",
])
def test_the_rules_let_portable_statements_through(cql):
    assert portable_cql.violations(cql) == []


def _cql_literals(tree: ast.Module) -> list[str]:
    """Every string (f-strings with their fields as `x`) that starts like a CQL statement,
    outside MIGRATIONS: those steps upgrade self-run keyspaces made before schema 8 (a new
    keyspace, as on Cosmos DB, gets BASELINE)."""
    legacy = {id(node) for stmt in tree.body if isinstance(stmt, ast.Assign)
              and any(getattr(t, "id", "") == "MIGRATIONS" for t in stmt.targets) for node in ast.walk(stmt)}
    texts = []
    for node in ast.walk(tree):
        if id(node) in legacy:
            continue
        if isinstance(node, ast.JoinedStr):
            texts.append("".join(v.value if isinstance(v, ast.Constant) else "x" for v in node.values))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            texts.append(node.value)
    return [t for t in texts if t.lstrip().split(" ")[0].upper() in ("SELECT", "INSERT", "UPDATE", "DELETE",
                                                                        "CREATE", "ALTER", "BEGIN")]


def test_every_statement_in_the_store_source_is_portable():
    tree = ast.parse(SOURCE.read_text())
    statements = _cql_literals(tree)
    assert len(statements) > 60  # the scan sees the store's statements
    assert {s: portable_cql.violations(s) for s in statements if portable_cql.violations(s)} == {}
    logged = [node.lineno for node in ast.walk(tree)
              if isinstance(node, ast.Attribute) and node.attr == "LOGGED"]
    assert logged == [], f"BatchType.LOGGED at lines {logged}: Cosmos DB supports unlogged batches only"


def _schema(store: CassandraStore) -> dict:
    rows = store._session.execute("SELECT table_name, column_name, kind, type, clustering_order "
                                  "FROM system_schema.columns WHERE keyspace_name = %s", (store.keyspace,))
    columns = {(r.table_name, r.column_name): (r.kind, r.type, r.clustering_order) for r in rows}
    return {**columns, **_table_options(store)}


def _table_options(store: CassandraStore) -> dict:
    """(table, "options") -> its gc_grace_seconds and compaction: the erasure options are schema too."""
    rows = store._session.execute("SELECT table_name, gc_grace_seconds, compaction FROM system_schema.tables "
                                  "WHERE keyspace_name = %s", (store.keyspace,))
    return {(r.table_name, "options"): ("table", r.gc_grace_seconds, tuple(sorted(r.compaction.items())))
            for r in rows}


def test_a_new_keyspace_gets_the_migrated_schema_within_cosmos_db_limits(cassandra_config):
    """BASELINE (a new keyspace) ends where the migrations end, in at most 25 tables and with no
    static column; the migrations' own path peaks above 25, which is why new keyspaces skip it."""
    stores = {}
    try:
        for path in ("baseline", "steps"):
            config = dataclasses.replace(cassandra_config, keyspace=f"{cassandra_config.keyspace}_{path}")
            store = stores[path] = CassandraStore(config)
            store._session.execute(f"DROP KEYSPACE IF EXISTS {config.keyspace}", timeout=120)
            if path == "steps":
                store.migrate(target=1)
            store.migrate()
            assert store.schema_version() == len(MIGRATIONS)
        baseline = _schema(stores["baseline"])
        assert baseline == _schema(stores["steps"])
        assert len({table for table, _column in baseline}) <= portable_cql.MAX_TABLES
        assert [key for key, (kind, *_rest) in baseline.items() if kind == "static"] == []
        assert {t for t, c in baseline if c == "options" and baseline[t, c][1] == 10800} == set(ERASABLE_CONTENT_TABLES)
        assert sum(1 for step in BASELINE if isinstance(step, str)) + 1 == len({t for t, _c in baseline if _c != "options"})
    finally:
        for store in stores.values():
            store._session.execute(f"DROP KEYSPACE IF EXISTS {store.keyspace}", timeout=120)
            store.close()


@pytest.mark.parametrize("backend", ["apache", "cosmos"])
def test_erasure_table_options_only_where_the_backend_takes_them(cassandra_config, backend, monkeypatch):
    """Apache Cassandra (and Managed Instance): the tables holding erasable content drop erased rows at
    their next compaction, tombstones after VISAGE_CASSANDRA_ERASED_GRACE_SECONDS. Cosmos DB refuses a
    non-zero gc_grace_seconds and runs no compaction: nothing of the kind is sent there."""
    config = dataclasses.replace(cassandra_config, keyspace=f"{cassandra_config.keyspace}_{backend}",
                                 backend=backend, erased_grace_seconds=7200)
    store = CassandraStore(config)
    try:
        store._session.execute(f"DROP KEYSPACE IF EXISTS {config.keyspace}", timeout=120)
        cql_sent, execute = [], store._session.execute
        monkeypatch.setattr(store._session, "execute",
                            lambda query, *args, **kwargs: cql_sent.append(str(query)) or execute(query, *args, **kwargs))
        store.migrate()
        options = {table: (grace, compaction) for (table, _o), (_k, grace, compaction) in _table_options(store).items()}
        tuned = {t for t, (grace, compaction) in options.items()
                 if grace == 7200 and ("provide_overlapping_tombstones", "ROW") in compaction}
        assert tuned == (set(ERASABLE_CONTENT_TABLES) if backend == "apache" else set())
        sent_options = [cql for cql in cql_sent if cql.startswith("ALTER TABLE") and " WITH " in cql]
        assert bool(sent_options) == (backend == "apache"), sent_options
    finally:
        store._session.execute(f"DROP KEYSPACE IF EXISTS {config.keyspace}", timeout=120)
        store.close()


def test_a_backend_not_known_is_refused(cassandra_config):
    with pytest.raises(ValueError, match="VISAGE_CASSANDRA_BACKEND"):
        CassandraStore(dataclasses.replace(cassandra_config, backend="scylla"))


def test_the_store_speaks_protocol_v4_at_the_configured_consistency(cassandra_config):
    config = dataclasses.replace(cassandra_config, consistency="ONE", serial_consistency="SERIAL")
    store = CassandraStore(config)
    try:
        assert store._cluster.protocol_version == portable_cql.PROTOCOL_VERSION
        profile = store._cluster.profile_manager.default
        assert (profile.consistency_level, profile.serial_consistency_level) == (1, 8)  # ONE, SERIAL
    finally:
        store.close()
    with pytest.raises(ValueError, match="LOCAL_QUORUM"):
        CassandraStore(dataclasses.replace(cassandra_config, consistency="MOSTLY"))


def test_a_non_portable_statement_fails_the_test_that_sent_it(cassandra_store, cql_violations):
    """The suite-wide check sees what the store's session sends (then this test clears it)."""
    batch = BatchStatement(BatchType.LOGGED)
    batch.add(cassandra_store._stmt("INSERT INTO {ks}.meta (key, value) VALUES (?, ?)"), ("k", "v"))
    cassandra_store._session.execute(batch)
    assert any("logged batch" in v for v in cql_violations)
    cql_violations.clear()


# ---- overload (Cosmos DB's 429) ------------------------------------------------------
@pytest.fixture
def overloading(cassandra_config, cassandra_store):
    """(proxy, store through it) on the migrated test keyspace."""
    proxy = CqlProxy(cassandra_config.port)
    store = CassandraStore(dataclasses.replace(cassandra_config, port=proxy.port, overload_retries=4))
    yield proxy, store
    store.close()
    proxy.close()


def test_an_overloaded_answer_is_sent_again_and_counted(overloading):
    proxy, store = overloading
    image, content, faces = make_image(store, "img429", faces=2)
    persona = store.create_persona("Rita").persona_id
    before = STORE_OVERLOADED_RETRIES._value.get()
    proxy.refuse = 3
    assert store.put_image(image, content, faces)
    store.put_label(LabelRecord(faces[0].face_id, persona, pb.VERDICT_BELONGS))  # compare-and-sets too
    assert proxy.refused == 3 and STORE_OVERLOADED_RETRIES._value.get() - before == 3
    assert store.get_image(image.image_id) is not None
    assert [l.persona_id for l in store.labels_of_face(faces[0].face_id)] == [persona]


def test_overload_that_outlasts_the_retries_is_unavailable(overloading):
    proxy, store = overloading
    proxy.refuse = 1000
    with pytest.raises(StoreUnavailable, match="Overloaded|rate is large"):
        store.get_persona(uuid.uuid4().hex)
    assert proxy.refused == 5  # the first try and overload_retries (4) more
    proxy.refuse = 0
    assert store.get_persona("nobody") is None  # and the store answers again


# ---- a conditional write whose outcome the client cannot know -------------------------------
@pytest.mark.parametrize("applied", [True, False], ids=["applied", "not-applied"])
def test_an_ingest_whose_commit_timed_out_is_settled(overloading, applied):
    """With several replicas a compare-and-set can time out after some accepted it (WriteTimeout,
    write type CAS): it may or may not have applied. The store settles it with a serial read
    (and sends it again if it did not apply): the image is stored once, reported stored, with one
    IMAGE_INGESTED, never reported as failed (UNAVAILABLE) or as stored before (False)."""
    proxy, store = overloading
    image, content, faces = make_image(store, "casimg", faces=1)
    proxy.unknown_outcome(image.content_type.encode(), applied)  # only the commit row carries the content type
    assert store.put_image(image, content, faces) is True
    assert proxy.timed_out == 1
    assert store.get_image(image.image_id) is not None
    ingested = [e for e in store.read_events("", 1000) if e.type == pb.EVENT_TYPE_IMAGE_INGESTED]
    assert [e.subject for e in ingested] == [image.image_id]
