"""The one comparator: a planted difference must fail each compare function, an identical run must pass."""
import numpy as np

from common.compare.comparator import FunctionRunner, allclose, compare, detections_agree, run_all


def _runners(shift=0.0, nan=False):
    def ref(x):
        return [x * 2.0]

    def cand(x):
        y = x * 2.0 + shift
        if nan:
            y = y.copy()
            y.flat[0] = np.nan
        return [y]
    return {"ref": FunctionRunner(ref, ["y"]), "cand": FunctionRunner(cand, ["y"])}


BATCHES = [np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)]


def test_allclose_passes_identical_and_fails_planted_differences():
    judge = allclose(atol=1e-3, rtol=1e-3)
    assert compare(run_all(_runners(), BATCHES), judge)["cand"].ok
    shifted = compare(run_all(_runners(shift=0.01), BATCHES), judge)["cand"]
    assert not shifted.ok and shifted.details["y"]["max_abs"] > 9e-3 and shifted.reasons
    assert not compare(run_all(_runners(nan=True), BATCHES), judge)["cand"].ok


def _decode(shift):
    def decode(out):
        boxes = np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float64) + shift
        return [(boxes, np.array([0.9, 0.8]), np.array([1, 2]))]
    return decode


def test_detections_agree_fails_moved_boxes():
    outputs = {"a": [{"y": np.zeros(1)}], "b": [{"y": np.zeros(1)}]}
    same = compare(outputs, detections_agree(_decode(0.0)))["b"]
    assert same.ok and same.details["agreement"] == 1.0
    judge_moved = detections_agree(lambda out: _decode(0.0 if out is outputs["a"][0] else 3.0)(out))
    moved = compare(outputs, judge_moved)["b"]
    assert not moved.ok and moved.details["matched"] == 0
