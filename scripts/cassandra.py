"""A real single-node Apache Cassandra for tests and benchmarks, without Docker.

    python scripts/cassandra.py fetch    # resolve cassandra-all + deps from Maven Central into .tools/cassandra/lib
    python scripts/cassandra.py start    # start on 127.0.0.1:9142 (CQL); idempotent
    python scripts/cassandra.py stop     # SIGTERM (Cassandra drains), wait, SIGKILL only as a last resort
    python scripts/cassandra.py status   # prints the pid and port; exit 1 when not answering
    python scripts/cassandra.py nodetool flush KEYSPACE   # nodetool against the single node (JMX on loopback)

Data and logs live under build/cassandra/ (log: build/cassandra/logs/system.log).
The CQL port is CQL_PORT below (env VISAGE_TEST_CASSANDRA_PORT overrides it); tests
read the same value from tests/conftest.py.

A real 3-node cluster (replication tests, tests/store/test_three_nodes.py, `bench store --nodes 3`):

    python scripts/cassandra.py start --cluster 3    # 127.0.0.1-3, CQL CLUSTER_CQL_PORT on each; idempotent:
                                                     # starts only the nodes not running (e.g. one killed);
                                                     # --fresh: from empty data dirs when none runs
    python scripts/cassandra.py stop --cluster 3     # all three, side by side
    python scripts/cassandra.py status --cluster 3   # exit 1 unless every node answers and sees the others
    python scripts/cassandra.py kill --cluster 3 --node 3   # SIGKILL one node (a crash; `start` brings it back)

Each node under build/cassandra-cluster/node{1,2,3}/ (logs/system.log there); the seed is 127.0.0.1,
every node has one token of an evenly split ring, and `start` returns only once every node
coordinates a write at consistency ALL (each sees the other two up and the schema agrees).
Linux routes all of 127/8 to lo, so the three addresses need no setup.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name shadows the
# driver's package: without this, `import cassandra` below would import this file again.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

REPO = Path(__file__).resolve().parent.parent
POM = REPO / "scripts/cassandra/pom.xml"
LIB = REPO / ".tools/cassandra/lib"
HOME = REPO / "build/cassandra"
PID_FILE = HOME / "cassandra.pid"
LOG_DIR = HOME / "logs"

HOST = "127.0.0.1"
CQL_PORT = int(os.environ.get("VISAGE_TEST_CASSANDRA_PORT", "9142"))  # not 9042: leave a dev's own node alone
STORAGE_PORT = CQL_PORT - 2000  # inter-node gossip port; unused by clients, must just be free
# JMX (nodetool) of the single node, loopback only, no auth. The node starts without JMX (as Cassandra
# does without cassandra-env.sh); `nodetool` turns the JDK's agent on in the running JVM (jcmd), so it
# also works on a node started before this existed.
JMX_PORT = CQL_PORT - 1800  # 7342: not the cluster's storage port (7242), nor a dev node's JMX (7199)
NODETOOL_TIMEOUT_S = 600  # a hang guard: a flush or garbagecollect of a test keyspace takes seconds
START_TIMEOUT_S = 240
STOP_TIMEOUT_S = 90

# The 3-node cluster: its own ports (the single node above may run beside it), the same on
# every address (Cassandra requires one storage port for the whole cluster).
CLUSTER_HOME = REPO / "build/cassandra-cluster"
CLUSTER_CQL_PORT = int(os.environ.get("VISAGE_TEST_CASSANDRA_CLUSTER_PORT", "9242"))
CLUSTER_STORAGE_PORT = CLUSTER_CQL_PORT - 2000
CLUSTER_SEED = "127.0.0.1"
# Until every node coordinates a write at ALL (gossip and schema settle after the CQL ports open).
CLUSTER_SETTLE_TIMEOUT_S = 300
PROBE_KEYSPACE = "visage_cluster_probe"

# Cassandra 5 on Java 17 (from its conf/jvm17-server.options): it reaches into JDK internals.
JVM17_FLAGS = [
    "--add-exports=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-exports=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-exports=java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports=java.sql/java.sql=ALL-UNNAMED",
    "--add-exports=java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports=jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens=jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.math=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
]

# Sized for a shared 2-core machine: a small heap, few threads, and the test-only
# switches that make schema changes (CREATE/TRUNCATE/DROP in fixtures) fast.
HEAP_FLAGS = ["-Xms512M", "-Xmx1G", "-XX:MaxDirectMemorySize=512M"]
# The single node only: system tables (the schema among them) skip the commit log and are not
# flushed after each schema change, so schema changes take ms. A cluster node keeps them durable:
# one killed with SIGKILL and started again must still know the keyspaces created before.
SINGLE_NODE_FLAGS = ["-Dcassandra.unsafesystem=true"]
# Three nodes on the same small machine: each gets less (RSS ~0.7-0.9 GiB a node).
CLUSTER_HEAP_FLAGS = ["-Xms384M", "-Xmx768M", "-XX:MaxDirectMemorySize=256M"]
JVM_FLAGS = [
    "-Xss256k",
    "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=300", "-XX:ActiveProcessorCount=2", "-XX:+ExitOnOutOfMemoryError",
    "-Djava.net.preferIPv4Stack=true",
    "-Djdk.attach.allowAttachSelf=true",
    "-Dcassandra-foreground=yes",
    "-Dcassandra.skip_wait_for_gossip_to_settle=0",
    "-Dcassandra.ring_delay_ms=0",
    "-Dcassandra.superuser_setup_delay_ms=0",
    "-Dcassandra.max_queued_native_transport_requests=4096",
]


@dataclasses.dataclass(frozen=True)
class Node:
    """One Cassandra process: where it lives, its address and ports, how it joins."""
    name: str                 # in messages: "cassandra" (the single node) or "node2"
    home: Path
    host: str = HOST
    cql_port: int = CQL_PORT
    storage_port: int = STORAGE_PORT
    seed: str = HOST
    cluster_name: str = "visage-test"
    initial_token: int = 0
    jvm_flags: tuple[str, ...] = tuple(HEAP_FLAGS + SINGLE_NODE_FLAGS)  # its own: heap, durability
    # A cluster node: a fresh test cluster has no data to stream, so nodes join without
    # bootstrapping (their tokens are fixed); hints on, as in production, so a node that was
    # down is sent the writes it missed when it returns.
    in_cluster: bool = False

    @property
    def pid_file(self) -> Path:
        return self.home / "cassandra.pid"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def where(self) -> str:
        return f"{self.host}:{self.cql_port}"


SINGLE = Node("cassandra", HOME)


def cluster_nodes(count: int) -> list[Node]:
    """The nodes of a `count`-node cluster on 127.0.0.1..count, tokens evenly spread over the ring."""
    if not 1 <= count <= 9:
        raise SystemExit(f"cassandra: a cluster of {count} nodes is not supported (1-9)")
    return [Node(f"node{i}", CLUSTER_HOME / f"node{i}", host=f"127.0.0.{i}", cql_port=CLUSTER_CQL_PORT,
                 storage_port=CLUSTER_STORAGE_PORT, seed=CLUSTER_SEED, cluster_name="visage-test-cluster",
                 initial_token=-2 ** 63 + (i - 1) * 2 ** 64 // count, jvm_flags=tuple(CLUSTER_HEAP_FLAGS),
                 in_cluster=True)
            for i in range(1, count + 1)]


def cassandra_yaml(node: Node = SINGLE) -> str:
    data = node.home / "data"
    what = "one node of a local test cluster" if node.in_cluster else "one local node for tests"
    cluster_only = "auto_bootstrap: false\n" if node.in_cluster else ""
    hints = "true" if node.in_cluster else "false"
    # A replica's answer crosses to another JVM on the same 2 shared cores, where a node can
    # stall for seconds (GC, CPU starvation: the logs show "local pause of 21 s" while three
    # nodes start): the cluster's replicas get longer to answer (still under the store's
    # 30 s client timeout), a conditional write longer to win its Paxos rounds.
    read_ms, write_ms, cas_ms = (20000, 20000, 10000) if node.in_cluster else (10000, 5000, 1800)
    return f"""\
# Written by scripts/cassandra.py: {what} (do not use in production).
cluster_name: {node.cluster_name}
num_tokens: 1
initial_token: {node.initial_token}
{cluster_only}partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "{node.seed}:{node.storage_port}"
listen_address: {node.host}
rpc_address: {node.host}
storage_port: {node.storage_port}
native_transport_port: {node.cql_port}
start_native_transport: true
native_transport_max_frame_size: 16MiB
data_file_directories: [{data / 'data'}]
commitlog_directory: {data / 'commitlog'}
saved_caches_directory: {data / 'saved_caches'}
hints_directory: {data / 'hints'}
cdc_raw_directory: {data / 'cdc_raw'}
commitlog_sync: periodic
commitlog_sync_period: 10000ms
commitlog_segment_size: 32MiB
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
role_manager: CassandraRoleManager
auto_snapshot: false
snapshot_before_compaction: false
concurrent_reads: 8
concurrent_writes: 16
concurrent_counter_writes: 4
concurrent_compactors: 1
compaction_throughput: 64MiB/s
memtable_allocation_type: heap_buffers
key_cache_size: 16MiB
dynamic_snitch: false
hinted_handoff_enabled: {hints}
read_request_timeout: {read_ms}ms
range_request_timeout: 20000ms
write_request_timeout: {write_ms}ms
cas_contention_timeout: {cas_ms}ms
request_timeout: 20000ms
batch_size_warn_threshold: 64KiB
batch_size_fail_threshold: 8MiB
tombstone_warn_threshold: 100000
tombstone_failure_threshold: 1000000
"""


LOGBACK_XML = """\
<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>${cassandra.logdir}/system.log</file>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
  <logger name="org.apache.cassandra.utils.SigarLibrary" level="ERROR"/>
</configuration>
"""

# nodetool's own logging: warnings and errors only, to stderr.
LOGBACK_TOOLS_XML = """\
<configuration scan="false">
  <appender name="STDERR" class="ch.qos.logback.core.ConsoleAppender">
    <target>System.err</target>
    <encoder><pattern>%-5level %msg%n</pattern></encoder>
  </appender>
  <root level="WARN"><appender-ref ref="STDERR"/></root>
</configuration>
"""


# ---- fetch ----------------------------------------------------------------
def fetch() -> int:
    marker = LIB / ".fetched"
    if marker.exists() and marker.read_text() == POM.read_text():
        print(f"cassandra: jars already in {LIB.relative_to(REPO)}")
        return 0
    LIB.mkdir(parents=True, exist_ok=True)
    for old in LIB.glob("*.jar"):  # a version change must not leave two cassandra-all jars
        old.unlink()
    print("==> cassandra: cassandra-all and its dependencies from Maven Central (mvn; ~3 min the first time)",
          flush=True)  # "==> ": shown by scripts/logged.py
    subprocess.run(["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
                    "-DincludeScope=runtime", f"-DoutputDirectory={LIB}"], check=True)
    marker.write_text(POM.read_text())
    print(f"cassandra: {len(list(LIB.glob('*.jar')))} jars in {LIB.relative_to(REPO)}")
    return 0


# ---- process state ----------------------------------------------------------
def running_pid(node: Node = SINGLE) -> int | None:
    try:
        pid = int(node.pid_file.read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    except PermissionError:
        return pid
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists() and b"CassandraDaemon" not in cmdline.read_bytes():
        return None  # a recycled pid (or a killed node not yet reaped), not our node
    return pid


def cql_answers(node: Node = SINGLE, timeout: float = 2.0) -> bool:
    """True when the node answers a CQL query (an open port is not enough: the
    native transport accepts connections a moment before it serves queries)."""
    try:
        with socket.create_connection((node.host, node.cql_port), timeout=timeout):
            pass
    except OSError:
        return False
    try:
        from cassandra.cluster import Cluster
    except ImportError:  # no driver in this interpreter: the port is the best we can check
        return True
    cluster = Cluster([node.host], port=node.cql_port, connect_timeout=timeout, control_connection_timeout=timeout,
                      **_only(node))
    try:
        session = cluster.connect()
        session.execute("SELECT release_version FROM system.local", timeout=timeout)
        return True
    except Exception:
        return False
    finally:
        cluster.shutdown()


def _only(node: Node) -> dict:
    """Driver options that send every request to this node alone (a cluster's driver would
    otherwise spread them over every node it discovers)."""
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, ExecutionProfile
    from cassandra.policies import WhiteListRoundRobinPolicy

    profile = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy([node.host]))
    return {"execution_profiles": {EXEC_PROFILE_DEFAULT: profile}}


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def last_log_line(node: Node = SINGLE) -> str:
    log = node.log_dir / "system.log"
    if not log.exists():
        return ""
    with log.open("rb") as f:
        f.seek(max(0, log.stat().st_size - 4096))
        lines = f.read().decode("utf-8", "replace").strip().splitlines()
    return lines[-1].split(" - ", 1)[-1][:70] if lines else ""


# ---- start / stop -----------------------------------------------------------
def java_command(node: Node = SINGLE) -> list[str]:
    jars = sorted(LIB.glob("*.jar"))
    jamm = next((j for j in jars if j.name.startswith("jamm-")), None)
    agent = [f"-javaagent:{jamm}"] if jamm else []  # Cassandra measures memtable sizes with jamm
    return ["java", *node.jvm_flags, *JVM_FLAGS, *JVM17_FLAGS, *agent,
            f"-Dcassandra.config=file://{node.home / 'conf/cassandra.yaml'}",
            f"-Dcassandra.logdir={node.log_dir}",
            f"-Dcassandra.storagedir={node.home / 'data'}",
            f"-Dlogback.configurationFile=file://{node.home / 'conf/logback.xml'}",
            "-cp", ":".join(str(j) for j in jars),
            "org.apache.cassandra.service.CassandraDaemon"]


def have_jars() -> bool:
    if not list(LIB.glob("cassandra-all-*.jar")):
        print("cassandra: no jars; run `make cassandra-fetch` first", file=sys.stderr)
        return False
    return True


def launch(node: Node) -> subprocess.Popen:
    """Writes the node's config and starts its JVM in the background."""
    for sub in ("conf", "logs", "data"):
        (node.home / sub).mkdir(parents=True, exist_ok=True)
    (node.home / "conf/cassandra.yaml").write_text(cassandra_yaml(node))
    (node.home / "conf/logback.xml").write_text(LOGBACK_XML)
    with (node.log_dir / "stdout.log").open("ab") as out:
        process = subprocess.Popen(java_command(node), stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=node.home, start_new_session=True)
    node.pid_file.write_text(str(process.pid))
    print(f"{node.name}: starting pid {process.pid} on {node.where} "
          f"(log {node.log_dir.relative_to(REPO)}/system.log)", flush=True)
    return process


def to_start(node: Node) -> tuple[int | subprocess.Popen | None, bool]:
    """(what to wait for, ok): (None, True) when the node already answers; (pid, True) for a
    process of ours that is up but not answering yet; (the process, True) for one started now;
    (None, False) when something else answers on the node's port."""
    pid = running_pid(node)
    if pid and cql_answers(node):
        print(f"{node.name}: already running (pid {pid}) on {node.where}")
        return None, True
    if pid:
        print(f"{node.name}: pid {pid} is up but not answering yet; waiting for it")
        return pid, True
    if cql_answers(node):
        print(f"{node.name}: something else already answers CQL on {node.where}; not starting another",
              file=sys.stderr)
        return None, False
    return launch(node), True


def start() -> int:
    if not running_pid(SINGLE) and not have_jars():
        return 1
    began = time.monotonic()
    pid, ok = to_start(SINGLE)
    if not ok:
        return 1
    return wait_until_ready({SINGLE: pid}, began) if pid else 0


def wait_until_ready(pids: dict[Node, int | subprocess.Popen], began: float) -> int:
    """Until every node answers CQL (START_TIMEOUT_S from `began`, a hang guard); 1 when one
    exits or the guard runs out. A node is a pid, or the process when started here (a process
    just started may not show its command line in /proc yet: running_pid would miss it)."""
    from tqdm import tqdm

    def exited(node: Node, process: int | subprocess.Popen) -> bool:
        if isinstance(process, subprocess.Popen):
            return process.poll() is not None
        return running_pid(node) != process

    waiting = dict(pids)
    label = "cassandra" if list(pids) == [SINGLE] else "cassandra cluster"
    # The bar redraws itself in a terminal; in a log (a test fixture, CI) it would be a line a second.
    with tqdm(total=START_TIMEOUT_S, unit="s", desc="", file=sys.stdout, disable=not sys.stdout.isatty(),
              bar_format=label + " starting: {elapsed} {bar:20} {desc}") as bar:
        while waiting and time.monotonic() - began < START_TIMEOUT_S:
            for node, process in list(waiting.items()):
                pid = process.pid if isinstance(process, subprocess.Popen) else process
                if exited(node, process):
                    bar.close()
                    print(f"{node.name}: process {pid} exited during startup; see {node.log_dir}/system.log and "
                          f"{node.log_dir}/stdout.log", file=sys.stderr)
                    return 1
                if cql_answers(node):
                    del waiting[node]
                    bar.clear()
                    print(f"{node.name}: ready on {node.where} after {time.monotonic() - began:.1f}s, "
                          f"RSS {rss_mib(pid):.0f} MiB (pid {pid})", flush=True)
            if not waiting:
                break
            node = next(iter(waiting))
            bar.set_description_str((f"{node.name}: " if node.in_cluster else "") + last_log_line(node),
                                    refresh=False)
            bar.n = min(START_TIMEOUT_S, int(time.monotonic() - began))
            bar.refresh()
            time.sleep(1.0)
    for node in waiting:
        print(f"{node.name}: not answering after {START_TIMEOUT_S}s; see {node.log_dir}/system.log", file=sys.stderr)
    return 1 if waiting else 0


def terminate(nodes: list[Node]) -> None:
    """SIGTERM to every running node at once (Cassandra drains memtables and closes the commit
    log), wait for all of them, SIGKILL only as a last resort."""
    pids = {node: pid for node in nodes if (pid := running_pid(node))}
    for node in nodes:
        if node not in pids:
            print(f"{node.name}: not running")
            node.pid_file.unlink(missing_ok=True)
    for pid in pids.values():
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and any(running_pid(node) == pid for node, pid in pids.items()):
        time.sleep(0.5)
    for node, pid in pids.items():
        if running_pid(node) == pid:
            print(f"{node.name}: pid {pid} did not stop in {STOP_TIMEOUT_S}s; killing it", file=sys.stderr)
            os.kill(pid, signal.SIGKILL)
        node.pid_file.unlink(missing_ok=True)
        print(f"{node.name}: stopped (pid {pid})")


def stop() -> int:
    terminate([SINGLE])
    return 0


def status() -> int:
    pid = running_pid(SINGLE)
    ok = bool(pid) and cql_answers(SINGLE)
    rss = f", RSS {rss_mib(pid):.0f} MiB" if pid else ""
    print(f"cassandra: {'answering' if ok else 'not answering'} on {HOST}:{CQL_PORT} (pid {pid}{rss})")
    return 0 if ok else 1


# ---- the cluster --------------------------------------------------------------
def start_cluster(count: int, fresh: bool = False) -> int:
    """Starts the nodes that are not running: the seed first (the others learn the ring from
    it), then the rest side by side; returns once the cluster has settled (see settled).
    `fresh`: when no node runs, their data goes first (keyspaces a killed test run left
    behind only slow a start down)."""
    nodes = cluster_nodes(count)
    if not all(running_pid(node) for node in nodes) and not have_jars():
        return 1
    if fresh and not any(running_pid(node) for node in nodes):
        for node in nodes:
            shutil.rmtree(node.home / "data", ignore_errors=True)
    began = time.monotonic()
    for group in (nodes[:1], nodes[1:]):
        pids: dict[Node, int | subprocess.Popen] = {}
        for node in group:
            pid, ok = to_start(node)
            if not ok:
                return 1
            if pid:
                pids[node] = pid
        if pids and wait_until_ready(pids, time.monotonic()) != 0:
            return 1
    return wait_until_settled(nodes, began)


def settled(nodes: list[Node], sessions: dict[Node, object]) -> str:
    """"" when every node coordinates a write at consistency ALL to a keyspace replicated on
    all of them: each sees every other node up and knows the keyspace (the schema agrees);
    else what failed."""
    from cassandra import ConsistencyLevel
    from cassandra.cluster import Cluster
    from cassandra.query import SimpleStatement

    for node in nodes:
        session = sessions.get(node)
        try:
            if session is None:
                cluster = Cluster([node.host], port=node.cql_port, connect_timeout=10,
                                  control_connection_timeout=10, **_only(node))
                session = sessions[node] = cluster.connect()
            if node is nodes[0]:
                session.execute(f"CREATE KEYSPACE IF NOT EXISTS {PROBE_KEYSPACE} WITH replication = "
                                f"{{'class': 'SimpleStrategy', 'replication_factor': {len(nodes)}}}", timeout=60)
                session.execute(f"CREATE TABLE IF NOT EXISTS {PROBE_KEYSPACE}.probe "
                                "(node text PRIMARY KEY, at double)", timeout=60)
            session.execute(SimpleStatement(f"INSERT INTO {PROBE_KEYSPACE}.probe (node, at) VALUES (%s, %s)",
                                            consistency_level=ConsistencyLevel.ALL), (node.name, time.time()),
                            timeout=10)
        except Exception as e:  # not up yet, not agreed yet: tried again
            return f"{node.name}: {type(e).__name__}: {str(e)[:160]}"
    return ""


def wait_until_settled(nodes: list[Node], began: float) -> int:
    try:
        import cassandra  # noqa: F401
    except ImportError:
        print("cassandra cluster: no driver in this interpreter; not waiting for the nodes to see each other")
        return 0
    sessions: dict[Node, object] = {}
    settle_began = time.monotonic()
    try:
        while (failed := settled(nodes, sessions)) and time.monotonic() - settle_began < CLUSTER_SETTLE_TIMEOUT_S:
            time.sleep(1.0)
    finally:
        for session in sessions.values():
            session.cluster.shutdown()
    if failed:
        print(f"cassandra cluster: not settled after {CLUSTER_SETTLE_TIMEOUT_S}s ({failed}); see "
              f"{CLUSTER_HOME.relative_to(REPO)}/node*/logs/system.log", file=sys.stderr)
        return 1
    rss = sum(rss_mib(pid) for node in nodes if (pid := running_pid(node)))
    print(f"cassandra cluster: {len(nodes)} nodes ready on {', '.join(n.host for n in nodes)} port "
          f"{nodes[0].cql_port} after {time.monotonic() - began:.1f}s (every node writes at ALL), "
          f"RSS {rss:.0f} MiB in all")
    return 0


def stop_cluster(count: int) -> int:
    terminate(cluster_nodes(count))
    return 0


def status_cluster(count: int) -> int:
    nodes = cluster_nodes(count)
    answering = True
    for node in nodes:
        pid = running_pid(node)
        ok = bool(pid) and cql_answers(node)
        answering = answering and ok
        rss = f", RSS {rss_mib(pid):.0f} MiB" if pid else ""
        print(f"{node.name}: {'answering' if ok else 'not answering'} on {node.where} (pid {pid}{rss})")
    if not answering:
        return 1
    sessions: dict[Node, object] = {}
    try:
        failed = settled(nodes, sessions)
    finally:
        for session in sessions.values():
            session.cluster.shutdown()
    print(f"cassandra cluster: {'settled: every node writes at ALL' if not failed else 'not settled: ' + failed}")
    return 1 if failed else 0


def kill_node(count: int, number: int) -> int:
    """SIGKILL (a crash: no drain, no flush) one node; waits until its process is gone."""
    nodes = cluster_nodes(count)
    if not 1 <= number <= count:
        print(f"cassandra cluster: no node {number} of {count}", file=sys.stderr)
        return 1
    node = nodes[number - 1]
    pid = running_pid(node)
    if not pid:
        print(f"{node.name}: not running")
        return 0
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while running_pid(node) == pid and time.monotonic() < deadline:
        time.sleep(0.05)
    print(f"{node.name}: killed (SIGKILL, pid {pid})")
    return 0 if running_pid(node) != pid else 1


def jmx_listening() -> bool:
    try:
        with socket.create_connection((HOST, JMX_PORT), timeout=2.0):
            return True
    except OSError:
        return False


def nodetool(arguments: list[str]) -> int:
    """Runs nodetool (org.apache.cassandra.tools.NodeTool from the fetched jars) against the single node."""
    pid = running_pid(SINGLE)
    if not pid or not have_jars():
        print("cassandra: not running; nodetool needs the node", file=sys.stderr)
        return 1
    if not jmx_listening():
        subprocess.run(["jcmd", str(pid), "ManagementAgent.start", f"jmxremote.port={JMX_PORT}",
                        f"jmxremote.rmi.port={JMX_PORT}", f"jmxremote.host={HOST}", "jmxremote.authenticate=false",
                        "jmxremote.ssl=false"], check=True, stdout=subprocess.DEVNULL, timeout=NODETOOL_TIMEOUT_S)
    (SINGLE.home / "conf/logback-tools.xml").write_text(LOGBACK_TOOLS_XML)
    command = ["java", *JVM17_FLAGS, f"-Dlogback.configurationFile=file://{SINGLE.home / 'conf/logback-tools.xml'}",
               f"-Duser.home={SINGLE.home}",  # nodetool keeps its history there
               "-cp", ":".join(str(j) for j in sorted(LIB.glob("*.jar"))),
               "org.apache.cassandra.tools.NodeTool", "-h", HOST, "-p", str(JMX_PORT), *arguments]
    return subprocess.run(command, timeout=NODETOOL_TIMEOUT_S).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["fetch", "start", "stop", "status", "kill", "nodetool"])
    parser.add_argument("--cluster", type=int, metavar="N", help="the N-node cluster (127.0.0.1..N) instead")
    parser.add_argument("--node", type=int, metavar="I", help="kill: which node of the cluster (1..N)")
    parser.add_argument("--fresh", action="store_true",
                        help="start --cluster: when no node runs, remove their data first")
    args, rest = parser.parse_known_args()  # nodetool: its command and arguments follow
    if args.command == "nodetool":
        return nodetool(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "kill":
        if not args.cluster or not args.node:
            parser.error("kill needs --cluster N --node I")
        return kill_node(args.cluster, args.node)
    if args.cluster and args.command == "start":
        return start_cluster(args.cluster, args.fresh)
    if args.cluster and args.command != "fetch":
        return {"stop": stop_cluster, "status": status_cluster}[args.command](args.cluster)
    return {"fetch": fetch, "start": start, "stop": stop, "status": status}[args.command]()


if __name__ == "__main__":
    sys.exit(main())
