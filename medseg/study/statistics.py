"""Paired comparisons of normalizers from per-case validation Dice (scipy.stats, statsmodels).

Two children of a sweep with the same seed and batch size but different norms saw the same
training patches in the same order from the same initial weights (see medseg/training/patch_stream.py),
and were validated on the same cases. For norms A and B at one batch size:

* per (case, seed): d = Dice_A - Dice_B (Dice: mean over the foreground labels of the case);
* per case: the mean of d over the seeds both norms have (cases are the resampled unit, and seeds
  on one case are not independent of each other);
* **the primary interval treats training runs as a random effect** (:func:`random_effect_interval`):
  the per-(seed, case) differences follow d = mu + u_seed + v_case + e, with seeds and cases crossed
  random effects, fitted by REML with statsmodels' ``MixedLM`` (variance components). Its 95 %
  interval for mu is mu_hat +- t * SE, t with Satterthwaite's degrees of freedom from the
  components' mean squares, and its two-sided t-test gives the p-value. It answers "would other
  training runs of these recipes differ on other cases", which is what a recommendation needs. It
  needs at least :data:`MIN_SEEDS` seeds: with fewer, one cannot tell run-to-run noise from the
  recipe, and the row says so ("these networks only");
* the secondary, **fixed-network interval**: the per-case mean of d over seeds, 95 % bootstrap CI
  with cases resampled (``scipy.stats.bootstrap``, BCa, 10,000 resamples, fixed random state),
  and a paired Wilcoxon signed-rank test of those per-case differences (``scipy.stats.wilcoxon``,
  two-sided). It holds the trained networks fixed: it answers "would these networks differ on other
  cases". The per-seed mean differences are reported beside it;
* both p-values Holm-corrected across all comparisons of a table, each family on its own
  (``statsmodels.stats.multitest.multipletests``, Holm 1979).

Why a mixed model and not a hierarchical bootstrap: a study has 3 to 5 seeds per cell, and a
bootstrap that resamples 5 seeds has 126 distinct resamples and a variance shrunk by (S - 1) / S;
its percentile interval under-covers exactly when the seed variance matters. The mixed model's t
interval carries the few seeds in its degrees of freedom (about S - 1 when seeds dominate, more when
cases do). In the balanced grid of a paired comparison (every seed has every case) REML gives the
classical two-way random-effects ANOVA estimates (Searle, Casella & McCulloch 1992, ch. 4), so
the interval is the textbook one; ``tests/unit/study/test_statistics.py`` checks its coverage by
simulation.

The same statistics compare one norm at a smaller batch size with itself at the sweep's largest
(:func:`batch_size_table`, its own Holm family): for one seed those children are paired too; and
whether a norm's difference from the reference norm changes between a smaller batch size and the
largest (:func:`interaction_table`, a difference in differences, its own Holm family).
A secondary table (:func:`label_table`, its own Holm family) repeats the reference norm's
comparisons on each foreground label's Dice alone.

Two norms *tie* when the primary interval (the random-effect one, or with fewer than
:data:`MIN_SEEDS` seeds the fixed-network one) contains 0 (the which-norm table's rule). The verdict
of a comparison refines it with that interval's Holm-corrected test and a margin m of negligible
difference (:data:`medseg.study.rules.NEGLIGIBLE`):

* ``A better``: the CI excludes 0 and the Holm p is below ALPHA (on the fixed-network path also:
  every seed agrees in sign) (with "by less than m" when the whole CI lies within +-m);
* ``suggestive: A better (...)``: the CI excludes 0 but the Holm p (or a seed) does not agree;
* ``no practical difference``: the CI contains 0 and lies within +-m;
* ``cannot tell``: the CI contains 0 and reaches beyond +-m;

with the Holm p beside a tie that the test calls significant, and ``(these networks only)`` after
a verdict that could not include seed variation. On the random-effect path the CI is unadjusted
and the test is Holm-adjusted, so they can disagree; the verdict follows both as above.
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
ALPHA = 0.05  # significance level of the Holm-corrected tests
MIN_SEEDS = 3  # seeds a random-effect interval needs (with 2, the seed variance has 1 degree of freedom)
THESE_NETWORKS_ONLY = "these networks only"  # a verdict that could not include run-to-run variation


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


@dataclass(frozen=True)
class RandomEffectInterval:
    """The mean of a (seeds, cases) grid with seeds and cases as crossed random effects.

    Attributes:
        mean: the estimated mean mu (Dice units).
        low, high: its 95 % interval (t with ``df`` degrees of freedom).
        p: two-sided t-test of mu = 0.
        df: Satterthwaite's degrees of freedom.
        seed_sd, case_sd, residual_sd: the REML standard deviations of the seed and case effects and
            of the residual (Dice units).
    """

    mean: float
    low: float
    high: float
    p: float
    df: float
    seed_sd: float
    case_sd: float
    residual_sd: float

    @classmethod
    def missing(cls, mean: float = math.nan) -> "RandomEffectInterval":
        """No interval (fewer than :data:`MIN_SEEDS` seeds, or nothing to fit)."""
        return cls(mean, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)


def random_effect_interval(grid: np.ndarray, confidence: float = CONFIDENCE) -> RandomEffectInterval:
    """Mean of ``grid`` (seeds, cases) with a confidence interval that resamples both training runs
    and cases: y[s, c] = mu + u_s + v_c + e_sc, u ~ N(0, seed_sd^2), v ~ N(0, case_sd^2) crossed,
    fitted by REML (statsmodels ``MixedLM`` with variance components; see the module docstring).

    SE(mu) is the model's; the degrees of freedom are Satterthwaite's for
    Var(mu) = (MS_seed + MS_case - MS_resid) / (S C), with the mean squares rebuilt from the REML
    components (MS_seed = C seed_sd^2 + resid^2, MS_case = S case_sd^2 + resid^2, MS_resid = resid^2).

    Args:
        grid: (S, C) values, S >= :data:`MIN_SEEDS` seeds by C >= 2 cases, all finite.
        confidence: of the interval.

    Returns:
        the interval; :meth:`RandomEffectInterval.missing` with fewer seeds or cases. A grid
        without variation gives the mean as its interval (p 1 when it is 0, else 0).

    Raises:
        ValueError: ``grid`` is not 2-D or holds NaN/Inf.
    """
    grid = np.asarray(grid, dtype=float)
    if grid.ndim != 2 or not np.all(np.isfinite(grid)):
        raise ValueError(f"random_effect_interval needs a finite (seeds, cases) grid, got shape {grid.shape}")
    n_seeds, n_cases = grid.shape
    mean = float(grid.mean()) if grid.size else math.nan
    if n_seeds < MIN_SEEDS or n_cases < 2:
        return RandomEffectInterval.missing(mean)
    if np.ptp(grid) == 0:
        return RandomEffectInterval(mean, mean, mean, 1.0 if mean == 0 else 0.0, math.inf, 0.0, 0.0, 0.0)
    import warnings

    from statsmodels.regression.mixed_linear_model import MixedLM, VCSpec
    n = n_seeds * n_cases  # rows seed-major: row s * C + c is (seed s, case c)
    seed_z, case_z = np.kron(np.eye(n_seeds), np.ones((n_cases, 1))), np.kron(np.ones((n_seeds, 1)), np.eye(n_cases))
    components_spec = VCSpec(["seed", "case"], [[[f"seed{i}" for i in range(n_seeds)]],
                                                [[f"case{i}" for i in range(n_cases)]]], [[seed_z], [case_z]])
    with warnings.catch_warnings():  # a component at 0 (its boundary) warns (convergence, singular
        warnings.simplefilter("ignore")  # covariance); the estimate is still REML's, truncated at 0
        # one group holding every row, no random effect but the two crossed variance components
        model = MixedLM(grid.ravel(), np.ones((n, 1)), np.zeros(n), exog_re=np.zeros((n, 0)), exog_vc=components_spec)
        fit = model.fit(reml=True)
    components = dict(zip(model.exog_vc.names, np.maximum(np.asarray(fit.vcomp, dtype=float), 0.0)))
    resid2 = float(fit.scale)
    ms = np.array([n_cases * components["seed"] + resid2, n_seeds * components["case"] + resid2, resid2])
    dfs = np.array([n_seeds - 1, n_cases - 1, (n_seeds - 1) * (n_cases - 1)], dtype=float)
    combined = ms[0] + ms[1] - ms[2]
    df = float(combined ** 2 / np.sum(ms ** 2 / dfs)) if combined > 0 else float(n_seeds - 1)
    mu, se = float(np.asarray(fit.fe_params)[0]), float(np.asarray(fit.bse_fe)[0])
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    p = float(2 * stats.t.sf(abs(mu) / se, df)) if se > 0 else (1.0 if mu == 0 else 0.0)
    return RandomEffectInterval(mu, mu - half, mu + half, p, df, math.sqrt(components["seed"]),
                                math.sqrt(components["case"]), math.sqrt(resid2))


def seed_case_grid(seeds: dict[int, dict[str, float]]) -> np.ndarray:
    """``{seed: {case: value}}`` -> (seeds, cases) array over the cases every seed has (both sorted)."""
    if not seeds:
        return np.zeros((0, 0))
    cases = sorted(set.intersection(*(set(v) for v in seeds.values())))
    return np.array([[seeds[s][c] for c in cases] for s in sorted(seeds)], dtype=float).reshape(len(seeds), len(cases))


@dataclass
class Comparison:
    """One paired comparison (differences are A - B, in Dice): two norms at one batch size; or, when
    ``batch_size_b`` is set, A at ``batch_size`` against B at ``batch_size_b``: one norm against
    itself (``norm_a == norm_b``, :func:`batch_size_table`), or the difference ``norm_a - norm_b``
    at the two batch sizes (:func:`interaction_table`).

    ``ci_low``/``ci_high``/``p_value``/``p_holm`` are the fixed-network interval and Wilcoxon test;
    ``re_*`` and ``seed_sd`` the random-effect interval, its t-test and the seed SD
    (:func:`random_effect_interval`). :attr:`random_effect` says which one the verdict uses."""

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
    re_low: float = math.nan
    re_high: float = math.nan
    re_p: float = math.nan
    re_p_holm: float = math.nan
    re_df: float = math.nan
    seed_sd: float = math.nan

    @property
    def random_effect(self) -> bool:
        """The random-effect interval exists (at least :data:`MIN_SEEDS` seeds): the verdict uses it."""
        return math.isfinite(self.re_low)

    @property
    def interval(self) -> tuple[float, float]:
        """The primary 95 % interval: random-effect when it exists, else fixed-network."""
        return (self.re_low, self.re_high) if self.random_effect else (self.ci_low, self.ci_high)

    @property
    def holm_p(self) -> float:
        """The Holm-corrected p-value of the primary interval's test (mixed-model t, or Wilcoxon)."""
        return self.re_p_holm if self.random_effect else self.p_holm

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
        """The primary interval contains 0 (or there is nothing to compare)."""
        low, high = self.interval
        return not (low > 0 or high < 0)

    @property
    def significant(self) -> bool:
        """The primary test's Holm-corrected p-value is below ALPHA."""
        return math.isfinite(self.holm_p) and self.holm_p < ALPHA

    @property
    def agree(self) -> bool:
        """The interval and the Holm-corrected test give the same answer (both a difference, or neither)."""
        return self.tie != self.significant

    @property
    def verdict(self) -> str:
        """The comparison's conclusion (module docstring), for example ``group better``,
        ``suggestive: instance better (Holm p 0.097)``, ``no practical difference`` or
        ``instance better (these networks only)``."""
        text = self._verdict()
        return text if self.random_effect or text == "-" else f"{text} ({THESE_NETWORKS_ONLY})"

    def _verdict(self) -> str:
        if not math.isfinite(self.mean_difference):
            return "-"
        low, high, p = *self.interval, self.holm_p
        within = -self.margin <= low and high <= self.margin
        if self.tie:
            word = "no practical difference" if within else "cannot tell"
            return word if self.agree or not math.isfinite(p) else f"{word}, Holm p {p:.2g}"
        winner = self.labels[0] if self.mean_difference > 0 else self.labels[1]
        seeds = [] if self.random_effect or self.seeds_agree else ["seeds disagree"]
        doubts = ([f"Holm p {p:.2g}"] if math.isfinite(p) and not self.significant else
                  [] if math.isfinite(p) else ["no test"]) + seeds
        if doubts:
            return f"suggestive: {winner} better ({', '.join(doubts)})"
        return f"{winner} better" + (f" by less than {self.margin:g}" if within else "")

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.label is None:
            del d["label"]
        d["per_seed"] = " ".join(f"{v:+.4f}" for v in self.per_seed)
        return {**d, "seeds_agree": self.seeds_agree, "random_effect": self.random_effect, "tie": self.tie,
                "significant": self.significant, "verdict": self.verdict}


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
        re = random_effect_interval(seed_case_grid(_difference(a, b))) if d.size else RandomEffectInterval.missing()
        rows.append(Comparison(**ident, seeds=len(set(a) & set(b)), cases=int(d.size), mean_difference=mean,
                               ci_low=lo, ci_high=hi, p_value=p, per_seed=per_seed_differences(a, b), margin=margin,
                               re_low=re.low, re_high=re.high, re_p=re.p, re_df=re.df, seed_sd=re.seed_sd))
    for row, p, p_re in zip(rows, holm([r.p_value for r in rows]), holm([r.re_p for r in rows])):
        row.p_holm, row.re_p_holm = p, p_re
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


BN_WINDOW = "batch [window]"  # batch norm's final network, each window normalized by its own statistics
BN_PRECISE = "batch [precise]"  # the same network with re-estimated population statistics (precise BN)


def inference_statistics_table(dice: dict[tuple[str, int], Seeds], margin: float = NEGLIGIBLE) -> list[Comparison]:
    """Batch norm's final networks inferred three ways (medseg/training/bn_modes.py), at each batch
    size: each window's own statistics (:data:`BN_WINDOW`) and re-estimated statistics
    (:data:`BN_PRECISE`) against the running averages (``batch``), and instance norm against each
    of the two. Paired over (seed, case) as the other tables (within a batch-norm child the three
    share the weights; against instance norm, the seed's patches and initial weights), with both
    intervals, Holm-corrected across this table.

    Args:
        dice: ``{(name, batch size): {seed: {case: Dice}}}`` with names ``batch``, ``instance``,
            :data:`BN_WINDOW`, :data:`BN_PRECISE` (the others are ignored).

    Returns:
        the rows, by batch size; empty when no batch-norm child measured the other statistics.
    """
    pairs = []
    for bs in sorted({b for n, b in dice if n in (BN_WINDOW, BN_PRECISE)}):
        for mode in (BN_WINDOW, BN_PRECISE):
            if (mode, bs) not in dice:
                continue
            if ("batch", bs) in dice:
                pairs.append(((mode, bs), ("batch", bs)))
            if ("instance", bs) in dice:
                pairs.append((("instance", bs), (mode, bs)))
    return _compare_cells(dice, pairs, margin)


def mean_ci(values: np.ndarray) -> tuple[float, float, float]:
    """Mean of per-case values with its 95 % bootstrap CI (BCa, cases resampled)."""
    values = np.asarray(values, dtype=float)
    if values.size < 2 or np.all(values == values[0]):
        m = float(values.mean()) if values.size else math.nan
        return m, m, m
    ci = stats.bootstrap((values,), np.mean, confidence_level=CONFIDENCE, n_resamples=N_RESAMPLES, method="BCa",
                         random_state=RANDOM_STATE).confidence_interval
    return float(values.mean()), float(ci.low), float(ci.high)
