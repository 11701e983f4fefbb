"""The statistics that decide a claim (docs/method.md, "Statistics and verdicts").

A method and a baseline are paired by seed: the records of one dataset share their evaluation
seeds (``evaluate.seed`` + the seed), so the seeds both were run with saw the same evaluation
episodes. The per-seed differences of their scores (mean over tasks) give a mean difference
and its 95% t interval, computed by ``scipy.stats`` from the sample std (ddof 1). The interval
gives the verdict against the benchmark's margin δ (:class:`cmt.benchmarks.Claim`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from cmt.benchmarks import Claim
from cmt.methods import METHODS

CONFIDENCE = 0.95
"""Coverage of every interval."""

ABOVE, AT_OR_ABOVE, BELOW, UNDECIDED = "above", "at or above", "below", "undecided"
VERDICTS = (ABOVE, AT_OR_ABOVE, BELOW, UNDECIDED)
"""Every verdict, strongest claim first."""

REASONS = {
    ABOVE: "lower bound above 0",
    BELOW: "upper bound below 0",
    AT_OR_ABOVE: "lower bound above −δ",
    UNDECIDED: "interval reaches both −δ and 0",
}
"""Why an interval gave each verdict."""

Record = Mapping[str, Any]


@dataclass(frozen=True)
class Comparison:
    """``method`` against ``baseline`` on the seeds both have: their per-seed score
    differences (method − baseline), the mean difference and its interval (None with fewer
    than two seeds), the margin δ and the verdict, with its reason."""

    method: str
    baseline: str
    seeds: tuple[int, ...]
    differences: tuple[float, ...]
    mean_difference: float | None
    lo: float | None
    hi: float | None
    margin: float
    verdict: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-able, with the number of paired seeds ``n``."""
        out = asdict(self)
        out.update(seeds=list(self.seeds), differences=list(self.differences), n=len(self.seeds))
        return out


def t_interval(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """The 95% t interval of the mean of ``values`` (at least two): mean ± t(n − 1) · s / √n
    with the sample std s (ddof 1), from ``scipy.stats``. Values that do not vary give the
    interval's limit, the point itself (scipy returns nan for a zero scale)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        raise ValueError(f"an interval needs at least 2 values, got {x.size}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"non-finite values {x.tolist()}")
    mean, sem = float(x.mean()), float(stats.sem(x, ddof=1))
    if sem == 0.0:
        return mean, mean
    lo, hi = stats.t.interval(CONFIDENCE, x.size - 1, loc=mean, scale=sem)
    return float(lo), float(hi)


def verdict(lo: float, hi: float, margin: float) -> str:
    """What an interval (lo, hi) of method − baseline says: "above" when lo > 0, "below" when
    hi < 0, "at or above" when lo > −δ (``margin``), else "undecided". "below" comes before
    "at or above": an interval within δ but wholly below 0 is reported as below."""
    if margin < 0:
        raise ValueError(f"the margin δ must be non-negative, got {margin}")
    if lo > 0:
        return ABOVE
    if hi < 0:
        return BELOW
    if lo > -margin:
        return AT_OR_ABOVE
    return UNDECIDED


def seeds_to_decide(
    differences: Sequence[float] | np.ndarray, margin: float, limit: int = 1000
) -> tuple[int, str] | None:
    """A projection, not a result: if more seeds kept the mean and sample std of
    ``differences`` as measured, the fewest seeds (at most ``limit``) whose t interval would
    give a verdict other than undecided, with that verdict; None when no count up to ``limit``
    would (a spread that large, or δ = 0 with a mean difference of exactly 0)."""
    x = np.asarray(differences, dtype=np.float64)
    if x.size < 2:
        raise ValueError(f"a projection needs at least 2 differences, got {x.size}")
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    for n in range(2, limit + 1):
        half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / np.sqrt(n)
        result = verdict(mean - half, mean + half, margin)
        if result != UNDECIDED:
            return n, result
    return None


def _by_seed(records: Sequence[Record], method: str) -> dict[int, Record]:
    """``method``'s records by seed; a seed recorded twice is an error."""
    out: dict[int, Record] = {}
    for r in records:
        if r["method"] == method:
            if int(r["seed"]) in out:
                raise ValueError(f"{method} seed {r['seed']} is recorded twice")
            out[int(r["seed"])] = r
    return out


def paired(
    records: Sequence[Record],
    method: str,
    baseline: str,
    key: str = "score_mean",
    baseline_records: Sequence[Record] | None = None,
) -> tuple[tuple[int, ...], np.ndarray]:
    """The seeds both methods have (unpaired seeds are dropped) and the per-seed differences
    method − baseline of ``key``, (n,); the baseline's records from ``baseline_records`` when
    given (another run of the same evaluation). Paired records must cover the same tasks."""
    theirs = _by_seed(records if baseline_records is None else baseline_records, baseline)
    ours = _by_seed(records, method)
    seeds = tuple(sorted(set(ours) & set(theirs)))
    for s in seeds:
        if set(ours[s]["per_task"]) != set(theirs[s]["per_task"]):
            raise ValueError(f"{method} and {baseline} seed {s} were evaluated on other tasks")
    diffs = np.array([ours[s][key] - theirs[s][key] for s in seeds], dtype=np.float64)
    return seeds, diffs


def compare(records: Sequence[Record], method: str, baseline: str, margin: float) -> Comparison:
    """``method`` against ``baseline`` on their paired seeds, with the verdict at ``margin``;
    fewer than two paired seeds leave it undecided."""
    seeds, diffs = paired(records, method, baseline)
    mean = float(diffs.mean()) if diffs.size else None
    lo = hi = None
    if diffs.size < 2:
        why = "no seed has both" if not diffs.size else "1 paired seed; an interval needs 2"
        result, reason = UNDECIDED, why
    else:
        lo, hi = t_interval(diffs)
        result = verdict(lo, hi, margin)
        reason = REASONS[result]
    return Comparison(
        method, baseline, seeds, tuple(diffs.tolist()), mean, lo, hi, margin, result, reason
    )


def claim_pairs(records: Sequence[Record], claim: Claim) -> list[tuple[str, str]]:
    """What is compared: every method against the main baseline, then the method under test
    against each other method; only methods the records hold, in the registry's order."""
    present = [m for m in METHODS if any(r["method"] == m for r in records)]
    pairs = []
    if claim.baseline in present:
        pairs += [(m, claim.baseline) for m in present if m != claim.baseline]
    if claim.method in present:
        others = (claim.method, claim.baseline)
        pairs += [(claim.method, m) for m in present if m not in others]
    return pairs


def claims(records: Sequence[Record], claim: Claim) -> dict[str, Any]:
    """The comparisons of :func:`claim_pairs` (JSON-able), with the claim they serve; the
    main one (the method under test against the main baseline) is also ``main``."""
    pairs = claim_pairs(records, claim)
    comparisons = [compare(records, m, b, claim.margin).as_dict() for m, b in pairs]
    main_pair = (claim.method, claim.baseline)
    main = next((c for c in comparisons if (c["method"], c["baseline"]) == main_pair), None)
    return {**asdict(claim), "confidence": CONFIDENCE, "main": main, "comparisons": comparisons}


def score_intervals(records: Sequence[Record]) -> dict[str, tuple[float, float]]:
    """Each method's 95% t interval of its mean score over seeds (methods with two or more
    seeds): the whiskers of :func:`cmt.evaluation.figures.plot_comparison`."""
    out = {}
    for m in METHODS:
        scores = [r["score_mean"] for r in records if r["method"] == m]
        if len(scores) > 1:
            out[m] = t_interval(scores)
    return out
