"""medseg.study.statistics: paired comparisons. The paired statistics on a whole sweep store, against
scipy and statsmodels, are checked through the report in test_report.py
(test_the_paired_statistics_are_scipys_on_the_known_differences)."""
import math

import numpy as np

from medseg.study.statistics import compare


def test_compare_on_degenerate_input():
    assert compare(np.zeros(5))[1:] == (0.0, 0.0, 1.0)
    assert all(math.isnan(v) for v in compare(np.array([])))
