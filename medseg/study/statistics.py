"""Paired comparisons of normalizers from per-case validation Dice (scipy.stats, statsmodels).

Two children of a sweep with the same seed and batch size but different norms saw the same
training patches in the same order from the same initial weights (see medseg/training/patch_stream.py),
and were validated on the same cases. For norms A and B at one batch size:

* per (case, seed): d = Dice_A - Dice_B (Dice: mean over the foreground labels of the case);
* per case: the mean of d over the seeds both norms have (cases are the resampled unit, and seeds
  on one case are not independent of each other);
* the mean paired difference with a 95 % bootstrap confidence interval, cases resampled
  (``scipy.stats.bootstrap``, BCa, 10,000 resamples, fixed random state). The interval is
  conditional on the trained networks: it answers "would these networks differ on other cases",
  not "would other training runs differ". The per-seed mean differences are reported beside it,
  and whether every seed agrees in sign with the mean;
* a paired Wilcoxon signed-rank test of the per-case differences (``scipy.stats.wilcoxon``,
  two-sided), Holm-corrected across all comparisons of a table
  (``statsmodels.stats.multitest.multipletests``, Holm 1979).

The same statistics compare one norm at a smaller batch size with itself at the sweep's largest
(:func:`batch_size_table`, its own Holm family): for one seed those children are paired too; and
whether a norm's difference from the reference norm changes between a smaller batch size and the
largest (:func:`interaction_table`, a difference in differences, its own Holm family).
A secondary table (:func:`label_table`, its own Holm family) repeats the reference norm's
comparisons on each foreground label's Dice alone.

Two norms *tie* when the interval contains 0 (the which-norm table's rule). The verdict of a
comparison refines it with the test, the seeds and a margin m of negligible difference
(:data:`medseg.study.rules.NEGLIGIBLE`):

* ``A better``: the CI excludes 0, the Holm p is below ALPHA and every seed agrees in sign (with
  "by less than m" when the whole CI lies within +-m);
* ``suggestive: A better (...)``: the CI excludes 0 but the Holm p or a seed does not agree;
* ``no practical difference``: the CI contains 0 and lies within +-m;
* ``cannot tell``: the CI contains 0 and reaches beyond +-m;

with the Holm p beside a tie that the test calls significant. The CI and the test answer slightly
different questions (the mean difference vs the symmetry of the per-case differences about 0),
and a reader should see both.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from medseg.study.rules import NEGLIGIBLE

CONFIDENCE = 0.95
N_RESAMPLES = 10_000
RANDOM_STATE = 0
ALPHA = 0.05  # significance level of the Holm-corrected Wilcoxon test


def case_dice(per_case: dict[tuple[str, str], float]) -> dict[str, float]:
    """``{(case, label): Dice}`` -> ``{case: mean Dice over its labels}``."""
    by_case: dict[str, list[float]] = {}
    for (case, _label), d in per_case.items():
        by_case.setdefault(case, []).append(d)
    return {c: float(np.mean(v)) for c, v in by_case.items()}


def paired_case_differences(a: dict[int, dict[str, float]], b: dict[int, dict[str, float]]) -> np.ndarray:
    """Per-case differences A - B averaged over the seeds both have.

    Args:
        a, b: ``{seed: {case: Dice}}`` of two norms at one batch size.

    Returns:
        (cases,) array, cases in sorted order; empty when no (seed, case) is shared.
    """
    seeds, cases = _shared(a, b)
    return np.array([np.mean([a[s][c] - b[s][c] for s in seeds]) for c in cases], dtype=float)


def _shared(a: dict[int, dict[str, float]], b: dict[int, dict[str, float]]) -> tuple[list[int], list[str]]:
    """The seeds both have, and the cases every one of those seeds has in both (sorted)."""
    seeds = sorted(set(a) & set(b))
    cases = sorted(set.intersection(*(set(a[s]) & set(b[s]) for s in seeds))) if seeds else []
    return seeds, cases


def cell_case_means(seeds: dict[int, dict[str, float]]) -> np.ndarray:
    """Per-case Dice of one cell ``{seed: {case: Dice}}`` averaged over its seeds (the cases all
    its seeds have, sorted)."""
    cases = sorted(set.intersection(*(set(v) for v in seeds.values())))
    return np.array([np.mean([seeds[s][c] for s in seeds]) for c in cases], dtype=float)


@dataclass
class Comparison:
    """One paired comparison (differences are A - B, in Dice): two norms at one batch size; or, when
    ``batch_size_b`` is set, A at ``batch_size`` against B at ``batch_size_b``: one norm against
    itself (``norm_a == norm_b``, :func:`batch_size_table`), or the difference ``norm_a - norm_b``
    at the two batch sizes (:func:`interaction_table`)."""

    batch_size: int
    norm_a: str
    norm_b: str
    seeds: int
    cases: int
    mean_difference: float
    ci_low: float
    ci_high: float
    p_value: float
    p_holm: float = math.nan
    batch_size_b: int | None = None
    per_seed: tuple[float, ...] = ()
    margin: float = NEGLIGIBLE
    label: str | None = None  # set in the per-label table: Dice of this label only

    @property
    def seeds_agree(self) -> bool:
        """Every seed's mean difference has the (non-zero) sign of the overall mean; a seed at 0 or
        NaN does not agree. True with no per-seed values."""
        return all(d * self.mean_difference > 0 for d in self.per_seed)

    @property
    def labels(self) -> tuple[str, str]:
        """Names of A and B: the norms, or ``batch size <b>`` when one norm is compared across batch sizes."""
        if self.batch_size_b is None:
            return self.norm_a, self.norm_b
        return f"batch size {self.batch_size}", f"batch size {self.batch_size_b}"

    @property
    def tie(self) -> bool:
        """The confidence interval contains 0 (or there is nothing to compare)."""
        return not (self.ci_low > 0 or self.ci_high < 0)

    @property
    def significant(self) -> bool:
        """The Holm-corrected Wilcoxon p-value is below ALPHA."""
        return math.isfinite(self.p_holm) and self.p_holm < ALPHA

    @property
    def agree(self) -> bool:
        """The interval and the Holm-corrected test give the same answer (both a difference, or neither)."""
        return self.tie != self.significant

    @property
    def verdict(self) -> str:
        """The comparison's conclusion (module docstring), for example ``group better``,
        ``suggestive: instance better (Holm p 0.097)`` or ``no practical difference``."""
        if not math.isfinite(self.mean_difference):
            return "-"
        within = -self.margin <= self.ci_low and self.ci_high <= self.margin
        if self.tie:
            word = "no practical difference" if within else "cannot tell"
            return word if self.agree or not math.isfinite(self.p_holm) else f"{word}, Holm p {self.p_holm:.2g}"
        winner = self.labels[0] if self.mean_difference > 0 else self.labels[1]
        doubts = ([f"Holm p {self.p_holm:.2g}"] if math.isfinite(self.p_holm) and not self.significant else
                  [] if math.isfinite(self.p_holm) else ["no test"]) + (["seeds disagree"] if not self.seeds_agree else [])
        if doubts:
            return f"suggestive: {winner} better ({', '.join(doubts)})"
        return f"{winner} better" + (f" by less than {self.margin:g}" if within else "")

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.label is None:
            del d["label"]
        d["per_seed"] = " ".join(f"{v:+.4f}" for v in self.per_seed)
        return {**d, "seeds_agree": self.seeds_agree, "tie": self.tie, "significant": self.significant,
                "verdict": self.verdict}


def per_seed_differences(a: dict[int, dict[str, float]], b: dict[int, dict[str, float]]) -> tuple[float, ...]:
    """Mean difference A - B for each seed both have (sorted by seed), over the same cases as
    :func:`paired_case_differences`: the spread that the case-resampled interval does not contain."""
    seeds, cases = _shared(a, b)
    return tuple(float(np.mean([a[s][c] - b[s][c] for c in cases])) if cases else math.nan for s in seeds)


def compare(d: np.ndarray) -> tuple[float, float, float, float]:
    """Mean, 95 % bootstrap CI (BCa, cases resampled) and Wilcoxon p-value of paired differences ``d``.

    Returns ``(mean, low, high, p)``. With all differences equal the interval is the mean itself
    (nothing to resample); the p-value is 1 when every difference is 0, NaN with fewer than 2 cases.
    """
    if d.size == 0:
        return math.nan, math.nan, math.nan, math.nan
    mean = float(d.mean())
    if d.size < 2:
        return mean, mean, mean, math.nan
    if np.all(d == 0):
        return mean, mean, mean, 1.0
    p = float(stats.wilcoxon(d, alternative="two-sided").pvalue)
    if np.all(d == d[0]):
        return mean, mean, mean, p
    ci = stats.bootstrap((d,), np.mean, confidence_level=CONFIDENCE, n_resamples=N_RESAMPLES, method="BCa",
                         random_state=RANDOM_STATE).confidence_interval
    return mean, float(ci.low), float(ci.high), p


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values (NaNs stay NaN and do not count as comparisons)."""
    from statsmodels.stats.multitest import multipletests
    finite = [i for i, p in enumerate(p_values) if math.isfinite(p)]
    out = [math.nan] * len(p_values)
    if finite:
        adjusted = multipletests([p_values[i] for i in finite], method="holm")[1]
        for i, p in zip(finite, adjusted):
            out[i] = float(p)
    return out


Seeds = dict[int, dict[str, float]]  # {seed: {case: Dice (or a per-case difference)}}


def _compare(specs: list[tuple[dict, Seeds, Seeds]], margin: float) -> list[Comparison]:
    """Paired comparison A - B of each ``(identity, a, b)``, Holm-corrected across the list;
    ``identity``: the Comparison fields that name the row (batch sizes and norms)."""
    rows = []
    for ident, a, b in specs:
        d = paired_case_differences(a, b)
        mean, lo, hi, p = compare(d)
        rows.append(Comparison(**ident, seeds=len(set(a) & set(b)), cases=int(d.size), mean_difference=mean,
                               ci_low=lo, ci_high=hi, p_value=p, per_seed=per_seed_differences(a, b), margin=margin))
    for row, p in zip(rows, holm([r.p_value for r in rows])):
        row.p_holm = p
    return rows


def _compare_cells(dice: dict[tuple[str, int], Seeds], pairs: list[tuple[tuple[str, int], tuple[str, int]]],
                   margin: float) -> list[Comparison]:
    """Paired comparison of each pair of cells ``((norm, batch size), (norm, batch size))``."""
    return _compare([({"batch_size": ba, "norm_a": na, "norm_b": nb, "batch_size_b": None if ba == bb else bb},
                      dice[(na, ba)], dice[(nb, bb)]) for (na, ba), (nb, bb) in pairs], margin)


def _difference(a: Seeds, b: Seeds) -> Seeds:
    """Per seed and case, A - B (the seeds and cases both have)."""
    return {s: {c: a[s][c] - b[s][c] for c in set(a[s]) & set(b[s])} for s in set(a) & set(b)}


def pairwise_table(dice: dict[tuple[str, int], dict[int, dict[str, float]]], norm_order: list[str],
                   margin: float = NEGLIGIBLE) -> list[Comparison]:
    """Every pair of norms at every batch size, Holm-corrected across the whole table.

    Args:
        dice: ``{(norm, batch size): {seed: {case: Dice}}}``.
        norm_order: norms in display order (A comes before B in it).
        margin: negligible difference in mean Dice (see the verdicts in the module docstring).
    """
    pairs = []
    for bs in sorted({b for _, b in dice}):
        norms = [n for n in norm_order if (n, bs) in dice]
        pairs += [((na, bs), (nb, bs)) for i, na in enumerate(norms) for nb in norms[i + 1:]]
    return _compare_cells(dice, pairs, margin)


def batch_size_table(dice: dict[tuple[str, int], dict[int, dict[str, float]]],
                     norm_order: list[str], margin: float = NEGLIGIBLE) -> list[Comparison]:
    """Each norm at each smaller batch size against the same norm at the largest batch size of the
    sweep (A = the smaller batch size), Holm-corrected across this table. For one seed, children of
    one norm at different batch sizes saw the same patches in the same order from the same initial
    weights, so these differences are paired like the norms' (same seeds, same cases).

    Args:
        dice: ``{(norm, batch size): {seed: {case: Dice}}}``.
        norm_order: norms in display order.
        margin: negligible difference in mean Dice.

    Returns:
        comparisons with ``batch_size_b`` set to the largest batch size; empty with one batch size.
    """
    largest = max((b for _, b in dice), default=0)
    pairs = [((n, b), (n, largest)) for n in norm_order if (n, largest) in dice
             for b in sorted(b for m, b in dice if m == n and b != largest)]
    return _compare_cells(dice, pairs, margin)


def interaction_table(dice: dict[tuple[str, int], Seeds], norm_order: list[str], reference: str,
                      margin: float = NEGLIGIBLE) -> list[Comparison]:
    """Does batch size change a norm's difference from the reference norm? For each other norm n and
    each smaller batch size b, per case (n - reference at b) - (n - reference at the largest batch
    size L), averaged over seeds (a difference in differences), with the same CI and test as the
    pairwise table, Holm-corrected across this table. A row has ``norm_a = n``, ``norm_b =
    reference``, ``batch_size = b``, ``batch_size_b = L``; "batch size b better" means n does better
    against the reference at b than at L.

    Returns:
        the rows; empty when the reference or a second batch size is missing.
    """
    largest = max((b for _, b in dice), default=0)
    if (reference, largest) not in dice:
        return []
    specs = []
    for n in norm_order:
        if n == reference or (n, largest) not in dice:
            continue
        at_largest = _difference(dice[(n, largest)], dice[(reference, largest)])
        for b in sorted(b for m, b in dice if m == n and b != largest and (reference, b) in dice):
            specs.append(({"batch_size": b, "norm_a": n, "norm_b": reference, "batch_size_b": largest},
                          _difference(dice[(n, b)], dice[(reference, b)]), at_largest))
    return _compare(specs, margin)


def label_table(dice: dict[str, dict[tuple[str, int], Seeds]], norm_order: list[str], reference: str,
                margin: float = NEGLIGIBLE) -> list[Comparison]:
    """Per foreground label: the reference norm against each other norm at each batch size, on that
    label's Dice alone (A = the reference), Holm-corrected across the whole table (every label). A
    secondary, exploratory table: it shows which structures carry a difference that the mean over
    labels shows (for CT, whether a norm helps on bone, whose Hounsfield units are distinctive, or on
    soft tissue).

    Args:
        dice: ``{label: {(norm, batch size): {seed: {case: Dice of that label}}}}``.
        norm_order: norms in display order.
        reference: the norm every other is compared with (rows with ``norm_a = reference``).
        margin: negligible difference in Dice.

    Returns:
        rows with ``label`` set, ordered by label, batch size and norm; empty without the reference.
    """
    specs = []
    for label in sorted(dice):
        cells = dice[label]
        for bs in sorted({b for _, b in cells}):
            if (reference, bs) not in cells:
                continue
            specs += [({"batch_size": bs, "norm_a": reference, "norm_b": n, "label": label},
                       cells[(reference, bs)], cells[(n, bs)])
                      for n in norm_order if n != reference and (n, bs) in cells]
    return _compare(specs, margin)


def mean_ci(values: np.ndarray) -> tuple[float, float, float]:
    """Mean of per-case values with its 95 % bootstrap CI (BCa, cases resampled)."""
    values = np.asarray(values, dtype=float)
    if values.size < 2 or np.all(values == values[0]):
        m = float(values.mean()) if values.size else math.nan
        return m, m, m
    ci = stats.bootstrap((values,), np.mean, confidence_level=CONFIDENCE, n_resamples=N_RESAMPLES, method="BCa",
                         random_state=RANDOM_STATE).confidence_interval
    return float(values.mean()), float(ci.low), float(ci.high)
