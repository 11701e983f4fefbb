"""Atomic file writes: write a temporary file beside the target, then rename it into place,
so a killed run never leaves a half-written file under the final name."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cmt.integrity import ArtifactError


class WriteError(ArtifactError):
    """An artifact could not be written (disk full, read-only, no permission); names the file."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        # A write to a full disk raises without the file's name (only errno 28): add it.
        reason = err.strerror or str(err)
        raise WriteError(f"{path}: cannot write ({reason})") from err
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def make_dir(path: str | Path) -> Path:
    """``path`` and its parents, created if missing; a failure names the directory."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WriteError(f"{path}: cannot create the directory ({err.strerror or err})") from err
    return path


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | Path, payload: Any) -> None:
    write_text(path, json.dumps(payload, indent=2) + "\n")


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> None:
    """Write a matplotlib figure atomically (its format from the suffix) and close it."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    write_bytes(path, buf.getvalue())
