"""The `tvm` backend (upstream apache-tvm, Relax ONNX frontend, llvm) on the shared RTMDet-nano model.

The end2end graph (NMS inside) does not import into TVM: that is reported as an IGIE portability warning naming
the operator. The raw-head cut of the same graph (as tests/test_rtmdet_rawcut.py cuts it) compiles to a .so engine
whose outputs on real preprocessed images match ONNX Runtime within TOLERANCE, and runs through the suite.
Untuned TVM is slow on the CPU: a handful of images only."""
import json
import subprocess
import sys

import numpy as np
import pytest

from common.runtime.backends import get_backend
from common.runtime.backends.base import BuildRequest
from common.data.coco import read_image
from common.engine_cache import EngineCache, file_sha256
from common.errors import BackendUnavailable
from common.data.preprocess import Preprocessor
from common.config.specs import load_model
from helpers import REPO, run_script



@pytest.fixture(scope="module", autouse=True)
def tvm_available():
    """Skip, saying why, where TVM is not usable; asked when a test of this file runs, not at collection (importing
    TVM takes ~2 s, which every parallel worker would pay)."""
    try:
        get_backend("tvm")
    except BackendUnavailable as exc:
        pytest.skip(f"{exc} (scripts/setup.sh installs it)")

# float32 outputs of the same graph compiled by two compilers: the summation order differs, nothing else.
# Raw-head logits are O(10) and box distances O(100) pixels: 2e-3 absolute + 1e-4 relative is far below anything
# that moves a detection (the suite's decode rounds nothing finer than a pixel).
TOLERANCE = {"rtol": 1e-4, "atol": 2e-3}
ANN = "instances_val2017_person_subset350.json"
IMAGES = ["000000000139.jpg", "000000000785.jpg", "000000000802.jpg"]


@pytest.fixture(scope="module")
def raw_onnx(rtmdet_raw_onnx):
    return rtmdet_raw_onnx


@pytest.fixture(scope="module")
def engine_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tvm_engines")


def _request(onnx_path, cache, batch=1):
    return BuildRequest(onnx_path, file_sha256(onnx_path), "fp32", batch, "input", (3, 320, 320),
                        EngineCache(cache), {})


@pytest.mark.slow
def test_raw_head_matches_onnxruntime_on_real_images(raw_onnx, engine_cache, shared_data):
    import onnxruntime as ort
    variant = load_model("rtmdet").variant("nano-person-raw")
    pre = Preprocessor(variant.preprocess, variant.height, variant.width)
    backend = get_backend("tvm")
    req = _request(raw_onnx, engine_cache)
    engine, hit = backend.build(req)
    assert not hit and engine.suffix == ".so"
    assert backend.build(req) == (engine, True)  # through the engine cache
    runner = backend.load(engine, req)
    session = ort.InferenceSession(str(raw_onnx), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert runner.output_names == names
    for name in IMAGES:
        x = pre(read_image(str(shared_data / "coco" / "val2017" / name)))[0][None]
        got = runner.infer(x)
        ref = dict(zip(names, session.run(None, {"input": x})))
        for out in names:
            assert got[out].shape == ref[out].shape
            np.testing.assert_allclose(got[out], ref[out], **TOLERANCE, err_msg=f"{name} output {out}")
    runner.sync()
    assert len(runner.device_time(x, number=1, repeat=2)) == 2


@pytest.mark.slow
def test_accuracy_run_through_the_suite(raw_onnx, engine_cache, shared_data, tmp_path):
    """The suite's own accuracy run on 4 images: the tvm backend's detections give the same AP as ONNX Runtime's."""
    def run(backend):
        res = run_script("scripts/suite", "accuracy", "--model", "rtmdet", "--variant", "nano-person-raw",
                         "--backend", backend, "--onnx", raw_onnx, "--images-dir", shared_data / "coco" / "val2017",
                         "--ann", shared_data / "coco" / "annotations" / ANN, "--max-images", 4, "--no-progress",
                         "--cache-dir", engine_cache, "--results-dir", tmp_path / backend, "--workers", 0)
        assert res.returncode in (0, 1), res.stderr  # 4 images may miss the AP floor; the run itself must work
        return json.loads(next((tmp_path / backend).glob("*.json")).read_text())
    tvm, ref = run("tvm"), run("onnxruntime")
    assert tvm["backend"] == "tvm" and tvm["engine"]["runtime"].startswith("apache-tvm-")
    assert tvm["engine"]["cache_hit"] is True  # built by the test above, same ONNX/shape/runtime
    assert tvm["num_detections"] == ref["num_detections"]
    assert abs(tvm["metrics"]["AP"] - ref["metrics"]["AP"]) < 1e-3


def test_end2end_graph_is_an_igie_portability_warning(rtmdet_onnx, tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "build_engine.py"), "--model", "rtmdet", "--onnx",
                          str(rtmdet_onnx), "--backend", "tvm", "--cache-dir", str(tmp_path), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 3, res.stderr
    out = json.loads(res.stdout)
    assert out["portability"]["compiler"] == "apache-tvm" and out["portability"]["stage"] == "import"
    assert out["portability"]["op"] == "Where"  # part of the graph's built-in NMS post-processing
    assert "IGIE portability warning" in res.stderr and "Traceback" not in res.stderr
    assert [p for p in tmp_path.iterdir() if p.suffix == ".so"] == []
