"""The `visage` command. Each part of the system adds its own subcommands
(ingest, train, reclassify, deploy, ...) through a `register(subparsers)`
function in its package's `cli` module."""
from __future__ import annotations

import argparse
import importlib
import sys

# Packages whose `cli` module registers subcommands, in help order.
COMMAND_MODULES = ["visage_ingest.cli", "visage_trainer.cli", "visage_classifier.cli", "visage_query.cli",
                   "visage_ingest.faces_cli", "visage.auth.cli"]  # faces_cli joins visage_query.cli's `faces`


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visage", description="Visage face recognition")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:  # a real import error inside the module
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
