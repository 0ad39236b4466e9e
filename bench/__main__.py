"""`make bench`: runs every bench/bench_*.py script's main() in turn; each
prints its own table (candidate vs the baseline its issue names, as ratios);
then build/bench/report.html (bench.report) shows the figures benches wrote, with plots.
The load average is printed before and after each bench (and kept in the report).
`python -m bench store ingest` runs only those. `python -m bench store --nodes 3`:
the store bench on one Cassandra node vs a 3-node cluster instead (see bench_store)."""
from __future__ import annotations

import atexit
import importlib
import os
import pkgutil
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.rounds import load_average
from visage.auth import client as auth_client
from visage.auth.local import LocalIssuer
from visage.auth.roles import Role
from visage.auth.tokens import AuthConfig


def use_a_bench_issuer() -> None:
    """Every service a bench starts checks tokens: one local issuer for the run
    (VISAGE_AUTH_DIR, inherited by subprocesses) and an admin token for its clients."""
    if os.environ.get(auth_client.TOKEN_ENV):
        return
    auth_dir = tempfile.mkdtemp(prefix="visage-bench-auth-")
    atexit.register(shutil.rmtree, auth_dir, True)
    os.environ["VISAGE_AUTH_DIR"] = auth_dir
    issuer = LocalIssuer(AuthConfig.from_env()).ensure()
    os.environ[auth_client.TOKEN_ENV] = issuer.mint(Role.ADMIN, "bench", ttl_seconds=86400)


def main(selected: list[str]) -> int:
    if "--nodes" in selected:  # passed on to bench_store (an environment variable, as its other settings)
        at = selected.index("--nodes")
        os.environ["VISAGE_BENCH_STORE_NODES"] = selected[at + 1]
        selected = selected[:at] + selected[at + 2:]
    use_a_bench_issuer()
    names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name.startswith("bench_"))
    ran = []
    for name in names:
        if selected and name.removeprefix("bench_") not in selected:
            continue
        print(f"\n=== {name} === {load_average()}", flush=True)
        began, load_start = time.monotonic(), os.getloadavg()[0]
        importlib.import_module(f"bench.{name}").main()
        ran.append({"bench": name.removeprefix("bench_"), "seconds": time.monotonic() - began,
                    "load_start": load_start, "load_end": os.getloadavg()[0],
                    "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
        print(f"=== {name}: {ran[-1]['seconds']:.0f} s, {load_average()}", flush=True)
    from bench import report
    if ran:
        report.record_run(ran)
    if (page := report.write()) is not None:
        print(f"\nreport with plots: {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
