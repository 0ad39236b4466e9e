"""`visage backup [-o FILE]` (through QueryService.Backup: from a pod, or from outside the
cluster through the gateway with --address) and `visage restore FILE` (straight into the
store VISAGE_STORE names, with the services stopped). See visage.store.archive and README
"Backups and moving to Cassandra"."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

from visage.config import Config
from visage.store import StoreError, archive, open_store
from visage.v1 import query_pb2


def key_path(args: argparse.Namespace) -> Path:
    config = Config.from_env()
    return Path(args.key_file or config.backup_key_file or config.data_dir / "backup.key")


def register(subparsers, address_option, call) -> None:
    backup = subparsers.add_parser("backup", help="write an encrypted archive of the whole system (operator)")
    address_option(backup)
    backup.add_argument("-o", "--output", type=Path, default=None,
                        help="archive to write (default visage-backup-DATE-TIME.vbk)")
    backup.add_argument("--key-file", type=Path, default=None,
                        help="AES-256 key (default VISAGE_BACKUP_KEY_FILE; made when missing)")
    backup.set_defaults(run=lambda args: call(args, lambda stub: write_backup(stub, args)))

    restore = subparsers.add_parser("restore", help="restore an archive into the configured store "
                                                    "(VISAGE_STORE ...; stop the services first)")
    restore.add_argument("archive", type=Path)
    restore.add_argument("--key-file", type=Path, default=None, help="its key (default VISAGE_BACKUP_KEY_FILE)")
    restore.add_argument("--force", action="store_true",
                         help="restore into a store that already holds data (the archive is merged into it)")
    restore.add_argument("--erasures-from", type=Path, action="append", default=[], metavar="NEWER_ARCHIVE",
                         help="also apply the erasure ledger of this (newer) archive; repeatable")
    restore.set_defaults(run=run_restore)


def write_backup(stub, args: argparse.Namespace) -> None:
    output = args.output or Path(time.strftime("visage-backup-%Y%m%d-%H%M%S.vbk"))
    path = key_path(args)
    if path.exists():
        key = archive.read_key(path)
    else:
        key = archive.new_key(path)
        print(f"made a new backup key {path}: keep a copy apart from the archives (without it they cannot be "
              "restored)", file=sys.stderr)
    with tqdm(unit="face", desc="backup", file=sys.stderr) as progress:
        def chunks():
            for chunk in stub.Backup(query_pb2.BackupRequest()):
                progress.total = chunk.faces_total
                progress.set_postfix_str(chunk.phase, refresh=False)
                progress.update(chunk.faces_done - progress.n)
                yield chunk.data
        archive.save(chunks(), output, key)
    print(f"wrote {output} (encrypted with {path})")


def run_restore(args: argparse.Namespace) -> int:
    config = Config.from_env()
    path = key_path(args)
    key = archive.read_key(path) if path.exists() else None
    try:
        store = open_store(config)
    except StoreError as error:
        print(f"cannot open the {config.store} store: {error}", file=sys.stderr)
        return 2
    try:
        with tqdm(unit="face", desc="restore", file=sys.stderr) as progress:
            def show(state: archive.Progress) -> None:
                progress.total = state.faces_total
                progress.set_postfix_str(state.phase, refresh=False)
                progress.update(state.faces_done - progress.n)
            counts = archive.restore(store, lambda: archive.open_plain(args.archive, key), force=args.force,
                                     erasures_from=[lambda p=p: archive.open_plain(p, key)
                                                    for p in args.erasures_from],
                                     progress=show)
    except (archive.ArchiveError, OSError) as error:
        print(f"restore refused: {error}", file=sys.stderr)
        return 1
    except StoreError as error:
        print(f"the {config.store} store failed during the restore ({error}); run the same command again "
              "to finish it", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(f"restored into the {config.store} store: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))
    return 0
