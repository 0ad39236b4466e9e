"""Child processes die with their parent, even when the parent is killed with
SIGKILL and so cannot stop them itself: Linux's PR_SET_PDEATHSIG asks the
kernel to signal the child when its parent exits. Used for the `make run`
supervisor's services and gateway, the gateway's Envoy, and the face-pipeline
worker processes of ingest and the classifier.

The signal is sent when the *thread* that created the child exits, so create
children from a thread that lives as long as they should (the main thread, or
a server thread that only ends at shutdown)."""
from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1

# Resolved once in the parent: a preexec_fn runs between fork and exec, where
# as little as possible should happen.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent(sig: int = signal.SIGTERM, parent_pid: int | None = None) -> None:
    """In the child: have the kernel send `sig` when the parent exits. If
    `parent_pid` is given and that parent is already gone (it died before this
    call), the signal is sent now."""
    if _prctl is None:
        return
    if _prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)


def preexec_die_with_parent(sig: int = signal.SIGTERM):
    """A Popen preexec_fn that ties the child to this process."""
    parent_pid = os.getpid()
    return lambda: die_with_parent(sig, parent_pid)
