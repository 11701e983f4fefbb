"""How a failed command reports: one line that names the problem, the details in a log file.

Expected failures (a bad config value, a corrupt file, a non-finite number) carry messages that
already name the key or file, so they print just that. Anything else prints one line with the
exception and the path of a log file holding its traceback (and, for stages, the Prefect log
lines before it). Nothing here runs on import.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Iterable
from pathlib import Path

from cmt.integrity import ArtifactError, NonFiniteError

LOG_DIR_ENV = "CMT_LOG_DIR"


class Explained(RuntimeError):
    """A failure already explained elsewhere (a failed subprocess that printed its own error
    line): its message is the whole story."""


EXPECTED = (ArtifactError, NonFiniteError, Explained)
"""Failures whose message is the whole story: no traceback is kept for them."""


def log_dir() -> Path:
    """``$CMT_LOG_DIR``, else ``logs/`` in the repository root (``DVC_ROOT`` under DVC, whose
    ``--temp`` experiments run in a copy that is deleted afterwards)."""
    if given := os.environ.get(LOG_DIR_ENV):
        return Path(given)
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()) / "logs"


def one_line(text: str) -> str:
    """``text`` with its lines joined, for a message that must stay on one line."""
    return " | ".join(line.strip() for line in str(text).splitlines() if line.strip())


HEADLINE_LEN = 250
"""Length of a failure's headline: what a UI shows of a tag without cutting it off."""


def headline(message: str, limit: int = HEADLINE_LEN) -> str:
    """The start of ``message`` on one line, at most ``limit`` characters: a tag's value
    (``cmt.error``); the whole message goes to ``error.txt``."""
    text = one_line(message)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def describe(err: BaseException, joined: bool = True) -> str:
    """The message of an expected failure; ``Type: message`` of any other; on one line
    unless ``joined`` is false."""
    text = str(err) if isinstance(err, EXPECTED) else f"{type(err).__name__}: {err}"
    return one_line(text) if joined else text


def save_log(prog: str, err: BaseException, context: Iterable[str] = ()) -> Path | None:
    """Write ``context`` (earlier log lines) and the traceback of ``err`` to a new log file;
    its path, or None when it cannot be written (a full or read-only disk)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = log_dir() / f"{prog}-{stamp}-{os.getpid()}.log"
    text = "".join(f"{line}\n" for line in context)
    text += "".join(traceback.format_exception(err))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError:
        return None
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def report(prog: str, err: BaseException, context: Iterable[str] = ()) -> None:
    """Print the failure of ``prog`` as its last line on stderr (see module docstring)."""
    if isinstance(err, EXPECTED):
        print(f"error: {describe(err)}", file=sys.stderr)
        return
    log = save_log(prog, err, context)
    where = f"traceback in {log}" if log else "traceback not saved: the log could not be written"
    print(f"error: {prog} failed: {describe(err)} ({where})", file=sys.stderr)
