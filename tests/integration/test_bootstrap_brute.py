"""The bootstrap's interval against a brute-force bootstrap: independent resamples, each materialised and
evaluated by pycocotools (about 150 COCO evaluations, so not in the unit tier)."""
import numpy as np
import pytest

from common.evaluate.bootstrap import intervals, resample_weights, resampled_stats
from common.evaluate.metrics import coco_metrics

from helpers import bootstrap_case
from synthetic_detections import materialise


@pytest.fixture(scope="module")
def case():
    return bootstrap_case()


def test_interval_agrees_with_brute_force_bootstrap(case):
    """Independent draws on both sides: the two 95 % intervals of AP agree within Monte Carlo error (the standard
    error of a bootstrap percentile at 200 resamples is a few tenths of the interval's half-width)."""
    ann, rows, ids, cats, table = case
    rng = np.random.default_rng(5)
    brute = []
    for _ in range(150):
        counts = rng.multinomial(len(ids), np.full(len(ids), 1 / len(ids)))
        brute.append(coco_metrics(*materialise(ann, rows, counts), cats, "pycocotools")["AP"])
    lo_b, hi_b = np.percentile(brute, [2.5, 97.5])
    lo, hi = intervals(table, resamples=1000, seed=1)["stats"]["AP"]
    half = (hi - lo) / 2
    assert lo < table.point["AP"] < hi
    assert abs(lo - lo_b) < 0.35 * half and abs(hi - hi_b) < 0.35 * half
    assert abs(np.std(brute) - np.std(resampled_stats(table, resample_weights(len(ids), 1000, 1))[:, 0])) \
        < 0.2 * np.std(brute)
