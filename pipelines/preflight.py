"""What a stage checks before any work, so that a bad value or a corrupted input creates no
MLflow run, starts no Prefect server and writes nothing: its arguments against the config
(a :class:`~cmt.config.ConfigError`, exit status 2) and the content hash of every file it
will read (an :class:`~cmt.integrity.ArtifactError`, exit status 1)."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

from cmt.checkpoint import safe_load
from cmt.config import ConfigError
from cmt.data.hdf5 import verify_hdf5
from cmt.integrity import ArtifactError, read_json


def require_member(option: str, value: Any, allowed: Collection[Any], key: str) -> None:
    """A stage argument must be one of the config's values (DVC runs one stage per value)."""
    if value not in allowed:
        raise ConfigError(f"{option} {value!r}: not one of {key} {list(allowed)}")


def dataset_files(data_dir: str | Path) -> list[Path]:
    """The files of a dataset directory that the stages read (``demos.hdf5`` if present)."""
    from cmt.benchmarks.base import DEMOS_FILE, REFERENCES_FILE, TRAIN_FILE

    data_dir = Path(data_dir)
    demos = data_dir / DEMOS_FILE
    return [data_dir / TRAIN_FILE, data_dir / REFERENCES_FILE, *([demos] if demos.exists() else [])]


def verify_file(path: str | Path) -> None:
    """Check one artifact by its kind (``.pt``, ``.hdf5``, sealed ``.json``) against its
    recorded content hash; raises :class:`ArtifactError` naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: file not found")
    if path.suffix == ".pt":
        safe_load(path)
    elif path.suffix in (".hdf5", ".h5"):
        verify_hdf5(path)
    elif path.suffix == ".json":
        read_json(path)
    else:
        raise ArtifactError(f"{path}: no integrity check for '{path.suffix}' files")


def verify_inputs(*groups: Iterable[str | Path]) -> None:
    """Check every input file against its recorded content hash; the first bad one raises."""
    for group in groups:
        for path in group:
            verify_file(path)
