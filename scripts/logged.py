"""Runs a setup command quietly: every line it prints goes to a log file, and only the
lines that announce a step ("==> Chromium from Debian (~2 min the first time)") reach the
terminal, so `make test` and `make run` say what they are doing in a few lines instead of
thousands. On failure the terminal gets the log's last lines and its path; the exit code is
the command's (CI sees both).

    python3 scripts/logged.py --log build/setup.log --title "setting up the tests" -- make test-setup

Recipes announce a long step with `@echo "==> what (how long)"`; scripts print the same prefix.
Standard library only: it runs before the project's venv exists."""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ANNOUNCE = "==> "
TAIL_LINES = 60


def duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


def run(command: list[str], log_path: Path, title: str, out=sys.stdout) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"{ANNOUNCE}{title} (details: {log_path})", file=out, flush=True)
    with log_path.open("w", errors="replace") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              errors="replace", bufsize=1) as process:
            for line in process.stdout:
                log.write(line)
                log.flush()  # a person (or CI) can `tail -f` it meanwhile
                if line.startswith(ANNOUNCE):
                    print(f"    {line[len(ANNOUNCE):].rstrip()}", file=out, flush=True)
        code = process.returncode
    if code == 0:
        print(f"    done in {duration(time.monotonic() - started)}", file=out, flush=True)
        return 0
    tail = log_path.read_text(errors="replace").splitlines()[-TAIL_LINES:]
    print(f"FAILED (exit code {code}) after {duration(time.monotonic() - started)}; the last {len(tail)} lines "
          f"of {log_path}:", file=out)
    print("\n".join(f"  | {line}" for line in tail), file=out)
    print(f"the whole log: {log_path}", file=out, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", type=Path, required=True, help="file that gets every line")
    parser.add_argument("--title", required=True, help="what the command does, in a few words")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (after --)")
    return run(command, args.log, args.title)


if __name__ == "__main__":
    sys.exit(main())
