"""A stage's child processes end with the stage, even when it is killed with SIGKILL.

Prefect's temporary API server and a local Dask cluster run as child processes of a stage;
a stage killed with SIGKILL cannot stop them, and they would keep running (and listening).
:func:`guard` starts this module as a small process of its own that holds the read end of a
pipe whose write end only the stage holds. However the stage ends, the kernel closes that
end, the read returns end-of-file, and the watchdog stops the processes it last saw below the
stage: SIGTERM, then SIGKILL after a grace period. Linux only (``/proc``); elsewhere
:func:`guard` does nothing.

A process may also leave the watchdog a command to run after a death it could not clean up
after itself (:func:`on_exit`): the pipeline registers its recovery (:mod:`pipelines.recovery`)
and withdraws it when it ends normally.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

POLL_S = 0.5  # how often the watchdog lists the stage's descendants
GRACE_S = 5.0  # between SIGTERM and SIGKILL
ON_EXIT_TIMEOUT_S = 300.0

_write_end: list[int] = []  # held open for the life of the stage, never written


def _on_exit_file(pid: int) -> Path:
    """Where process ``pid`` leaves its watchdog a command (:func:`on_exit`)."""
    return Path(tempfile.gettempdir()) / f"cmt-watchdog-{os.getuid()}-{pid}.json"


def on_exit(cmd: list[str] | None) -> None:
    """Have the watchdog run ``cmd`` (an argument list) if this process dies before calling
    ``on_exit(None)``, which withdraws it. Starts the watchdog if needed."""
    guard()
    path = _on_exit_file(os.getpid())
    if cmd is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"cmd": cmd, "cwd": str(Path.cwd())}))
    tmp.replace(path)


def guard() -> None:
    """Start the watchdog of this process, once per process."""
    if _write_end or not Path("/proc/self").exists():
        return
    read, write = os.pipe()  # not inheritable: the stage's children never hold `write`
    subprocess.Popen(
        [sys.executable, "-m", "pipelines.watchdog", str(os.getpid()), str(read)],
        pass_fds=(read,),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # outside the stage's process group and its signals
    )
    os.close(read)
    _write_end.append(write)


def _stop(tokens: dict[int, str]) -> None:
    from cmt.procs import is_dead

    alive = {pid: t for pid, t in tokens.items() if not is_dead(t)}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + GRACE_S
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = {pid: t for pid, t in alive.items() if not is_dead(t)}
        if not alive:
            return


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _same_session(pid: int, session: int | None) -> bool:
    """A child that started a session of its own was detached on purpose: the shared Prefect
    server (pipelines/server.py) outlives the stage that started it and stops itself once
    idle, also after a SIGKILL of that stage (the kernel drops the stage's lease)."""
    return session is None or _session(pid) == session


def watch(stage_pid: int, fd: int) -> None:
    """Follow the descendants of ``stage_pid`` until ``fd`` reaches end-of-file, then stop them."""
    from cmt.procs import descendants, process_token

    me = os.getpid()
    session = _session(stage_pid)
    seen: dict[int, str] = {}
    while True:
        ready, _, _ = select.select([fd], [], [], POLL_S)
        if ready and not os.read(fd, 1):
            break
        seen = {
            pid: process_token(pid)
            for pid in descendants(stage_pid)
            if pid != me and _same_session(pid, session)
        }
    _stop(seen)
    _run_on_exit(stage_pid)


def _run_on_exit(stage_pid: int) -> None:
    """The command the stage left (:func:`on_exit`), once its processes have stopped."""
    path = _on_exit_file(stage_pid)
    try:
        spec = json.loads(path.read_text())
        path.unlink()
    except (OSError, ValueError):
        return  # none left: the process ended normally, or never asked
    try:
        subprocess.run(
            spec["cmd"],
            cwd=spec["cwd"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=ON_EXIT_TIMEOUT_S,
        )
    except (OSError, KeyError, TypeError, subprocess.TimeoutExpired):
        pass  # the next start of the pipeline recovers what this could not


if __name__ == "__main__":
    watch(int(sys.argv[1]), int(sys.argv[2]))
