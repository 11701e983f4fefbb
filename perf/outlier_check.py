"""Measure the import checks of a real dataset source on random data of the three D4RL
environments, so their thresholds are chosen by data (``cmt/data/sources.py``,
``cmt/data/d4rl.py``; docs/d4rl.md, "What a source file must satisfy").

    python perf/outlier_check.py          # writes perf/results/outlier_check.json
    python perf/outlier_check.py --quick  # 12k steps per dataset, no file written

For Hopper-v5, HalfCheetah-v5 and Walker2d-v5 it rolls out uniform random actions and
randomly initialised tanh-Gaussian MLP policies (D4RL's *random* level is such a policy;
SAC's actor shape: 2 x 256 ReLU, PyTorch's default init, log-std head clipped to [-20, 2]),
1000-step episodes, and records:

* per dataset and key, how far the furthest legitimate value lies beyond its column's central
  range (in widths; the check refuses above ``OUTLIER_FACTOR``), on the whole dataset and on
  its first 1000 and 10000 rows (small files have noisier quantiles): no false positive is
  allowed, the script fails if one occurs;
* per key and exponent bit 23-30 of a float32 (x 2, 4, 16, 256, 2**16, 2**32, 2**64, 2**128
  when the bit was 0), the share of flips at random cells that the checks catch (non-finite,
  beyond ``MAX_ABS_VALUE``, an outlier at several factors, or an action outside [-1, 1]);
* the D4RL normalised score of every random-policy episode (mean per policy, quantiles, best),
  which ``RANDOM_BANDS`` is chosen from.

One thread; MuJoCo steps at about 7-15k steps/s here, so the full run takes a few minutes.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy: the MLP runs on one thread
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
from machine import cpu_name  # noqa: E402  # perf/, the script's own folder

from cmt.atomic import write_json  # noqa: E402
from cmt.data.d4rl import GYM_IDS, RANDOM_BANDS, normalized_score  # noqa: E402
from cmt.data.hdf5 import MAX_ABS_VALUE  # noqa: E402
from cmt.data.sources import (  # noqa: E402
    ACTION_TOLERANCE,
    OUTLIER_FACTOR,
    OUTLIER_FLOOR,
    OUTLIER_QUANTILE,
    central_range,
)

OUT = Path(__file__).parent / "results" / "outlier_check.json"
HORIZON = 1000
KEYS = ("observations", "actions", "rewards", "next_observations")
BITS = tuple(range(23, 31))  # a float32's exponent bits: flipping bit k scales by 2**(2**(k-23))
FACTORS = (1.0, 3.0, 10.0, 30.0, 100.0, 1000.0)
SUBSETS = (1000, 10_000)


class RandomMLP:
    """A randomly initialised tanh-Gaussian MLP policy (an untrained SAC actor)."""

    def __init__(self, obs_dim: int, act_dim: int, seed: int, hidden: int = 256) -> None:
        self.rng = np.random.default_rng(seed)
        sizes = [(obs_dim, hidden), (hidden, hidden), (hidden, 2 * act_dim)]
        # torch.nn.Linear's default init: weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        self.layers = [
            (
                self.rng.uniform(-1, 1, (n_in, n_out)) / np.sqrt(n_in),
                self.rng.uniform(-1, 1, n_out) / np.sqrt(n_in),
            )
            for n_in, n_out in sizes
        ]
        self.act_dim = act_dim

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        h = obs
        for i, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        mean, log_std = h[: self.act_dim], np.clip(h[self.act_dim :], -20.0, 2.0)
        return np.tanh(mean + np.exp(log_std) * self.rng.standard_normal(self.act_dim))


def rollout(env_id: str, steps: int, policy: str, seed: int) -> dict[str, np.ndarray]:
    """D4RL-layout float32 arrays of ``steps`` transitions and each episode's return."""
    env = gym.make(env_id, max_episode_steps=HORIZON)
    env.action_space.seed(seed)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    mlp = RandomMLP(obs_dim, act_dim, seed) if policy == "random_mlp" else None
    cols: dict[str, list[Any]] = {k: [] for k in KEYS}
    returns, ret = [], 0.0
    obs, _ = env.reset(seed=seed)
    for _ in range(steps):
        action = env.action_space.sample() if mlp is None else mlp(obs).astype(np.float32)
        nxt, reward, term, trunc, _ = env.step(action)
        for key, value in zip(KEYS, (obs, action, reward, nxt), strict=True):
            cols[key].append(value)
        ret += float(reward)
        obs = nxt
        if term or trunc:
            returns.append(ret)
            ret = 0.0
            obs, _ = env.reset()
    env.close()
    out = {k: np.asarray(v, dtype=np.float32) for k, v in cols.items()}
    out["returns"] = np.asarray(returns)  # complete episodes only
    return out


def excess(arr: np.ndarray) -> np.ndarray:
    """(N, D) widths by which each value lies beyond its column's central range."""
    x = arr.reshape(arr.shape[0], -1)
    low, high, width = central_range(x)
    return np.maximum(low - x, x - high) / width


def legit_excess(arr: np.ndarray) -> dict[str, float]:
    """The furthest value beyond the central range on the whole data and its first rows, the
    same in raw widths (no floor), and the narrowest column's raw width."""
    x = arr.reshape(arr.shape[0], -1)
    low, high, _ = central_range(x)
    raw = np.maximum(high - low, 1e-12)
    out = {
        "max_excess": float(excess(x).max()),
        "max_excess_unfloored": float((np.maximum(low - x, x - high) / raw).max()),
        "min_raw_width": float(raw.min()),
    }
    for rows in SUBSETS:
        if rows < x.shape[0]:
            out[f"max_excess_first_{rows}"] = float(excess(x[:rows]).max())
    return out


def flip_detection(arr: np.ndarray, key: str, rng: np.random.Generator, cells: int) -> dict:
    """Per exponent bit: of the flips that made |x| larger (the bit was 0), the share the
    checks catch at each factor, and the largest |x| a flip left uncaught at
    ``OUTLIER_FACTOR`` (a value still inside the data's range); flips that made |x| smaller
    (x / 2**k, a value nearer 0) counted apart."""
    x = arr.reshape(arr.shape[0], -1)
    rows = rng.integers(0, x.shape[0], cells)
    cols = rng.integers(0, x.shape[1], cells)
    out: dict[str, Any] = {}
    for bit in BITS:
        grow: list[tuple[float, float]] = []  # (excess, |flipped value|); inf: a bound caught it
        shrink: list[float] = []
        for r, c in zip(rows, cols, strict=True):
            column = x[:, c].copy()
            bits = column.view(np.uint32)
            grows = not bits[r] >> bit & 1
            bits[r] ^= np.uint32(1 << bit)
            value = column[r]
            out_of_bounds = not np.isfinite(value) or abs(value) > MAX_ABS_VALUE
            if key == "actions":  # the action-space check
                out_of_bounds = out_of_bounds or abs(value) > 1.0 + ACTION_TOLERANCE
            if out_of_bounds:
                e = float("inf")
            else:
                low, high, width = central_range(column[:, None])
                e = float(max(low[0] - value, value - high[0]) / width[0])
            if grows:
                grow.append((e, float(abs(value))))
            else:
                shrink.append(e)
        excesses = [e for e, _ in grow]
        uncaught = [v for e, v in grow if e <= OUTLIER_FACTOR]
        out[f"bit_{bit}"] = {
            "flips_that_grow": len(grow),
            "caught_by_bounds": int(np.isinf(excesses).sum()) if grow else 0,
            "caught_share": {
                f"factor_{f:g}": float(np.mean([e > f for e in excesses])) if grow else None
                for f in FACTORS
            },
            "largest_uncaught_abs_value": max(uncaught) if uncaught else None,
            "flips_that_shrink": len(shrink),
            "shrinking_caught_share": float(np.mean([e > OUTLIER_FACTOR for e in shrink]))
            if shrink
            else None,
        }
    return out


def scores(env: str, returns: np.ndarray) -> dict[str, float]:
    s = np.asarray(normalized_score(env, returns))
    return {
        "episodes": int(s.size),
        "mean": float(s.mean()),
        "p50": float(np.percentile(s, 50)),
        "p90": float(np.percentile(s, 90)),
        "p99": float(np.percentile(s, 99)),
        "max": float(s.max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200_000, help="steps per env and policy")
    parser.add_argument("--mlp-policies", type=int, default=20, help="random MLPs per env")
    parser.add_argument("--cells", type=int, default=200, help="flipped cells per key and bit")
    parser.add_argument("--quick", action="store_true", help="12k steps, no file written")
    args = parser.parse_args()
    steps = 12_000 if args.quick else args.steps
    rng = np.random.default_rng(0)
    results: dict[str, Any] = {}
    false_positives = []
    t0 = time.perf_counter()
    for env, env_id in GYM_IDS.items():
        per_env: dict[str, Any] = {}
        runs = {"uniform": [rollout(env_id, steps, "uniform", 0)]}
        per_mlp = steps // args.mlp_policies
        runs["random_mlp"] = [
            rollout(env_id, per_mlp, "random_mlp", seed) for seed in range(1, args.mlp_policies + 1)
        ]
        for policy, parts in runs.items():
            data = {k: np.concatenate([p[k] for p in parts]) for k in (*KEYS, "returns")}
            entry: dict[str, Any] = {"transitions": int(data["rewards"].size)}
            entry["scores"] = scores(env, data["returns"])
            entry["mean_score_per_policy"] = [
                float(np.mean(normalized_score(env, p["returns"]))) for p in parts
            ]
            entry["keys"] = {}
            for key in KEYS:
                legit = legit_excess(data[key])
                if max(v for k, v in legit.items() if k.startswith("max_excess")) > OUTLIER_FACTOR:
                    false_positives.append(f"{env}/{policy}/{key}")
                entry["keys"][key] = {
                    **legit,
                    "flips": flip_detection(data[key], key, rng, args.cells),
                }
            per_env[policy] = entry
        band = RANDOM_BANDS[env]
        per_env["band"] = {
            "mean_max": band.mean_max,
            "best_max": band.best_max,
            "measured_max_policy_mean": max(max(per_env[p]["mean_score_per_policy"]) for p in runs),
            "measured_max_episode": max(per_env[p]["scores"]["max"] for p in runs),
        }
        results[env] = per_env
        print(f"{env}: {time.perf_counter() - t0:.0f} s")
    report = {
        "what": "import checks of a dataset source on random data (perf/outlier_check.py)",
        "machine": {
            "cpu": cpu_name(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "gymnasium": gym.__version__,
        },
        "settings": {
            "steps_per_env_and_policy": steps,
            "mlp_policies": args.mlp_policies,
            "flipped_cells_per_key_and_bit": args.cells,
            "outlier_quantile": OUTLIER_QUANTILE,
            "outlier_factor": OUTLIER_FACTOR,
            "outlier_floor": OUTLIER_FLOOR,
            "max_abs_value": MAX_ABS_VALUE,
            "action_tolerance": ACTION_TOLERANCE,
        },
        "false_positives": false_positives,
        "seconds": round(time.perf_counter() - t0, 1),
        "results": results,
    }
    if not args.quick:
        write_json(OUT, report)
        print(f"wrote {OUT}")
    if false_positives:
        raise SystemExit(f"false positives at OUTLIER_FACTOR={OUTLIER_FACTOR}: {false_positives}")


if __name__ == "__main__":
    main()
