"""medseg.study.statistics: paired comparisons. The paired statistics on a whole sweep store, against
scipy and statsmodels, are checked through the report in test_report.py
(test_the_paired_statistics_are_scipys_on_the_known_differences)."""
import math

import numpy as np

from medseg.study.statistics import Comparison, compare


def test_compare_on_degenerate_input():
    assert compare(np.zeros(5))[1:] == (0.0, 0.0, 1.0)
    assert all(math.isnan(v) for v in compare(np.array([])))


def _comparison(ci_low: float, ci_high: float, p_holm: float) -> Comparison:
    return Comparison(2, "instance", "group", seeds=2, cases=26, mean_difference=(ci_low + ci_high) / 2,
                      ci_low=ci_low, ci_high=ci_high, p_value=p_holm / 3, p_holm=p_holm)


def test_the_verdict_shows_the_holm_p_only_when_the_test_disagrees_with_the_interval():
    assert _comparison(0.002, 0.012, 0.001).verdict == "instance better"
    assert _comparison(-0.012, -0.002, 0.001).verdict == "group better"
    assert _comparison(-0.004, 0.006, 0.6).verdict == "tie"
    # the case of the first MRI sitting: interval above 0, Holm p 0.097
    assert _comparison(0.002, 0.012, 0.097).verdict == "instance better, Holm p 0.097"
    assert _comparison(-0.001, 0.012, 0.01).verdict == "tie, Holm p 0.01"
    assert _comparison(0.002, 0.012, math.nan).verdict == "instance better"

