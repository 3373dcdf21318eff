"""One run per workdir: an advisory `flock` on `<workdir>/.lock`.

The operating system drops the lock when the process ends, however it ends (SIGKILL, a
crash, a preempted node), so a dead run never leaves it stuck. In a multi-process launch
process 0 holds it for all of them.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time

import jax

LOCK_FILE = ".lock"


class WorkdirInUse(RuntimeError):
  """Another live run holds the workdir."""


class WorkdirLock:
  """Context manager: holds the workdir's lock, or raises WorkdirInUse naming the holder."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self.file = None

  def __enter__(self):
    if jax.process_index() != 0:
      return self
    self.file = open(self.path, "a+")
    try:
      fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self.file.seek(0)
      holder = self.file.read().strip() or "another process"
      self.file.close()
      self.file = None
      raise WorkdirInUse(
          f"{os.path.dirname(self.path)} is in use by a running training job ({holder}). "
          "Wait for it to finish, stop it, or choose another --workdir.") from None
    self.file.seek(0)
    self.file.truncate()
    self.file.write(f"pid {os.getpid()} on {socket.gethostname()}, started "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    self.file.flush()
    return self

  def __exit__(self, *exc):
    if self.file is not None:
      fcntl.flock(self.file, fcntl.LOCK_UN)
      self.file.close()
      self.file = None
