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
    assert _comparison(0.004, 0.022, 0.001).verdict == "instance better"
    assert _comparison(-0.022, -0.004, 0.001, (-0.02, -0.01)).verdict == "group better"
    assert _comparison(0.002, 0.008, 0.001).verdict == "instance better by less than 0.01"
    # the case of the first MRI sitting: interval above 0, Holm p 0.097
    assert _comparison(0.002, 0.012, 0.097).verdict == "suggestive: instance better (Holm p 0.097)"
    assert _comparison(0.002, 0.012, 0.001, (0.015, -0.001)).verdict == "suggestive: instance better (seeds disagree)"
    assert _comparison(-0.004, 0.006, 0.6).verdict == "no practical difference"
    assert _comparison(-0.004, 0.016, 0.6).verdict == "cannot tell"
    assert _comparison(-0.001, 0.012, 0.01).verdict == "cannot tell, Holm p 0.01"
    # no test (one case): the CI alone does not make a winner
    assert _comparison(0.002, 0.022, math.nan).verdict == "suggestive: instance better (no test)"
    # a seed at exactly 0 does not agree with a positive mean
    assert _comparison(0.004, 0.022, 0.001, (0.02, 0.0)).verdict == "suggestive: instance better (seeds disagree)"


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
    assert bn1.verdict == "batch size 4 better"
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
    assert one.verdict == "batch size 4 better"  # batch norm does worse against instance norm at batch 1
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
    assert bone1.verdict == "instance better" and all(c.tie for c in table[1:])
    assert "label" in bone1.to_dict() and bone1.to_dict()["label"] == "bone"
    assert label_table(dice, ["instance", "batch"], "group") == []
