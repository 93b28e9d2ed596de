"""Shared fixtures. Real-data tests read ../shared/data through $SUITE_SHARED_DATA and skip when it is unset."""
from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# the entry scripts' bootstrap: `python -m pytest` from the repo root puts the root on sys.path, whose datasets/
# folder transformers would take for Hugging Face's `datasets` package
runpy.run_path(str(REPO / "scripts" / "ixuca_suite.py"))
sys.path.insert(0, str(REPO / "datasets"))

SHARED_ENV = "SUITE_SHARED_DATA"

# pytest-xdist already gives every core a worker: a runtime spreading each inference over all cores would only
# have its threads wait (and spin) for the other workers' cores. The scripts the tests start inherit it.
os.environ.setdefault("SUITE_THREADS", "1")


def pytest_collection_modifyitems(session, config, items):
    """Files with slow tests first: pytest-xdist hands whole files to the workers in this order, so the long ones
    start early and the many short ones fill the end, instead of one worker finishing a long file alone."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)   # stable: each file keeps its own order


@pytest.fixture(scope="session")
def shared_data() -> Path:
    value = os.environ.get(SHARED_ENV)
    if not value:
        pytest.skip(f"${SHARED_ENV} is not set: point it at shared/data to run the real-data tests")
    path = Path(value).resolve()
    if not (path / "coco" / "val2017").is_dir():
        pytest.skip(f"${SHARED_ENV}={value} has no coco/val2017 directory")
    return path


@pytest.fixture(scope="session")
def rtmdet_onnx(shared_data) -> Path:
    path = shared_data / "models" / "rtmdet-nano-person" / "rtmdet_nano.onnx"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="session")
def coco_layout(shared_data, tmp_path_factory) -> Path:
    """The public recipes' layout (images/val2017, annotations/) made of symlinks to the shared data."""
    root = tmp_path_factory.mktemp("coco")
    (root / "images").mkdir()
    (root / "images" / "val2017").symlink_to(shared_data / "coco" / "val2017")
    (root / "annotations").symlink_to(shared_data / "coco" / "annotations")
    return root


@pytest.fixture(scope="session")
def rtmdet_raw_onnx(rtmdet_onnx, tmp_path_factory) -> Path:
    """The shared end2end model cut at its raw head outputs (the nano-person-raw variant's output names): the
    trained network without the graph's own NMS."""
    import onnx.utils

    from common.config.specs import load_model

    out = load_model("rtmdet").variant("nano-person-raw").output
    path = tmp_path_factory.mktemp("rawcut") / "rtmdet_nano_raw.onnx"
    onnx.utils.extract_model(str(rtmdet_onnx), str(path), ["input"], list(out["cls"]) + list(out["reg"]))
    return path


PERSON350 = "instances_val2017_person_subset350.json"


@pytest.fixture(scope="session")
def rtmdet_fp32_pass(rtmdet_onnx, shared_data, tmp_path_factory):
    """The FP32 pass of the shared RTMDet-nano person graph (ONNX Runtime, CPU) over the 350 shared images,
    computed once per test session, however many pytest-xdist workers ask for it: its record, its detections (COCO
    results JSON), its raw outputs (a replay recording) and its input cache. Tests that only need these reuse them
    rather than recompute the pass."""
    import fcntl
    import json
    from types import SimpleNamespace

    from common.harness.runs import RunConfig, run_accuracy

    # the workers of one session share the parent of their base temp dirs (pytest-xdist's own layout)
    shared = os.environ.get("PYTEST_XDIST_WORKER") is not None
    base = tmp_path_factory.getbasetemp()
    work = (base.parent if shared else base) / "fp32pass"
    work.mkdir(exist_ok=True)
    cfg = RunConfig(model="rtmdet", onnx=str(rtmdet_onnx), dataset_dir=str(shared_data / "coco"),
                    annotation=PERSON350, results_dir=str(work / "results"), cache_dir=str(work / "engines"),
                    record_outputs=str(work / "recording"), input_cache=str(work / "inputs"),
                    detections_out=str(work / "detections.json"), progress=False, preflight=0)
    done = work / "record.json"
    with open(work / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)      # the other workers wait here for the one computing it
        if not done.exists():
            record = run_accuracy(cfg)
            tmp = done.with_suffix(".tmp")
            tmp.write_text(json.dumps(record))
            tmp.replace(done)
        record = json.loads(done.read_text())
    return SimpleNamespace(cfg=cfg, record=record, detections=work / "detections.json",
                           recording=work / "recording", input_cache=work / "inputs")
