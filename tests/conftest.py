"""Fixtures shared by every test area. Area-specific fixtures live in the
area's own conftest.py (tests/<area>/conftest.py)."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from visage.auth import client as auth_client
from visage.auth.local import LocalIssuer
from visage.auth.roles import Role
from visage.auth.tokens import AuthConfig
from visage.config import Config
from visage.server import SERVER_OPTIONS
from visage.store.sqlite import SqliteStore

REPO = Path(__file__).resolve().parent.parent


# ---- identity (issue 12) ------------------------------------------------------
# Every service needs a token. One local issuer serves the whole test session:
# VISAGE_AUTH_DIR points every service (in-process or a subprocess: Envoy, the
# mesh, the CLI) at its keys, VISAGE_TOKEN gives every client an admin token,
# and gRPC channels made with grpc.insecure_channel send it unless the call
# carries its own `authorization`. Tests of auth itself use `plain_channel`
# (sends nothing) and `issue_token` (any role or claims).
TEST_SUBJECT = "test-admin"
_SESSION_AUTH_DIR = "VISAGE_TEST_SESSION_AUTH_DIR"  # this module may be imported twice (tests.conftest)
# The original, even when this module is imported a second time after the patch below.
_plain_insecure_channel = getattr(grpc.insecure_channel, "unpatched", grpc.insecure_channel)


def _start_test_issuer() -> LocalIssuer:
    if os.environ.get(_SESSION_AUTH_DIR):
        return LocalIssuer(AuthConfig.from_env())
    auth_dir = Path(tempfile.mkdtemp(prefix="visage-test-auth-"))
    atexit.register(shutil.rmtree, auth_dir, True)
    for name in ("ISSUER", "AUDIENCE", "JWKS_URL", "JWKS_FILE", "ROLE_CLAIM", "SUBJECT_CLAIM"):
        os.environ.pop(f"VISAGE_AUTH_{name}", None)
    os.environ["VISAGE_AUTH_DIR"] = os.environ[_SESSION_AUTH_DIR] = str(auth_dir)
    issuer = LocalIssuer(AuthConfig.from_env()).ensure()
    os.environ[auth_client.TOKEN_ENV] = issuer.mint(Role.ADMIN, TEST_SUBJECT, ttl_seconds=7 * 86400)
    return issuer


TEST_ISSUER = _start_test_issuer()


def _insecure_channel_with_test_token(target, options=None, compression=None):
    return auth_client.with_token(_plain_insecure_channel(target, options, compression),
                                  os.environ.get(auth_client.TOKEN_ENV))


_insecure_channel_with_test_token.unpatched = _plain_insecure_channel
grpc.insecure_channel = _insecure_channel_with_test_token


@pytest.fixture(scope="session")
def issue_token():
    """issue_token(role, subject="someone", ttl_seconds=600) -> a token the services accept."""
    def issue(role: Role | str, subject: str = "someone", ttl_seconds: int = 600) -> str:
        return TEST_ISSUER.mint(Role.parse(role) if isinstance(role, str) else role, subject, ttl_seconds)
    return issue


@pytest.fixture(scope="session")
def test_issuer() -> LocalIssuer:
    return TEST_ISSUER


@pytest.fixture(scope="session")
def plain_channel():
    """plain_channel(target) -> a channel that sends no token (an anonymous caller)."""
    return _plain_insecure_channel


def find_faces_dir() -> Path:
    """The shared real face photos (see their README): $VISAGE_FACES_DIR, else
    ../shared/data/faces next to the checkout, else /work/shared/data/faces."""
    candidates = [os.environ.get("VISAGE_FACES_DIR", ""), REPO.parent / "shared/data/faces",
                  "/work/shared/data/faces"]
    for candidate in filter(None, candidates):
        if (Path(candidate) / "bbt").is_dir():
            return Path(candidate)
    raise RuntimeError(f"shared face photos not found in any of {candidates}; set VISAGE_FACES_DIR")


def missing_prerequisite(reason: str, remedy: str):
    """A test needs something `make test` provides (Cassandra, Chromium, grpcurl,
    kustomize, checkov). Under `make test` (VISAGE_TESTS_REQUIRE_ALL=1, so in CI)
    that is a failure; in a developer's narrower run it is a skip saying what to run."""
    if os.environ.get("VISAGE_TESTS_REQUIRE_ALL") == "1":
        pytest.fail(f"{reason} (VISAGE_TESTS_REQUIRE_ALL=1: `make test` should have provided it)", pytrace=False)
    pytest.skip(f"{reason}; run `{remedy}`")


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    return find_faces_dir()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """Embedded defaults with a private data directory."""
    return Config(data_dir=tmp_path / "data")


@pytest.fixture
def sqlite_store(config: Config):
    store = SqliteStore(config.sqlite_path)
    store.migrate()
    yield store
    store.close()


@pytest.fixture(scope="session")
def test_output_dir() -> Path:
    """Where tests write artefacts worth looking at (screenshots, reports)."""
    path = REPO / "test-output"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def _grpc_server(request, grpc_interceptors):
    """pytest-grpc's server (for modules using its grpc_servicer fixtures), with
    the services' own options: its default SO_REUSEPORT would silently share a
    port with another test run on this machine, and its 4 MB message limit is
    below the image limit the services report on. Pool size as pytest-grpc
    reads it: the module's `grpc_max_workers` or --grpc-max-workers."""
    max_workers = max(getattr(request.module, "grpc_max_workers", 1), request.config.getoption("grpc-max-workers"))
    pool = futures.ThreadPoolExecutor(max_workers=max_workers)
    yield grpc.server(pool, interceptors=grpc_interceptors, options=SERVER_OPTIONS)
    pool.shutdown(wait=False)


# ---- Cassandra (store engineer) ---------------------------------------------
# A real node started by `make cassandra-start` (scripts/cassandra.py) on 127.0.0.1:9142.
# Tests get a keyspace of their own, emptied before each test (creating a keyspace per
# test would cost seconds; truncating the few tables a test touched costs milliseconds).
CASSANDRA_PORT = int(os.environ.get("VISAGE_TEST_CASSANDRA_PORT", "9142"))
# Tests share 2 cores with other jobs: a connect may wait far longer than production's 10 s.
CASSANDRA_CONNECT_TIMEOUT_S = 120.0


def _cassandra_unavailable(reason: str):
    missing_prerequisite(reason, "make cassandra-fetch cassandra-start")


@pytest.fixture(scope="session")
def cassandra_session_keyspace():
    """(config, admin session) for one keyspace per pytest process, migrated once, dropped at the end."""
    import socket
    import uuid as uuid_module

    from visage.config import CassandraConfig

    try:
        socket.create_connection(("127.0.0.1", CASSANDRA_PORT), timeout=2).close()
    except OSError:
        _cassandra_unavailable(f"no Cassandra answers on 127.0.0.1:{CASSANDRA_PORT}")
    yield from migrated_keyspace(CassandraConfig(contact_points=("127.0.0.1",), port=CASSANDRA_PORT,
                                                 keyspace=f"visage_test_{uuid_module.uuid4().hex[:12]}",
                                                 connect_timeout_seconds=CASSANDRA_CONNECT_TIMEOUT_S))


def migrated_keyspace(config):
    """Yields (config, admin store) for the keyspace `config` names, migrated; drops it afterwards
    (the body of every `cassandra_session_keyspace` fixture: the single node's, the cluster's)."""
    from visage.store.cassandra import CassandraStore

    admin = CassandraStore(config)
    admin.migrate()
    yield config, admin
    admin._session.execute(f"DROP KEYSPACE IF EXISTS {config.keyspace}", timeout=120)
    admin.close()


@pytest.fixture
def cassandra_config(cassandra_session_keyspace):
    """A CassandraConfig whose keyspace is migrated and empty for this test
    (use it as Config(store="cassandra", cassandra=cassandra_config, ...))."""
    config, admin = cassandra_session_keyspace
    tables = [row.table_name for row in admin._session.execute(
        "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (config.keyspace,))]
    for table in tables:
        if table != "schema_version" and admin._session.execute(
                f"SELECT * FROM {config.keyspace}.{table} LIMIT 1").one() is not None:
            admin._session.execute(f"TRUNCATE {config.keyspace}.{table}", timeout=60)
    return config


@pytest.fixture
def cassandra_store(cassandra_config):
    from visage.store.cassandra import CassandraStore

    store = CassandraStore(cassandra_config)
    store.migrate()
    yield store
    store.close()


@pytest.fixture
def cut_off_store(tmp_path: Path):
    """cut_off_store(store): a real outage of the store under a running service (see _cut_off)."""
    return lambda store: _cut_off(store, tmp_path)


def _cut_off(store, tmp_path: Path) -> None:
    """A real outage of the store under a running service: Cassandra's driver is shut down
    (every call finds no host); SQLite's file becomes unopenable (a directory), for every
    thread's next connection. Either backend then raises its own errors internally."""
    from visage.store.cassandra import CassandraStore

    if isinstance(store, CassandraStore):
        store._cluster.shutdown()
        return
    import threading

    unopenable = tmp_path / "store-cut-off"
    unopenable.mkdir(exist_ok=True)
    store.path = unopenable
    store._local = threading.local()  # every thread opens the (unopenable) path again


# ---- portable CQL (issue 23) --------------------------------------------------
# Every statement any test makes the Cassandra store prepare or send, and every batch, is
# checked against the CQL that Cosmos DB, Managed Instance and Apache Cassandra all accept
# (visage.store.portable_cql): a test that makes the store send anything else fails.
def _record_cql_violations() -> list[str]:
    """Patches the driver's Session once (this module may be imported twice); returns the list."""
    from cassandra.cluster import Session
    from cassandra.query import BatchStatement, BatchType, SimpleStatement

    from visage.store import portable_cql

    if hasattr(Session, "visage_cql_violations"):
        return Session.visage_cql_violations
    violations: list[str] = []
    prepare, execute_async = Session.prepare, Session.execute_async

    def checked_prepare(self, query, *args, **kwargs):
        violations.extend(f"{v}: {query}" for v in portable_cql.violations(str(query)))
        return prepare(self, query, *args, **kwargs)

    def checked_execute_async(self, query, *args, **kwargs):
        if isinstance(query, BatchStatement):
            prepared = self.cluster._prepared_statements
            statements = [prepared[key].query_string if is_prepared and key in prepared else str(key)
                          for is_prepared, key, _values in query._statements_and_parameters]
            violations.extend(f"{v}: {statements}" for v in portable_cql.batch_violations(
                query.batch_type == BatchType.LOGGED, statements))
        elif isinstance(query, (str, SimpleStatement)):
            text = query if isinstance(query, str) else query.query_string
            violations.extend(f"{v}: {text}" for v in portable_cql.violations(text))
        return execute_async(self, query, *args, **kwargs)

    Session.prepare, Session.execute_async = checked_prepare, checked_execute_async
    Session.visage_cql_violations = violations
    return violations


CQL_VIOLATIONS = _record_cql_violations()


@pytest.fixture
def cql_violations() -> list[str]:
    """What the store sent this test that one of Azure's Cassandra offerings refuses."""
    return CQL_VIOLATIONS


@pytest.fixture(autouse=True)
def _cql_stays_portable():
    """Fails the test during which the store sent CQL one of Azure's Cassandra offerings refuses."""
    CQL_VIOLATIONS.clear()
    yield
    found, CQL_VIOLATIONS[:] = list(CQL_VIOLATIONS), []
    if found:
        pytest.fail("non-portable CQL sent (see visage.store.portable_cql):\n" + "\n".join(found[:10]),
                    pytrace=False)
