"""A temporary Prefect server shared by the stages of a pipeline run.

Without ``PREFECT_API_URL`` Prefect starts a temporary server inside every process that runs a
flow and stops it at the end: about 10 s (a second Python process, its imports and database
checks) for every stage of a ``dvc repro``. Stages instead share one such server: the first
stage that needs it starts it, later stages find it through ``PREFECT_HOME/cmt-server.json``,
and it stops itself once no stage has used it for ``CMT_PREFECT_SERVER_IDLE_S`` seconds
(default 60; ``0`` goes back to Prefect's own server per stage). It is the server Prefect would
start (same app, settings, database ``PREFECT_HOME/prefect.db``, no UI), bound to 127.0.0.1 on
a free port.

Two lock files coordinate it, so a crashed stage or server leaves nothing to clean up (the
kernel drops a dead process's locks): ``cmt-server.lock``, held briefly while a stage finds or
starts the server, and ``cmt-server.lease``, held shared by every stage using it. The server
stops only when it can take both.

    python -m pipelines.server stop     # stop the shared server now (PREFECT_HOME's)
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

IDLE_ENV = "CMT_PREFECT_SERVER_IDLE_S"
DEFAULT_IDLE_S = 60.0
STATE = "cmt-server.json"  # {"url": ..., "pid": ...} of the running server
START_LOCK, LEASE, LOG = "cmt-server.lock", "cmt-server.lease", "cmt-server.log"


def idle_seconds() -> float:
    """How long the shared server waits for the next stage; 0 disables sharing."""
    raw = os.environ.get(IDLE_ENV, "")
    try:
        return float(raw) if raw else DEFAULT_IDLE_S
    except ValueError:
        raise ValueError(f"{IDLE_ENV}={raw!r}: expected a number of seconds") from None


def prefect_home() -> Path:
    from prefect.settings import get_current_settings

    return Path(get_current_settings().home).expanduser()


def _healthy(url: str) -> bool:
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a local server
    try:
        with no_proxy.open(f"{url}/health", timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


def _running_url(home: Path) -> str | None:
    """The URL of the shared server if its state file names one that answers."""
    try:
        url = json.loads((home / STATE).read_text())["url"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return url if _healthy(url) else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(home: Path, idle: float, timeout: float) -> tuple[str, int]:
    """Start the server in its own session (it outlives this stage) and wait until it answers."""
    from prefect.settings import get_current_settings

    env = {
        **os.environ,
        # What Prefect's own temporary server runs with: no UI, ephemeral services only.
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        **get_current_settings().to_environment_variables(exclude_unset=True),
    }
    env.pop("PREFECT_API_URL", None)
    last_error = ""
    for _ in range(3):  # the port may be taken between choosing and binding it
        port = _free_port()
        with open(home / LOG, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pipelines.server", "serve"]
                + ["--port", str(port), "--idle", str(idle)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # not stopped with the stage's process group
                cwd=Path(__file__).resolve().parents[1],
            )
        url = f"http://127.0.0.1:{port}/api"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if _healthy(url):
                return url, proc.pid
            time.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
            last_error = f"no answer within {timeout:.0f} s"
        else:
            last_error = f"exit status {proc.returncode}"
    raise RuntimeError(
        f"the shared temporary Prefect server did not start ({last_error}); see {home / LOG}"
    )


@contextlib.contextmanager
def _lock(path: Path, mode: int) -> Iterator[IO[str]]:
    with open(path, "a") as fh:
        fcntl.flock(fh, mode)
        yield fh


@contextlib.contextmanager
def shared_server(timeout: float) -> Iterator[str]:
    """Find or start the shared server; yields its API URL and holds a lease on it meanwhile."""
    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    idle = idle_seconds()
    with _lock(home / START_LOCK, fcntl.LOCK_EX):
        url = _running_url(home)
        if url is None:
            url, pid = _start(home, idle, timeout)
            tmp = home / f"{STATE}.tmp"
            tmp.write_text(json.dumps({"url": url, "pid": pid}))
            tmp.replace(home / STATE)
            print(
                f"Starting temporary server on {url}, shared by the stages that follow "
                f"until none has used it for {idle:.0f} s ({IDLE_ENV})",
                file=sys.stderr,
            )
        else:
            print(f"Using the shared temporary server on {url}", file=sys.stderr)
        lease = open(home / LEASE, "a")  # noqa: SIM115 - held until the stage ends
        fcntl.flock(lease, fcntl.LOCK_SH)
    try:
        yield url
    finally:
        lease.close()


def _try_lock(path: Path) -> IO[str] | None:
    fh = open(path, "a")  # noqa: SIM115 - the caller keeps or closes it
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh


def _watch(server: object, home: Path, idle: float) -> None:
    """Stop the server once no stage has held a lease (or been starting) for ``idle`` s."""
    unused_since: float | None = None
    while True:
        time.sleep(1.0)
        start = _try_lock(home / START_LOCK)
        lease = _try_lock(home / LEASE) if start else None
        if start is None or lease is None:
            unused_since = None
        elif unused_since is None:
            unused_since = time.monotonic()
        elif time.monotonic() - unused_since >= idle:
            # Still holding both locks: no stage can pick this server up from here on.
            (home / STATE).unlink(missing_ok=True)
            server.should_exit = True  # type: ignore[attr-defined]
            return
        for fh in (lease, start):
            if fh is not None:
                fh.close()


def serve(port: int, idle: float) -> None:
    """Run Prefect's server app on 127.0.0.1:``port`` until it has been unused for ``idle`` s."""
    import uvicorn

    home = prefect_home()
    config = uvicorn.Config(
        "prefect.server.api.server:create_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        log_level="error",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    threading.Thread(target=_watch, args=(server, home, idle), daemon=True).start()
    server.run()


def stop() -> bool:
    """Stop the shared server of this ``PREFECT_HOME``, if one runs; True if it did."""
    home = prefect_home()
    try:
        pid = int(json.loads((home / STATE).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    with _lock(home / START_LOCK, fcntl.LOCK_EX):
        (home / STATE).unlink(missing_ok=True)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    return True


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="run the server (started by the stages)")
    run.add_argument("--port", type=int, required=True)
    run.add_argument("--idle", type=float, default=DEFAULT_IDLE_S)
    sub.add_parser("stop", help="stop the shared server")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.port, args.idle)
    else:
        print("stopped" if stop() else "no shared server is running")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
