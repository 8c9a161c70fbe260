"""medseg.study.statistics: paired comparisons. The paired statistics on a whole sweep store, against
scipy and statsmodels, are checked through the report in test_report.py
(test_the_paired_statistics_are_scipys_on_the_known_differences)."""
import math

import numpy as np
import pytest

from medseg.study.statistics import Comparison, compare


def test_compare_on_degenerate_input():
    from scipy import stats
    assert compare(np.zeros(5))[1:] == (0.0, 0.0, 1.0)
    assert all(math.isnan(v) for v in compare(np.array([])))
    mean, lo, hi, p = compare(np.array([0.02]))
    assert (mean, lo, hi) == (0.02, 0.02, 0.02) and math.isnan(p)
    # equal non-zero differences: nothing to resample, but the signed-rank test still runs (2 / 2^8)
    mean, lo, hi, p = compare(np.full(8, 0.02))
    assert lo == hi == 0.02 and p == stats.wilcoxon(np.full(8, 0.02)).pvalue == 2 / 2 ** 8


def test_the_per_seed_differences_use_the_cases_of_the_interval():
    from medseg.study.statistics import paired_case_differences, per_seed_differences
    cases = [f"c{i}" for i in range(10)]
    a = {0: {c: 0.8 for c in cases}, 1: {c: 0.8 for c in cases[1:]}}  # seed 1 lacks c0
    b = {0: {c: 0.8 for c in cases}, 1: {c: 0.8 for c in cases[1:]}}
    a[0]["c0"] = 0.9  # an outlier on the case seed 1 lacks
    assert paired_case_differences(a, b).size == 9
    assert per_seed_differences(a, b) == pytest.approx((0.0, 0.0), abs=1e-12)


def _comparison(ci_low: float, ci_high: float, p_holm: float, per_seed: tuple[float, ...] = ()) -> Comparison:
    return Comparison(2, "instance", "group", seeds=2, cases=26, mean_difference=(ci_low + ci_high) / 2,
                      ci_low=ci_low, ci_high=ci_high, p_value=p_holm / 3, p_holm=p_holm, per_seed=per_seed,
                      margin=0.01)


def test_the_verdict_combines_the_interval_the_holm_p_the_seeds_and_the_margin():
    """With 2 seeds (no random-effect interval) the fixed-network interval, its Holm p and the seeds
    decide, and the verdict says "these networks only"."""
    only = " (these networks only)"
    assert _comparison(0.004, 0.022, 0.001).verdict == "instance better" + only
    assert _comparison(-0.022, -0.004, 0.001, (-0.02, -0.01)).verdict == "group better" + only
    assert _comparison(0.002, 0.008, 0.001).verdict == "instance better by less than 0.01" + only
    # the case of the first MRI sitting: interval above 0, Holm p 0.097
    assert _comparison(0.002, 0.012, 0.097).verdict == "suggestive: instance better (Holm p 0.097)" + only
    assert _comparison(0.002, 0.012, 0.001, (0.015, -0.001)).verdict == ("suggestive: instance better (seeds disagree)"
                                                                         + only)
    assert _comparison(-0.004, 0.006, 0.6).verdict == "no practical difference" + only
    assert _comparison(-0.004, 0.016, 0.6).verdict == "cannot tell" + only
    assert _comparison(-0.001, 0.012, 0.01).verdict == "cannot tell, Holm p 0.01" + only
    # no test (one case): the CI alone does not make a winner
    assert _comparison(0.002, 0.022, math.nan).verdict == "suggestive: instance better (no test)" + only
    # a seed at exactly 0 does not agree with a positive mean
    assert _comparison(0.004, 0.022, 0.001, (0.02, 0.0)).verdict == ("suggestive: instance better (seeds disagree)"
                                                                     + only)


def test_with_a_random_effect_interval_the_verdict_follows_it_and_its_holm_p():
    def re(low, high, p_holm, per_seed=(0.01, 0.02, 0.01)):
        fixed = dict(ci_low=0.004, ci_high=0.022, p_holm=0.001)  # what the fixed-network path would call a win
        return Comparison(2, "instance", "group", seeds=3, cases=26, mean_difference=0.013, p_value=0.0003,
                          per_seed=per_seed, margin=0.01, re_low=low, re_high=high, re_p=p_holm / 3,
                          re_p_holm=p_holm, seed_sd=0.005, **fixed)
    assert re(0.002, 0.024, 0.003).verdict == "instance better"
    assert re(0.002, 0.024, 0.003, per_seed=(0.03, -0.001, 0.01)).verdict == "instance better"  # seeds are in the CI
    assert re(-0.003, 0.029, 0.2).verdict == "cannot tell"  # the fixed-network interval excluded 0
    assert re(0.001, 0.025, 0.08).verdict == "suggestive: instance better (Holm p 0.08)"
    assert re(-0.003, 0.029, 0.2).interval == (-0.003, 0.029) and re(-0.003, 0.029, 0.2).holm_p == 0.2


CASES12 = [f"c{i}" for i in range(12)]


def _cell_dice(norm: str, bs: int, seed: int, i: int) -> float:
    """Batch norm loses 0.03 + 0.002 * case at batch 1 and nothing at batch 2; instance norm moves
    by +-0.005 alternating by case at batch 1 (no effect); seeds shift every cell alike."""
    base = 0.8 + 0.005 * i + 0.01 * seed
    if norm == "batch":
        return base - (0.03 + 0.002 * i if bs == 1 else 0.0)
    return base + (0.005 * (-1) ** i if bs == 1 else 0.0)


def _cells() -> dict:
    return {(n, b): {s: {c: _cell_dice(n, b, s, i) for i, c in enumerate(CASES12)} for s in (0, 1)}
            for n in ("instance", "batch") for b in (1, 2, 4)}


def test_the_batch_size_table_compares_each_norm_with_itself_at_the_largest_batch_size():
    from scipy import stats

    from medseg.study.statistics import batch_size_table
    cases, table = CASES12, _cells()
    rows = {(c.norm_a, c.batch_size): c for c in batch_size_table(table, ["instance", "batch"])}
    assert set(rows) == {("instance", 1), ("instance", 2), ("batch", 1), ("batch", 2)}
    bn1 = rows[("batch", 1)]
    assert bn1.norm_b == "batch" and bn1.batch_size_b == 4 and bn1.seeds == 2 and bn1.cases == 12
    # the per-case differences in the table's case order (sorted names: the bootstrap's resamples
    # depend on it); hand-checkable: -(0.03 + 0.002 i) for case c<i>, mean -0.041
    d = np.array([np.mean([table[("batch", 1)][s][c] - table[("batch", 4)][s][c] for s in (0, 1)])
                  for c in sorted(cases)])
    assert d == pytest.approx([-(0.03 + 0.002 * int(c[1:])) for c in sorted(cases)], abs=1e-12)
    assert bn1.mean_difference == pytest.approx(-0.041, abs=1e-12)
    ci = stats.bootstrap((d,), np.mean, n_resamples=10_000, method="BCa", random_state=0).confidence_interval
    assert (bn1.ci_low, bn1.ci_high) == (pytest.approx(ci.low, abs=1e-12), pytest.approx(ci.high, abs=1e-12))
    assert bn1.p_value == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-9)
    assert bn1.verdict == "batch size 4 better (these networks only)"  # 2 seeds
    assert bn1.per_seed == pytest.approx((-0.041, -0.041), abs=1e-12) and bn1.seeds_agree
    assert rows[("instance", 1)].tie and rows[("batch", 2)].mean_difference == pytest.approx(0, abs=1e-12)
    assert batch_size_table({k: v for k, v in table.items() if k[1] == 4}, ["instance", "batch"]) == []


def test_the_interaction_table_is_the_difference_in_differences_against_the_reference():
    from scipy import stats

    from medseg.study.statistics import interaction_table
    rows = {c.batch_size: c for c in interaction_table(_cells(), ["instance", "batch"], "instance")}
    assert set(rows) == {1, 2}
    one = rows[1]
    assert (one.norm_a, one.norm_b, one.batch_size_b, one.seeds, one.cases) == ("batch", "instance", 4, 2, 12)
    # (batch - instance at 1) - (batch - instance at 4) = -(0.03 + 0.002 i) - 0.005 (-1)^i: mean -0.041
    d = np.array([-(0.03 + 0.002 * int(c[1:])) - 0.005 * (-1) ** int(c[1:]) for c in sorted(CASES12)])
    assert one.mean_difference == pytest.approx(-0.041, abs=1e-12) == pytest.approx(d.mean(), abs=1e-12)
    assert one.p_value == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-9)
    assert one.verdict == "batch size 4 better (these networks only)"  # 2 seeds; batch norm does worse against instance norm at batch 1
    assert rows[2].mean_difference == pytest.approx(0, abs=1e-12)
    assert interaction_table(_cells(), ["instance", "batch"], "group") == []


def test_the_label_table_compares_the_reference_with_each_norm_on_each_label_alone():
    from scipy import stats

    from medseg.study.statistics import holm, label_table
    # label "bone": batch norm loses 0.02 + 0.001 i at batch 1; label "soft": no difference anywhere
    dice = {label: {(n, b): {s: {c: 0.7 + 0.01 * i + 0.01 * s - (0.02 + 0.001 * i if (label, n, b) == ("bone", "batch", 1)
                                                                  else 0.0)
                                 for i, c in enumerate(CASES12)} for s in (0, 1)}
                    for n in ("instance", "batch") for b in (1, 4)} for label in ("soft", "bone")}
    table = label_table(dice, ["instance", "batch"], "instance")
    assert [(c.label, c.batch_size, c.norm_a, c.norm_b) for c in table] == [
        ("bone", 1, "instance", "batch"), ("bone", 4, "instance", "batch"),
        ("soft", 1, "instance", "batch"), ("soft", 4, "instance", "batch")]
    bone1 = table[0]
    d = np.array([0.02 + 0.001 * int(c[1:]) for c in sorted(CASES12)])
    assert bone1.mean_difference == pytest.approx(d.mean(), abs=1e-12)
    assert bone1.p_value == pytest.approx(stats.wilcoxon(d).pvalue, rel=1e-9)
    # one Holm family over the whole table, every label (the three zero rows have p = 1)
    assert [c.p_holm for c in table] == pytest.approx(holm([c.p_value for c in table]))
    assert bone1.p_holm == pytest.approx(min(1.0, 4 * bone1.p_value), rel=1e-9)
    assert bone1.verdict == "instance better (these networks only)" and all(c.tie for c in table[1:])
    assert "label" in bone1.to_dict() and bone1.to_dict()["label"] == "bone"
    assert label_table(dice, ["instance", "batch"], "group") == []


def _crossed(rng, seeds: int, cases: int, mu: float, seed_sd: float, case_sd: float, resid_sd: float) -> np.ndarray:
    """A (seeds, cases) grid of paired differences with known mean and crossed seed and case effects."""
    return (mu + rng.normal(0, seed_sd, (seeds, 1)) + rng.normal(0, case_sd, (1, cases))
            + rng.normal(0, resid_sd, (seeds, cases)))


def test_the_random_effect_interval_covers_the_true_difference_and_the_fixed_network_one_does_not():
    """Simulated studies with a known difference (0.01) and seed variation about as large as the case
    variation, 5 seeds x 40 cases (the MRI arm's design). The random-effect 95 % interval covers the
    truth in 95 % of 200 repetitions up to sampling: the binomial SE of a coverage over 200 is
    sqrt(0.95 * 0.05 / 200) = 0.0154, and the test accepts 3 SE (0.904 to 0.996). The fixed-network
    interval (cases resampled, seeds averaged) misses the seed term; its expected coverage here is
    P(|Z| < 1.96 * sqrt(2.45 / 10.45)) = 0.65, and 0.84 is 3 SE (60 repetitions: 0.062) above that."""
    from medseg.study.statistics import random_effect_interval
    rng, mu = np.random.default_rng(20261204), 0.01
    covered = fixed = 0
    for i in range(200):
        grid = _crossed(rng, 5, 40, mu, seed_sd=0.02, case_sd=0.03, resid_sd=0.02)
        re = random_effect_interval(grid)
        covered += re.low <= mu <= re.high
        if i < 60:
            _, lo, hi, _ = compare(grid.mean(axis=0))
            fixed += lo <= mu <= hi
    assert 0.904 <= covered / 200 <= 0.996
    assert fixed / 60 <= 0.84


def test_the_random_effect_interval_on_a_hand_checkable_grid():
    """3 seeds x 4 cases, balanced: REML equals the two-way random-effects ANOVA, worked out here
    from the mean squares (Searle et al. 1992): SE^2 = (MS_seed + MS_case - MS_resid) / (S C) and
    Satterthwaite's degrees of freedom."""
    from scipy import stats

    from medseg.study.statistics import random_effect_interval
    grid = np.array([[0.02, 0.05, 0.01, 0.04],
                     [0.00, 0.03, -0.01, 0.03],
                     [0.05, 0.06, 0.03, 0.07]])
    n_s, n_c = grid.shape
    res = grid - grid.mean(1, keepdims=True) - grid.mean(0, keepdims=True) + grid.mean()
    ms_s, ms_c = n_c * grid.mean(1).var(ddof=1), n_s * grid.mean(0).var(ddof=1)
    ms_e = (res ** 2).sum() / ((n_s - 1) * (n_c - 1))
    se = math.sqrt((ms_s + ms_c - ms_e) / (n_s * n_c))
    df = (ms_s + ms_c - ms_e) ** 2 / (ms_s ** 2 / (n_s - 1) + ms_c ** 2 / (n_c - 1) + ms_e ** 2 / ((n_s - 1) * (n_c - 1)))
    half = stats.t.ppf(0.975, df) * se
    re = random_effect_interval(grid)
    assert re.mean == pytest.approx(grid.mean(), abs=1e-9)
    # REML's optimizer stops within about 1e-6 relative of the optimum: 1e-4 leaves room for that
    assert (re.low, re.high) == pytest.approx((grid.mean() - half, grid.mean() + half), rel=1e-4)
    assert re.df == pytest.approx(df, rel=1e-4)
    assert re.seed_sd == pytest.approx(math.sqrt((ms_s - ms_e) / n_c), rel=1e-3)
    assert re.p == pytest.approx(2 * stats.t.sf(grid.mean() / se, df), rel=1e-3)


def test_fewer_than_three_seeds_give_no_random_effect_interval_and_the_verdict_says_these_networks_only():
    from medseg.study.statistics import MIN_SEEDS, THESE_NETWORKS_ONLY, pairwise_table, random_effect_interval
    assert MIN_SEEDS == 3
    assert math.isnan(random_effect_interval(np.ones((2, 10)) * 0.1 + np.arange(10) * 0.01).low)
    rng = np.random.default_rng(0)
    cases = [f"c{i}" for i in range(20)]

    def cell(offset, seeds):
        return {s: {c: 0.8 + offset + 0.01 * rng.normal() for c in cases} for s in seeds}
    two = pairwise_table({("instance", 1): cell(0.05, (0, 1)), ("batch", 1): cell(0.0, (0, 1))}, ["instance", "batch"])
    five = pairwise_table({("instance", 1): cell(0.05, range(5)), ("batch", 1): cell(0.0, range(5))},
                          ["instance", "batch"])
    assert not two[0].random_effect and two[0].verdict == f"instance better ({THESE_NETWORKS_ONLY})"
    assert five[0].random_effect and five[0].verdict == "instance better"
    assert five[0].interval == (five[0].re_low, five[0].re_high) and five[0].seed_sd >= 0
