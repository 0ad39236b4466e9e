"""What `make run` (python -m visage.mesh) shows a new user (issue 28): a line per service,
then the sign-in link, last, printed only once the gateway answers through it (so opening it
at once works); the services' logs and Envoy's access log go to files under the data dir, and
VISAGE_RUN_SHOW_LOGS=1 shows them on the terminal instead. The link can name the page to open."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

from tests.waiting import wait_until
from visage.loopback import free_ports

NAMES = ["ingest", "classifier", "trainer", "query", "gateway"]
LINK = re.compile(r"^    (http://127\.0\.0\.1:\d+/)#token=([A-Za-z0-9._-]+)&open=/unknown$")


class Terminal:
    """`make run`'s stdout and stderr, read line by line as they are printed (as a person sees them)."""

    def __init__(self, process: subprocess.Popen):
        self.lines: list[str] = []
        self.lock = threading.Lock()
        self.readers = [threading.Thread(target=self._read, args=(stream,), daemon=True)
                        for stream in (process.stdout, process.stderr)]
        for reader in self.readers:
            reader.start()

    def _read(self, stream) -> None:
        for line in stream:
            with self.lock:
                self.lines.append(line.rstrip("\n"))

    def snapshot(self) -> list[str]:
        with self.lock:
            return list(self.lines)


def start_mesh(tmp_path: Path, **extra_env: str) -> tuple[subprocess.Popen, Terminal, dict[str, int]]:
    ports = dict(zip(NAMES, free_ports(len(NAMES))))
    env = {k: v for k, v in os.environ.items() if k not in ("VISAGE_AUTH_DIR", "VISAGE_TOKEN")}  # a new user
    env.update({"VISAGE_DATA_DIR": str(tmp_path / "data"), "VISAGE_WORKERS": "1", "PYTHONUNBUFFERED": "1",
                **{f"VISAGE_{name.upper()}_PORT": str(port) for name, port in ports.items()}, **extra_env})
    mesh = subprocess.Popen([sys.executable, "-m", "visage.mesh"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return mesh, Terminal(mesh), ports


def stop(mesh: subprocess.Popen) -> int:
    if mesh.poll() is None:
        mesh.send_signal(signal.SIGTERM)
    return mesh.wait(timeout=120)


def get(url: str, token: str = "") -> int:
    request = urllib.request.Request(url, headers={"authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status


def printed_link(mesh: subprocess.Popen, terminal: Terminal) -> re.Match:
    def link():
        assert mesh.poll() is None, "\n".join(terminal.snapshot())
        return next((m for line in terminal.snapshot() if (m := LINK.match(line))), None)
    return wait_until(link, "make run prints the sign-in link")


def test_make_run_shows_a_line_per_service_then_a_link_that_works_at_once_and_keeps_request_logs_off_screen(tmp_path):
    mesh, terminal, ports = start_mesh(tmp_path, VISAGE_RUN_OPEN="/unknown")
    try:
        link = printed_link(mesh, terminal)
        # At once, no retry: the link is printed only once the gateway answers through it.
        url, token = link.group(1), link.group(2)
        assert get(url) == 200 and get(f"{url}v1/personas", token) == 200

        screen = terminal.snapshot()
        services = [m.group(1) for line in screen if (m := re.match(r"  (\w+) +(serving on|http)", line))]
        assert services == ["query", "ingest", "trainer", "classifier", "gateway"], screen
        assert len(screen) <= 12, screen  # a heading, a line per service, the link and its sentence
        assert screen[-2].startswith("    http") and screen[-1] == "", screen
        assert not [line for line in screen if "warning" in line.lower() or line.startswith("{")], screen

        # Requests are logged, to the file, not the terminal: the link stays the last thing on it.
        access_log = tmp_path / "data" / "logs" / "gateway.log"
        wait_until(lambda: access_log.is_file() and '"/v1/personas"' in access_log.read_text(),
                   "Envoy logs the request to data/logs/gateway.log")
        assert terminal.snapshot() == screen
    finally:
        assert stop(mesh) == 0, "\n".join(terminal.snapshot())


def test_visage_run_show_logs_puts_the_request_log_on_the_terminal(tmp_path):
    mesh, terminal, _ = start_mesh(tmp_path, VISAGE_RUN_OPEN="/unknown", VISAGE_RUN_SHOW_LOGS="1")
    try:
        link = printed_link(mesh, terminal)
        assert get(f"{link.group(1)}v1/personas", link.group(2)) == 200

        def request_logged():
            for line in terminal.snapshot():
                if line.startswith("{") and json.loads(line).get("path") == "/v1/personas":
                    return True
            return False
        wait_until(request_logged, "Envoy's access log line for the request on the terminal")
        assert not (tmp_path / "data" / "logs" / "gateway.log").exists()
    finally:
        assert stop(mesh) == 0, "\n".join(terminal.snapshot())


def test_make_run_refuses_a_page_to_open_that_is_not_a_ui_path(tmp_path):
    mesh, terminal, _ = start_mesh(tmp_path, VISAGE_RUN_OPEN="javascript:alert(1)")
    assert mesh.wait(timeout=120) == 2
    for reader in terminal.readers:
        reader.join(timeout=60)
    assert any("VISAGE_RUN_OPEN" in line and "not a page of the UI" in line for line in terminal.snapshot())
