"""Named fault points for the chaos run (``make chaos``): kill this worker at a chosen spot.

A no-op unless ``CHAOS_FAULT_DIR`` is set. The chaos driver arms a point by creating a file
named after it in that folder; the first worker process to reach the point claims the file
(an atomic rename, so one arming kills one process once) and SIGKILLs itself, exactly as a
crash there would. Points sit where a crash hurts most: after a commit but before the
activity reports (so Temporal runs it again), inside a refund, inside dealer assignment,
inside a compensation.
"""

import os
import signal
from pathlib import Path


def point(name: str) -> None:
    """Die here if the chaos driver armed ``name``; otherwise do nothing."""
    folder = os.environ.get("CHAOS_FAULT_DIR")
    if not folder:
        return
    armed = Path(folder) / name
    try:
        armed.rename(armed.with_name(f"{name}.fired.{os.getpid()}"))
    except OSError:
        return  # not armed, or another process claimed it first
    os.kill(os.getpid(), signal.SIGKILL)
