"""Quiet setup (issue 28): `make test` and `make run` run their setup through
scripts/logged.py, which shows a line per long step (with how long it takes) and keeps the
thousands of other lines in a log file; on failure it shows the log's tail and its path and
exits with the command's code, so CI (.ci/run: `make test`) still shows what broke."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOGGED = REPO / "scripts" / "logged.py"


def run_logged(tmp_path: Path, script: str) -> tuple[subprocess.CompletedProcess, Path]:
    log = tmp_path / "build" / "setup.log"
    result = subprocess.run([sys.executable, str(LOGGED), "--log", str(log), "--title", "setting up",
                             "--", "bash", "-c", script], capture_output=True, text=True, timeout=120)
    return result, log


def test_a_chatty_setup_shows_its_announced_steps_only_and_logs_every_line(tmp_path):
    script = ('echo "==> Chromium from Debian (~3 min)"; for i in $(seq 3200); do echo "go: downloading $i"; done; '
              'echo "==> grpcurl from the Go module proxy (~2 min the first time)"; echo "warning: chatter" >&2')
    result, log = run_logged(tmp_path, script)
    assert result.returncode == 0, result.stdout + result.stderr
    screen = result.stdout.splitlines()
    assert len(screen) == 4, screen  # the title, the two steps, "done"
    assert screen[0] == f"==> setting up (details: {log})"
    assert screen[1:3] == ["    Chromium from Debian (~3 min)", "    grpcurl from the Go module proxy (~2 min the first time)"]
    assert re.fullmatch(r"    done in \d+ s", screen[3]), screen
    assert result.stderr == ""
    logged = log.read_text()
    assert "go: downloading 3200" in logged and "warning: chatter" in logged and logged.count("\n") >= 3203


def test_a_failing_setup_shows_the_log_tail_and_path_and_keeps_the_exit_code(tmp_path):
    script = 'echo "==> kube-apiserver (~20 min)"; for i in $(seq 500); do echo "compiling $i"; done; ' \
             'echo "error: no space left on device" >&2; exit 3'
    result, log = run_logged(tmp_path, script)
    assert result.returncode == 3
    screen = result.stdout
    assert "FAILED (exit code 3)" in screen and "error: no space left on device" in screen
    assert "compiling 499" in screen and "compiling 100\n" not in screen  # the tail, not the whole log
    assert screen.rstrip().endswith(f"the whole log: {log}")
    assert len(screen.splitlines()) < 70


def test_make_test_and_make_run_set_up_through_the_logger():
    makefile = (REPO / "Makefile").read_text()
    for target, step in (("test", "test-setup"), ("run", "gen openapi")):
        recipe = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
        assert "$(LOGGED) --log build/" in recipe and step in recipe, recipe


def test_every_download_or_long_build_in_the_makefiles_says_what_it_is_and_how_long():
    """A recipe that downloads or builds for minutes announces itself ("==> … (~N min …)")."""
    long_steps = re.compile(r"\b(go install|apt-get install|npm ci|pip install|scripts/kube_apiserver.py build)\b")
    unannounced = []
    for makefile in [REPO / "Makefile", *sorted((REPO / "mk").glob("*.mk"))]:
        for recipe in re.findall(r"^[^\t#\n][^\n]*:[^\n]*\n((?:\t[^\n]*\n)+)", makefile.read_text(), re.M):
            if long_steps.search(recipe) and not re.search(r'==> [^"]*~\d+ min', recipe) \
                    and "kube_apiserver.py" not in recipe:  # that script announces its own build, when it builds
                unannounced.append(f"{makefile.name}: {recipe.strip()[:100]}")
    assert not unannounced, unannounced


def test_the_slow_builds_in_scripts_announce_themselves():
    assert '==> {component.binary}' in (REPO / "scripts" / "kube_apiserver.py").read_text()
    assert '"==> cassandra:' in (REPO / "scripts" / "cassandra.py").read_text()
