"""A real single-node Apache Cassandra for tests and benchmarks, without Docker.

    python scripts/cassandra.py fetch    # resolve cassandra-all + deps from Maven Central into .tools/cassandra/lib
    python scripts/cassandra.py start    # start on 127.0.0.1:9142 (CQL); idempotent
    python scripts/cassandra.py stop     # SIGTERM (Cassandra drains), wait, SIGKILL only as a last resort
    python scripts/cassandra.py status   # prints the pid and port; exit 1 when not answering

Data and logs live under build/cassandra/ (log: build/cassandra/logs/system.log).
The CQL port is CQL_PORT below (env VISAGE_TEST_CASSANDRA_PORT overrides it); tests
read the same value from tests/conftest.py.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
POM = REPO / "scripts/cassandra/pom.xml"
LIB = REPO / ".tools/cassandra/lib"
HOME = REPO / "build/cassandra"
PID_FILE = HOME / "cassandra.pid"
LOG_DIR = HOME / "logs"

HOST = "127.0.0.1"
CQL_PORT = int(os.environ.get("VISAGE_TEST_CASSANDRA_PORT", "9142"))  # not 9042: leave a dev's own node alone
STORAGE_PORT = CQL_PORT - 2000  # inter-node gossip port; unused by clients, must just be free
START_TIMEOUT_S = 240
STOP_TIMEOUT_S = 90

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
JVM_FLAGS = [
    "-Xms512M", "-Xmx1G", "-Xss256k", "-XX:MaxDirectMemorySize=512M",
    "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=300", "-XX:ActiveProcessorCount=2", "-XX:+ExitOnOutOfMemoryError",
    "-Djava.net.preferIPv4Stack=true",
    "-Djdk.attach.allowAttachSelf=true",
    "-Dcassandra-foreground=yes",
    "-Dcassandra.unsafesystem=true",          # no fsync of system tables: schema changes in ms
    "-Dcassandra.skip_wait_for_gossip_to_settle=0",
    "-Dcassandra.ring_delay_ms=0",
    "-Dcassandra.superuser_setup_delay_ms=0",
    "-Dcassandra.max_queued_native_transport_requests=4096",
]


def cassandra_yaml() -> str:
    data = HOME / "data"
    return f"""\
# Written by scripts/cassandra.py: one local node for tests (do not use in production).
cluster_name: visage-test
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "{HOST}:{STORAGE_PORT}"
listen_address: {HOST}
rpc_address: {HOST}
storage_port: {STORAGE_PORT}
native_transport_port: {CQL_PORT}
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
hinted_handoff_enabled: false
read_request_timeout: 10000ms
range_request_timeout: 20000ms
write_request_timeout: 5000ms
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


# ---- fetch ----------------------------------------------------------------
def fetch() -> int:
    marker = LIB / ".fetched"
    if marker.exists() and marker.read_text() == POM.read_text():
        print(f"cassandra: jars already in {LIB.relative_to(REPO)}")
        return 0
    LIB.mkdir(parents=True, exist_ok=True)
    for old in LIB.glob("*.jar"):  # a version change must not leave two cassandra-all jars
        old.unlink()
    print("cassandra: resolving cassandra-all and its dependencies from Maven Central (mvn)...", flush=True)
    subprocess.run(["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
                    "-DincludeScope=runtime", f"-DoutputDirectory={LIB}"], check=True)
    marker.write_text(POM.read_text())
    print(f"cassandra: {len(list(LIB.glob('*.jar')))} jars in {LIB.relative_to(REPO)}")
    return 0


# ---- process state ----------------------------------------------------------
def running_pid() -> int | None:
    try:
        pid = int(PID_FILE.read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    except PermissionError:
        return pid
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists() and b"CassandraDaemon" not in cmdline.read_bytes():
        return None  # a recycled pid, not our node
    return pid


def cql_answers(timeout: float = 2.0) -> bool:
    """True when the node answers a CQL query (an open port is not enough: the
    native transport accepts connections a moment before it serves queries)."""
    try:
        with socket.create_connection((HOST, CQL_PORT), timeout=timeout):
            pass
    except OSError:
        return False
    try:
        from cassandra.cluster import Cluster
    except ImportError:  # no driver in this interpreter: the port is the best we can check
        return True
    cluster = Cluster([HOST], port=CQL_PORT, connect_timeout=timeout, control_connection_timeout=timeout)
    try:
        session = cluster.connect()
        session.execute("SELECT release_version FROM system.local", timeout=timeout)
        return True
    except Exception:
        return False
    finally:
        cluster.shutdown()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def last_log_line() -> str:
    log = LOG_DIR / "system.log"
    if not log.exists():
        return ""
    with log.open("rb") as f:
        f.seek(max(0, log.stat().st_size - 4096))
        lines = f.read().decode("utf-8", "replace").strip().splitlines()
    return lines[-1].split(" - ", 1)[-1][:70] if lines else ""


# ---- start / stop -----------------------------------------------------------
def java_command() -> list[str]:
    jars = sorted(LIB.glob("*.jar"))
    jamm = next((j for j in jars if j.name.startswith("jamm-")), None)
    agent = [f"-javaagent:{jamm}"] if jamm else []  # Cassandra measures memtable sizes with jamm
    return ["java", *JVM_FLAGS, *JVM17_FLAGS, *agent,
            f"-Dcassandra.config=file://{HOME / 'conf/cassandra.yaml'}",
            f"-Dcassandra.logdir={LOG_DIR}",
            f"-Dcassandra.storagedir={HOME / 'data'}",
            f"-Dlogback.configurationFile=file://{HOME / 'conf/logback.xml'}",
            "-cp", ":".join(str(j) for j in jars),
            "org.apache.cassandra.service.CassandraDaemon"]


def start() -> int:
    pid = running_pid()
    if pid and cql_answers():
        print(f"cassandra: already running (pid {pid}) on {HOST}:{CQL_PORT}")
        return 0
    if pid:
        print(f"cassandra: pid {pid} is up but not answering yet; waiting for it")
        return wait_until_ready(pid, time.monotonic())
    if not list(LIB.glob("cassandra-all-*.jar")):
        print("cassandra: no jars; run `make cassandra-fetch` first", file=sys.stderr)
        return 1
    if cql_answers():
        print(f"cassandra: something else already answers CQL on {HOST}:{CQL_PORT}; not starting another",
              file=sys.stderr)
        return 1
    for sub in ("conf", "logs", "data"):
        (HOME / sub).mkdir(parents=True, exist_ok=True)
    (HOME / "conf/cassandra.yaml").write_text(cassandra_yaml())
    (HOME / "conf/logback.xml").write_text(LOGBACK_XML)
    began = time.monotonic()
    with (LOG_DIR / "stdout.log").open("ab") as out:
        process = subprocess.Popen(java_command(), stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=HOME, start_new_session=True)
    PID_FILE.write_text(str(process.pid))
    print(f"cassandra: starting pid {process.pid} (log {LOG_DIR.relative_to(REPO)}/system.log)", flush=True)
    return wait_until_ready(process.pid, began)


def wait_until_ready(pid: int, began: float) -> int:
    from tqdm import tqdm

    with tqdm(total=START_TIMEOUT_S, unit="s", desc="", file=sys.stdout,
              bar_format="cassandra starting: {elapsed} {bar:20} {desc}") as bar:
        while time.monotonic() - began < START_TIMEOUT_S:
            if running_pid() != pid:
                bar.close()
                print(f"cassandra: process {pid} exited during startup; see {LOG_DIR}/system.log and "
                      f"{LOG_DIR}/stdout.log", file=sys.stderr)
                return 1
            if cql_answers():
                bar.close()
                print(f"cassandra: ready on {HOST}:{CQL_PORT} after {time.monotonic() - began:.1f}s, "
                      f"RSS {rss_mib(pid):.0f} MiB (pid {pid})")
                return 0
            bar.set_description_str(last_log_line(), refresh=False)
            bar.n = min(START_TIMEOUT_S, int(time.monotonic() - began))
            bar.refresh()
            time.sleep(1.0)
    print(f"cassandra: not answering after {START_TIMEOUT_S}s; see {LOG_DIR}/system.log", file=sys.stderr)
    return 1


def stop() -> int:
    pid = running_pid()
    if not pid:
        print("cassandra: not running")
        PID_FILE.unlink(missing_ok=True)
        return 0
    os.kill(pid, signal.SIGTERM)  # Cassandra's shutdown hook drains memtables and closes the commit log
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and running_pid() == pid:
        time.sleep(0.5)
    if running_pid() == pid:
        print(f"cassandra: pid {pid} did not stop in {STOP_TIMEOUT_S}s; killing it", file=sys.stderr)
        os.kill(pid, signal.SIGKILL)
    PID_FILE.unlink(missing_ok=True)
    print(f"cassandra: stopped (pid {pid})")
    return 0


def status() -> int:
    pid = running_pid()
    ok = bool(pid) and cql_answers()
    rss = f", RSS {rss_mib(pid):.0f} MiB" if pid else ""
    print(f"cassandra: {'answering' if ok else 'not answering'} on {HOST}:{CQL_PORT} (pid {pid}{rss})")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["fetch", "start", "stop", "status"])
    command = parser.parse_args().command
    return {"fetch": fetch, "start": start, "stop": stop, "status": status}[command]()


if __name__ == "__main__":
    sys.exit(main())
