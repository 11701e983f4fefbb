"""SMAX evaluation benchmark: episodes/s of the batched rollout (one ``jit(vmap(step))`` call
per step for all episodes, :class:`cmt.envs.smax.SmaxBatchedEnv`) against stepping the same
episodes one at a time with the same jitted single-episode step.

    python perf/smax_rollout.py          # writes perf/results/smax_rollout.json
    python perf/smax_rollout.py --quick  # 3m only, fewer episodes

Both loops play the *same* episodes: the same PRNG key per episode and step, and the same
random available actions (scores drawn up front), so their returns must agree; the JSON
records how many do. Compilation is excluded (each kernel is warmed up first); each loop is
timed ``--repeats`` times, interleaved. The machine is shared, so other processes only ever
add time: the fastest repeat (``seconds``, ``episodes_per_s``, ``speedup``) is the least
disturbed measurement; the medians are recorded too.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import jax
import numpy as np

from cmt.atomic import write_json
from cmt.device import jax_on_cpu

jax_on_cpu()  # before jax's first import
from cmt.envs.smax import SmaxBatchedEnv, kernels, smax_map  # noqa: E402

OUT = Path(__file__).parent / "results" / "smax_rollout.json"


def machine() -> dict[str, object]:
    from throughput import machine as torch_machine  # the sibling benchmark's description

    return {**torch_machine(), "jax": jax.__version__, "jax_backend": jax.default_backend()}


def scored_policy(scores: np.ndarray):
    """Policy picking, per agent, the available action of highest pre-drawn score."""

    def act(obs: np.ndarray, avail: np.ndarray, t: int) -> np.ndarray:
        return (scores[t] * avail).argmax(axis=-1).astype(np.int64)

    return act


def batched(map_name: str, scores: np.ndarray, seed: int) -> tuple[float, np.ndarray, int]:
    """Seconds, returns (E,) and team steps of all episodes run together."""
    e = scores.shape[1]
    env = SmaxBatchedEnv(map_name, e)
    policy = scored_policy(scores)
    t0 = time.perf_counter()
    obs, avail = env.reset(seed)
    returns, alive, steps = np.zeros(e), np.ones(e, dtype=bool), 0
    for t in range(env.horizon):
        obs, avail, reward, term, trunc, _ = env.step(policy(obs, avail, t))
        returns += np.where(alive, reward, 0.0)
        steps += int(alive.sum())
        alive &= ~(term | trunc)
        if not alive.any():
            break
    return time.perf_counter() - t0, returns, steps


def one_at_a_time(map_name: str, scores: np.ndarray, seed: int) -> tuple[float, np.ndarray, int]:
    """The same episodes, one after another, with the jitted single-episode kernels.

    The batched env splits one key per step into one sub-key per episode; the same sub-keys
    are derived here (outside the timed loop) so that the episodes are identical."""
    k = kernels(map_name)
    e, horizon = scores.shape[1], smax_map(map_name).horizon
    split = jax.random.split(jax.random.PRNGKey(seed), e + 1)
    key, reset_keys = split[0], split[1:]
    step_keys = []
    for _ in range(horizon):
        split = jax.random.split(key, e + 1)
        key = split[0]
        step_keys.append(split[1:])
    step_keys = np.stack([np.asarray(s) for s in step_keys])  # (T, E, 2)
    reset_keys = np.asarray(reset_keys)
    returns, steps = np.zeros(e), 0
    t0 = time.perf_counter()
    for b in range(e):
        state, obs, avail = k.reset_single(reset_keys[b])
        for t in range(horizon):
            actions = (scores[t, b] * np.asarray(avail)).argmax(axis=-1).astype(np.int32)
            state, obs, avail, reward, term, trunc, _ = k.step_single(
                step_keys[t, b], state, actions
            )
            returns[b] += float(reward)
            steps += 1
            if bool(term) or bool(trunc):
                break
    return time.perf_counter() - t0, returns, steps


def bench_map(map_name: str, episodes: int, seed: int, repeats: int) -> dict[str, object]:
    spec = smax_map(map_name)
    rng = np.random.default_rng(seed)
    shape = (spec.horizon, episodes, spec.num_agents, spec.num_actions)
    scores = rng.random(shape)
    # Warm-up: compile every kernel for these shapes.
    batched(map_name, scores, seed + 1)
    one_at_a_time(map_name, scores[:, :2], seed + 1)
    times_batch, times_seq = [], []
    for _ in range(repeats):
        t_batch, r_batch, steps_batch = batched(map_name, scores, seed)
        t_seq, r_seq, steps_seq = one_at_a_time(map_name, scores, seed)
        times_batch.append(t_batch)
        times_seq.append(t_seq)
    t_batch, t_seq = min(times_batch), min(times_seq)
    median_speedup = float(np.median(times_seq) / np.median(times_batch))
    same = np.isclose(r_batch, r_seq, rtol=1e-5, atol=1e-6)
    return {
        "episodes": episodes,
        "policy": "uniform over available actions (pre-drawn scores)",
        "team_steps": steps_batch,
        "mean_episode_length": steps_batch / episodes,
        "batched": {
            "seconds": t_batch,
            "episodes_per_s": episodes / t_batch,
            "seconds_each_repeat": times_batch,
        },
        "one_at_a_time": {
            "seconds": t_seq,
            "episodes_per_s": episodes / t_seq,
            "seconds_each_repeat": times_seq,
        },
        "speedup": t_seq / t_batch,
        "speedup_of_medians": median_speedup,
        "same_episodes": {"returns_equal": int(same.sum()), "team_steps_one_at_a_time": steps_seq},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3m only, 32 episodes")
    parser.add_argument("--episodes", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    maps = ["3m"] if args.quick else ["3m", "2s3z", "5m_vs_6m"]
    episodes = 32 if args.quick else args.episodes
    results = {}
    load_start = os.getloadavg()[0]
    for name in maps:
        results[name] = bench_map(name, episodes, seed=0, repeats=1 if args.quick else args.repeats)
        print(name, results[name]["speedup"], flush=True)
    write_json(
        args.out,
        {
            "machine": machine(),
            "cpu_count": os.cpu_count(),
            "load_average_1m": {"start": load_start, "end": os.getloadavg()[0]},
            "maps": results,
        },
    )


if __name__ == "__main__":
    main()
