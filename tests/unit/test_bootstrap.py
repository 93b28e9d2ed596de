"""The bootstrap over images (common/evaluate/bootstrap.py) against pycocotools run on materialised resamples:
every image copied as often as the resample draws it, under new ids, ground truth and detections with it."""
import numpy as np
import pytest

from common.evaluate.bootstrap import (MatchTable, intervals, paired_interval, resample_weights,
                                       resampled_stats)
from common.evaluate.metrics import STAT_NAMES, coco_metrics
from helpers import bootstrap_case
from synthetic_detections import materialise


@pytest.fixture(scope="module")
def case():
    return bootstrap_case()


def test_unit_weights_give_the_run_itself(case):
    ann, rows, ids, cats, table = case
    ref = coco_metrics(ann, rows, ids, cats, "pycocotools")
    ours = resampled_stats(table, np.ones((1, len(ids)), np.float32))[0]
    for j, name in enumerate(STAT_NAMES):
        assert ours[j] == pytest.approx(ref[name], abs=1e-12), name


def test_every_resample_equals_pycocotools_on_the_materialised_resample(case):
    ann, rows, ids, cats, table = case
    W = resample_weights(len(ids), 6, seed=11)
    ours = resampled_stats(table, W)
    for b in range(len(W)):
        ref = coco_metrics(*materialise(ann, rows, W[b]), cats, "pycocotools")
        for j, name in enumerate(STAT_NAMES):
            assert ours[b, j] == pytest.approx(ref[name], abs=1e-9), (b, name)


def test_paired_interval_of_a_run_against_itself_is_zero(case):
    _, _, _, _, table = case
    p = paired_interval(table, table, resamples=200)
    assert p["diff"]["AP"] == [0.0, 0.0] and p["diff"]["AP50"] == [0.0, 0.0]


def test_paired_interval_sees_a_drop_the_single_intervals_overlap(case):
    """Planted: 30 % of the detections scoring above 0.2 (most true positives) removed. The two runs' own
    intervals overlap; the paired interval of the difference excludes 0."""
    ann, rows, ids, cats, table = case
    rng = np.random.default_rng(2)
    worse = rows[~((rng.random(len(rows)) < 0.3) & (rows[:, 5] > 0.2))]
    other = MatchTable.from_rows(ann, worse, ids, cats)
    a, b = intervals(table, 500)["stats"]["AP"], intervals(other, 500)["stats"]["AP"]
    assert a[0] < b[1] and b[0] < a[1]
    lo, hi = paired_interval(other, table, 500)["diff"]["AP"]
    assert hi < 0


def test_different_image_sets_are_refused(case):
    ann, rows, ids, cats, table = case
    other = MatchTable.from_rows(ann, rows, ids[:-1], cats)
    with pytest.raises(ValueError, match="same images"):
        paired_interval(table, other, 10)
