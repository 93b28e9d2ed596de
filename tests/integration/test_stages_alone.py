"""Each stage of a run runs from its own typed request (common/harness/requests.py), with no RunConfig anywhere
(issue 33): the dataset, engine, inference, evaluation and timing stages on a generated COCO set and the tiny
detector. Building a RunConfig is made to fail while they run, and the stages' COCO stats must be the accuracy
driver's own on the same images."""
from __future__ import annotations

from collections import Counter

import pytest

from common.config.options import RunConfig
from common.config.specs import load_model
from common.data.coco import DatasetRequest
from common.data.loader import open_loader
from common.data.preprocess import Preprocessor
from common.decode.outputs import get_decoder
from common.harness.engine import prepare
from common.harness.requests import EngineRequest, EvaluationRequest, TimingRequest
from common.harness.run_state import RunState
from common.harness.runs import (Sinks, evaluate, infer_all, measure_performance, new_evaluator, read_dataset,
                                 run_accuracy, run_performance)
from common.harness.upfront import check_before_images
from tiny_detector import tiny_detector_env


@pytest.fixture
def no_runconfig(monkeypatch):
    """Any RunConfig built while this is active is an error."""
    def refuse(self):
        raise AssertionError("a stage built a RunConfig")
    monkeypatch.setattr(RunConfig, "__post_init__", refuse)
    return monkeypatch


def test_stages_run_from_their_own_requests(tmp_path, no_runconfig):
    env = tiny_detector_env(tmp_path, 40)
    variant = load_model(str(env["spec"])).variant()
    dataset = DatasetRequest(str(env["coco"]), max_images=32)
    engine = EngineRequest(cache_dir=str(tmp_path / "cache"), onnx=str(env["onnx"]), batch_size=4)
    with pytest.raises(AssertionError, match="built a RunConfig"):
        RunConfig(model="tiny")  # the guard is live

    data = read_dataset(dataset, variant)  # the dataset stage
    assert len(data.items) == 32 and data.ann_file.name == "instances_val2017.json"
    check_before_images(engine)
    p = prepare(engine, variant)  # the engine stage
    assert p.asked is engine and p.request.batch_size == 4
    evaluation = EvaluationRequest(bootstrap=0)
    evaluator = new_evaluator(data, variant, evaluation)  # the evaluation stage's evaluator
    state = RunState(tmp_path / "state", p.onnx_sha256)
    assert state.claim()
    nonfinite: Counter = Counter()
    pre = Preprocessor(variant.preprocess, variant.height, variant.width)
    with open_loader(data.items, pre, engine.batch_size, 0, False) as loader:
        infer_s = infer_all(p, [p.runner], iter(loader), get_decoder(variant.output), evaluator, state, 0,
                            Sinks(nonfinite))  # the inference stage
    ev = evaluate(evaluator, data, evaluation)  # the evaluation stage
    evaluator.close()
    stats = ev.metrics
    state.clear()
    assert infer_s > 0 and not nonfinite and len(evaluator.store) == 32 * 3  # three boxes an image
    assert 0 < stats["AP"] <= 1 and ev.intervals is None  # bootstrap=0: no intervals

    timing = TimingRequest(warmup_s=0.0, min_duration_s=0.05, min_iters=3, progress=False)
    perf = measure_performance(p, timing, dataset)  # the timing stage
    assert perf["metrics"]["fps"] > 0 and perf["input"].endswith("instances_val2017.json")
    assert perf["timing_settings"]["min_iters"] == 3 and perf["batch_size"] == 4

    no_runconfig.undo()  # the driver, from a RunConfig, on the same images: the same stats
    record = run_accuracy(RunConfig(model=str(env["spec"]), onnx=str(env["onnx"]), dataset_dir=str(env["coco"]),
                                    max_images=32, batch_size=4, results_dir=str(tmp_path / "results"),
                                    cache_dir=str(tmp_path / "cache"), progress=False, preflight=0, bootstrap=0))
    assert record["metrics"] == stats and record["dataset"]["category_coverage"] == ev.coverage


def test_following_cfg_from_run_accuracy_stays_in_the_drivers_folder(tmp_path):
    """The acceptance of issue 33, watched at run time: every call of the suite's code that is handed a RunConfig,
    in any thread, while accuracy runs (one whole, one a shard with --save-detections) and a performance run run,
    is in common/harness/ (or RunConfig's own module, common/config/options.py). Planted: a function of
    common/data/coco.py called with the cfg from _run_accuracy is reported."""
    import os
    import sys
    import threading

    import common as package

    common = os.path.dirname(package.__file__) + "/"  # as the modules were imported (.importpath/common)
    allowed = (common + "harness/", common + "config/options.py")
    seen: set[str] = set()

    def watch(frame, event, arg):
        path = frame.f_code.co_filename
        if event == "call" and path.startswith(common) and not path.startswith(allowed):
            if any(isinstance(v, RunConfig) for v in frame.f_locals.values()):
                seen.add(f"{path[len(common):]}:{frame.f_code.co_name}")

    env = tiny_detector_env(tmp_path, 40)
    runs = [dict(), dict(shard="2/3", detections_out=str(tmp_path / "dets.json"))]
    threading.setprofile(watch)
    sys.setprofile(watch)
    try:
        for extra in runs:
            record = run_accuracy(RunConfig(model=str(env["spec"]), onnx=str(env["onnx"]), dataset_dir=str(env["coco"]),
                                            results_dir=str(tmp_path / "results"), cache_dir=str(tmp_path / "cache"),
                                            progress=False, bootstrap=10, workers=0, **extra))
            assert record["verdict"] in ("pass", "unchecked")
        perf = run_performance(RunConfig(model=str(env["spec"]), onnx=str(env["onnx"]), dataset_dir=str(env["coco"]),
                                         cache_dir=str(tmp_path / "cache"), progress=False, warmup_s=0.0,
                                         min_duration_s=0.05, min_iters=3))
        assert perf["metrics"]["fps"] > 0
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    assert seen == set(), sorted(seen)
