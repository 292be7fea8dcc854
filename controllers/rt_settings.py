"""Optional operating-system settings for a real-time loop: SCHED_FIFO, CPU affinity, mlockall.

Each one is tried on its own and reported in one line; where the system does not permit it (EPERM
for an unprivileged user, a missing call on another OS) the loop still runs, with a message that
says what was not applied and how to allow it. A controller that refused to start without root
would be switched off in the field instead of running a little less deterministically.

Board-side module: standard library only, Python 3.10.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os

log = logging.getLogger(__name__)

_MCL_CURRENT, _MCL_FUTURE = 1, 2  # <sys/mman.h> on Linux


def apply(sched_fifo_priority: int = 0, cpu_affinity=(), lock_memory: bool = False) -> list[str]:
    """Apply what was asked (0, () and False ask for nothing, as in the settings' defaults);
    returns one message per setting (applied or why not)."""
    messages = []
    if cpu_affinity:
        messages.append(_affinity(tuple(int(c) for c in cpu_affinity)))
    if sched_fifo_priority:
        messages.append(_fifo(int(sched_fifo_priority)))
    if lock_memory:
        messages.append(_mlockall())
    for message in messages:
        (log.warning if message.startswith("not applied") else log.info)("%s", message)
    return messages


def _affinity(cpus: tuple[int, ...]) -> str:
    if not hasattr(os, "sched_setaffinity"):
        return f"not applied: CPU affinity {list(cpus)} (no sched_setaffinity on this OS)"
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as exc:
        return f"not applied: CPU affinity {list(cpus)}: {exc.strerror}; available CPUs: {sorted(os.sched_getaffinity(0))}"
    return f"applied: pinned to CPU(s) {list(cpus)}"


def _fifo(priority: int) -> str:
    if not 1 <= priority <= 99:
        return f"not applied: SCHED_FIFO priority {priority} (must be 1..99)"
    if not hasattr(os, "sched_setscheduler"):
        return f"not applied: SCHED_FIFO priority {priority} (no sched_setscheduler on this OS)"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except OSError as exc:
        if exc.errno == errno.EPERM:
            return (
                f"not applied: SCHED_FIFO priority {priority}: not permitted; run as root, grant "
                "CAP_SYS_NICE, or raise the rtprio limit (`ulimit -r`, systemd LimitRTPRIO=)"
            )
        return f"not applied: SCHED_FIFO priority {priority}: {exc.strerror}"
    return f"applied: SCHED_FIFO priority {priority}"


def _mlockall() -> str:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        rc = libc.mlockall(_MCL_CURRENT | _MCL_FUTURE)
    except (OSError, AttributeError) as exc:
        return f"not applied: locked memory (mlockall unavailable: {exc})"
    if rc != 0:
        err = ctypes.get_errno()
        if err in (errno.EPERM, errno.ENOMEM):
            return (
                "not applied: locked memory: not permitted or over the memlock limit; run as root, "
                "grant CAP_IPC_LOCK, or raise `ulimit -l` (systemd LimitMEMLOCK=infinity)"
            )
        return f"not applied: locked memory: {os.strerror(err)}"
    return "applied: all memory locked (mlockall)"
