"""Which snapshots of a SMAX behaviour run become its poor, medium and good tiers
(docs/smax.md, "Tiers").

Every snapshot is evaluated on ``eval_episodes`` episodes while training, so the choice is
noisy: the best of fifty 128-episode evaluations overstates its snapshot, and a medium
candidate can be ten points off (on 5m_vs_6m the chosen medium won 24 % of its evaluation and
34 % of its 300 dataset episodes). With ``recheck_episodes``, the few candidates of each
choice are evaluated again on that many episodes, all on the same episode seeds, and the
choice is made on those numbers. They are recorded with the snapshots (``recheck``), so a
collect from the committed tier policies makes the same choice without the other snapshots'
actors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from cmt.behaviour.rollout import seed_from
from cmt.envs.smax import MultiAgentPolicy, run_episodes
from cmt.sections import PpoConfig

__all__ = ["Recheck", "choose_tiers", "rechecker", "select_tiers"]

Recheck = Callable[[int], tuple[float, float]]
"""Snapshot index -> (win rate, mean return) on the recheck episodes."""


def select_tiers(
    win_rates: np.ndarray,
    mean_returns: np.ndarray,
    medium_fraction: float,
    recheck: Recheck | None = None,
    candidates: int = 1,
) -> tuple[dict[str, int], str]:
    """Snapshot index of each policy tier, and the rule that chose Medium.

    Good: the best win rate (ties: the higher return, then the later snapshot). Poor: the
    first snapshot. Medium: among those strictly between, the win rate closest to
    ``medium_fraction`` of Good's (rule ``"win_rate"``); when Good never wins, the return
    closest to that fraction of the way from Poor to Good (rule ``"return"``).

    With ``recheck``, the ``candidates`` best snapshots are rechecked and Good is the best of
    them by the rechecked numbers; then the ``candidates`` nearest to the target set by
    Good's rechecked numbers are rechecked and Medium is the nearest of them.
    """
    wins = np.array(win_rates, dtype=np.float64)  # copies: rechecked numbers replace entries
    rets = np.array(mean_returns, dtype=np.float64)
    if wins.size < 3:
        raise ValueError(f"need at least 3 snapshots for 3 tiers, got {wins.size}")

    def update(indices: Sequence[int]) -> None:
        if recheck is not None:
            for i in indices:
                wins[i], rets[i] = recheck(int(i))

    best_first = np.lexsort((np.arange(wins.size), rets, wins))[::-1]
    pool = [int(i) for i in best_first[:candidates]]
    update(pool)
    good = max(pool, key=lambda i: (wins[i], rets[i], i))
    if good < 2:
        good = wins.size - 1  # nothing learned beyond the start: the final policy is Good
        update([good])
    if wins[good] > 0:
        rule, values, target = "win_rate", wins, medium_fraction * wins[good]
    else:
        rule, values = "return", rets
        target = rets[0] + medium_fraction * (rets[good] - rets[0])
    between = np.arange(1, good)
    near = [int(i) for i in between[np.argsort(np.abs(values[between] - target), kind="stable")]]
    update(near[:candidates])
    medium = min(near[:candidates], key=lambda i: (abs(values[i] - target), i))
    return {"poor": 0, "medium": medium, "good": good}, rule


def choose_tiers(
    snapshots: Sequence[dict[str, Any]], cfg: PpoConfig, recheck: Recheck
) -> tuple[dict[str, int], str]:
    """:func:`select_tiers` over a run's snapshots with ``cfg``'s choice settings;
    ``recheck`` is called only when ``cfg.recheck_episodes`` is set."""
    wins = np.array([s["win_rate"] for s in snapshots])
    rets = np.array([s["mean_return"] for s in snapshots])
    if not cfg.recheck_episodes:
        return select_tiers(wins, rets, cfg.medium_fraction)
    return select_tiers(wins, rets, cfg.medium_fraction, recheck, cfg.recheck_candidates)


def recorded_recheck(snapshot: dict[str, Any], episodes: int, seed: int) -> tuple[float, float]:
    """The recheck recorded with ``snapshot`` for these episodes and seed; KeyError if none."""
    done = snapshot.get("recheck")
    if not done or done["episodes"] != episodes or done["seed"] != seed:
        raise KeyError(
            f"no recheck of the snapshot at step {snapshot['step']} on {episodes} episodes"
        )
    return float(done["win_rate"]), float(done["mean_return"])


def rechecker(
    map_name: str,
    snapshots: Sequence[dict[str, Any]],
    make_policy: Callable[[dict[str, Any], np.random.Generator], MultiAgentPolicy],
    episodes: int,
    seed: int,
) -> Recheck:
    """A :data:`Recheck` that evaluates snapshot ``i``'s policy (``snapshots[i]["policy"]``)
    on ``episodes`` episodes and records the result as ``snapshots[i]["recheck"]``; a result
    recorded for the same episodes and seed is reused."""

    def recheck(i: int) -> tuple[float, float]:
        snap = snapshots[i]
        try:
            return recorded_recheck(snap, episodes, seed)
        except KeyError:
            pass
        if snap.get("policy") is None:
            raise ValueError(f"the snapshot at step {snap['step']} has no policy to recheck")
        rng = np.random.default_rng(seed)  # the same episodes for every candidate
        batch = run_episodes(map_name, episodes, make_policy(snap, rng), seed_from(rng))
        win_rate, mean_return = float(batch.episode_won.mean()), float(batch.returns.mean())
        snap["recheck"] = {
            "episodes": episodes,
            "seed": seed,
            "win_rate": win_rate,
            "mean_return": mean_return,
        }
        return win_rate, mean_return

    return recheck
