"""Processes under faults: `make run` refuses ports another process holds (and
says which), restarts a service killed with SIGKILL, and when the supervisor
itself is killed with SIGKILL nothing it started keeps running; ingest's face
workers die with ingest."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from visage.mesh import wait_serving
from visage.store.sqlite import SqliteStore

from test_mesh import MESH_READY_SECONDS, free_ports, wait_for_login_link

GONE_SECONDS = 60  # generous: processes told to stop may first finish a graceful shutdown
NAMES = ["ingest", "classifier", "trainer", "query", "gateway"]


def children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(child) for child in (task / "children").read_text().split()}
        except OSError:  # the task or process ended meanwhile
            pass
    return found


def descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        for child in children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.2)


def mesh_env(tmp_path: Path, ports: dict[str, int]) -> dict[str, str]:
    return {**os.environ, "VISAGE_DATA_DIR": str(tmp_path / "data"), "VISAGE_WORKERS": "1",
            **{f"VISAGE_{name.upper()}_PORT": str(port) for name, port in ports.items()}}


def test_make_run_refuses_ports_taken_by_another_process_and_names_them(tmp_path):
    ports = dict(zip(NAMES, free_ports(len(NAMES))))
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports["query"]))
        squatter.listen()
        result = subprocess.run([sys.executable, "-m", "visage.mesh"], env=mesh_env(tmp_path, ports),
                                capture_output=True, text=True, timeout=MESH_READY_SECONDS)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"query {ports['query']}" in result.stderr and "already listens" in result.stderr
    for name in ("ingest", "gateway"):  # nothing was started
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", ports[name])) != 0, name


def test_a_killed_service_is_restarted_and_a_killed_supervisor_leaves_nothing_running(tmp_path):
    ports = dict(zip(NAMES, free_ports(len(NAMES))))
    log = (tmp_path / "mesh.log").open("w")
    mesh = subprocess.Popen([sys.executable, "-m", "visage.mesh"], env=mesh_env(tmp_path, ports),
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_login_link(f"http://127.0.0.1:{ports['gateway']}", mesh, tmp_path / "mesh.log")
        query_pid = next(pid for pid in children(mesh.pid) if "visage_query" in command_line(pid))
        os.kill(query_pid, signal.SIGKILL)
        wait_until(lambda: not alive(query_pid), GONE_SECONDS, "the killed query service is gone")
        wait_until(lambda: any("visage_query" in command_line(pid) for pid in children(mesh.pid)),
                   MESH_READY_SECONDS, "the supervisor restarts the query service")
        wait_serving(f"127.0.0.1:{ports['query']}", MESH_READY_SECONDS)
        assert mesh.poll() is None, "the supervisor stopped the mesh instead of restarting one service"

        everything = descendants(mesh.pid)  # services, gateway, Envoy, face workers
        assert len(everything) >= 6, [command_line(pid) for pid in everything]
        mesh.kill()
        mesh.wait(timeout=30)
        wait_until(lambda: not any(alive(pid) for pid in everything), GONE_SECONDS,
                   "every process the supervisor started is gone: "
                   + ", ".join(command_line(pid)[:60] for pid in everything if alive(pid)))
        for name, port in ports.items():
            with socket.socket() as probe:
                assert probe.connect_ex(("127.0.0.1", port)) != 0, f"{name} still listening on {port}"
    finally:
        if mesh.poll() is None:
            mesh.send_signal(signal.SIGTERM)
            mesh.wait(timeout=60)
        log.close()


def test_face_workers_die_with_a_killed_ingest(tmp_path):
    port = free_ports(1)[0]
    env = mesh_env(tmp_path, {"ingest": port})
    (tmp_path / "data").mkdir()
    store = SqliteStore(tmp_path / "data" / "visage.db")
    store.migrate()
    store.close()
    ingest = subprocess.Popen([sys.executable, "-m", "visage_ingest"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_serving(f"127.0.0.1:{port}", MESH_READY_SECONDS, ingest)
        workers = descendants(ingest.pid)
        assert workers, "ingest started no face worker process"
        ingest.kill()
        ingest.wait(timeout=30)
        wait_until(lambda: not any(alive(pid) for pid in workers), GONE_SECONDS, "the face workers are gone")
    finally:
        if ingest.poll() is None:
            ingest.kill()
            ingest.wait()
