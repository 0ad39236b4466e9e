"""The data directory holds faces, embeddings, photos and the signing key:
only its owner may read it. Directories 0700, files 0600, both when they are
created and on every start (a directory an older version made 0755 with 0644
files is fixed: `secure_tree`)."""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: str | Path) -> Path:
    """Creates the directory (and missing parents) 0700; an existing one becomes 0700."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    _chmod_unless_link(path, DIR_MODE)
    return path


def private_file(path: str | Path) -> Path:
    """Creates the file empty if it is missing, 0600 from its first byte; an existing one becomes 0600.
    (SQLite gives its -wal and -shm files the mode of the database file.)"""
    path = Path(path)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        pass
    if path.is_file():  # not something else in its place (its opener says what is wrong)
        _chmod_unless_link(path, FILE_MODE)
    return path


def secure_tree(root: str | Path) -> Path:
    """The directory 0700 (created if missing) and everything under it: directories 0700,
    files 0600. Symbolic links are left alone (not followed)."""
    root = private_dir(root)
    for directory, subdirs, files in os.walk(root):
        for name in subdirs:
            _chmod_unless_link(Path(directory, name), DIR_MODE)
        for name in files:
            _chmod_unless_link(Path(directory, name), FILE_MODE)
    return root


def _chmod_unless_link(path: Path, mode: int) -> None:
    try:
        if not stat.S_ISLNK(os.lstat(path).st_mode):
            os.chmod(path, mode)
    except FileNotFoundError:  # removed meanwhile (a temporary file), or never there
        pass
    except OSError as error:  # a read-only mount (a Kubernetes Secret), a file of another owner
        log.warning("cannot make %s private (mode %o): %s", path, mode, error)


def private_sqlite(path: str | Path) -> Path:
    """A SQLite database's directory 0700 and its file 0600 before SQLite opens it (SQLite
    creates -wal and -shm with the database file's mode); existing -wal, -shm and
    -journal files (an older version's 0644) become 0600."""
    path = Path(path)
    private_dir(path.parent)
    private_file(path)
    for suffix in ("-wal", "-shm", "-journal"):
        _chmod_unless_link(Path(f"{path}{suffix}"), FILE_MODE)
    return path
