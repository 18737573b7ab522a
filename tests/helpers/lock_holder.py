"""Another process holding a run folder's lock (dapt.run_folder.locked), as a second `dapt run` would meet it."""

import subprocess
import sys
from pathlib import Path

HOLD = """
import sys, time
from dapt.run_folder import locked
with locked(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def hold_lock(run_dir: Path) -> subprocess.Popen:
    """Start a process that takes `run_dir`'s lock and keeps it (for 2 minutes, or until killed); return once it
    holds it."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder
