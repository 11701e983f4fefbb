"""The benchmark registry: every setting's ``data`` section and the benchmark it builds.

Adding a benchmark is one module here (its ``data`` section and its :class:`Benchmark`), one
entry in :data:`DATA_SECTIONS` and one preset (docs/architecture.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Union

from pydantic import Field

from cmt.benchmarks.base import (
    Benchmark,
    Claim,
    Data,
    DataSection,
    Episodes,
    PromptData,
    Spaces,
)
from cmt.benchmarks.d4rl import D4RLData
from cmt.benchmarks.mujoco_meta import MujocoMetaData
from cmt.benchmarks.point_robot import PointRobotData
from cmt.benchmarks.smax import SmaxData

DATA_SECTIONS: tuple[type[DataSection], ...] = (
    PointRobotData,
    MujocoMetaData,
    D4RLData,
    SmaxData,
)
"""Every benchmark's ``data`` section; ``data.benchmark`` picks one."""

if TYPE_CHECKING:  # the fields every section has; pydantic sees the union
    DataConfig = DataSection
else:
    DataConfig = Annotated[Union[DATA_SECTIONS], Field(discriminator="benchmark")]  # noqa: UP007
"""The ``data`` section of ``params.yaml``: a discriminated union over the benchmarks, so each
holds only its own fields."""

DEFAULT_BENCHMARK = "point_robot"
"""``data.benchmark`` when the section does not name one (the embedded default)."""


def make_benchmark(cfg: DataSection) -> Benchmark:
    """The benchmark a validated ``data`` section describes."""
    return cfg.build()


__all__ = [
    "DATA_SECTIONS",
    "DEFAULT_BENCHMARK",
    "Benchmark",
    "Claim",
    "Data",
    "DataConfig",
    "DataSection",
    "Episodes",
    "PromptData",
    "Spaces",
    "make_benchmark",
]
