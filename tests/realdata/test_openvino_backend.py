"""The openvino backend on the shared RTMDet-nano graph: FP32 matches ONNX Runtime, INT8 (NNCF on the OpenVINO
model) quantises the network and leaves the post-processing alone, engines are cached; skipped without the
optional openvino layer (requirements-openvino.txt)."""
import numpy as np
import pytest

from test_int8_rtmdet_structure import _set_b_calibration

pytest.importorskip("openvino", reason="openvino is not installed (optional layer: requirements-openvino.txt)")


def _request(onnx, cache, precision, batch, calib=None, settings=None):
    from common.engine_cache import EngineCache, file_sha256
    from common.runtime.backends.base import BuildRequest
    return BuildRequest(onnx, file_sha256(onnx), precision, batch, "input", (3, 320, 320), EngineCache(cache),
                        {"calibration": calib, "int8": settings})


def _inputs(shared_data, n):
    from common.config.specs import load_model
    from common.data.coco import DatasetRequest
    from common.harness.reference_compare import load_images
    v = load_model("rtmdet").variant()
    return load_images(v, DatasetRequest(str(shared_data / "coco"), "instances_val2017_subset150.json"), n).inputs


def test_openvino_fp32_matches_onnxruntime_and_is_cached(rtmdet_onnx, shared_data, tmp_path):
    from common.runtime.backends import environment_table, get_backend
    row = next(r for r in environment_table() if r["backend"] == "openvino")
    assert row["available"] and row["version"].startswith("openvino-")
    assert tuple(row["capabilities"]["precisions"]) == ("fp32", "int8")
    ov, ort = get_backend("openvino", threads=1), get_backend("onnxruntime")
    req = _request(rtmdet_onnx, tmp_path / "c", "fp32", 2)
    engine, hit = ov.build(req)
    assert not hit and ov.build(req) == (engine, True)
    runner, ref = ov.load(engine, req), ort.load(rtmdet_onnx, req)
    assert runner.static_batch == 2
    x = _inputs(shared_data, 3)
    for i in range(3):   # one image on a batch-2 engine: padded, the padding dropped
        a, b = ref.infer(x[i:i + 1])["dets"][0], runner.infer(x[i:i + 1])["dets"][0]
        # a static-batch NMS pads its rows with zero scores (ONNX Runtime's are as many as the batch needs)
        a, b = a[a[:, 4] > 0], b[b[:, 4] > 0]
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(b, a, atol=0.05, rtol=1e-3)
    # a damaged engine is refused by the cache (its sidecar's sha256), never loaded: rebuilt
    engine.write_bytes(engine.read_bytes()[:100])
    rebuilt, hit = ov.build(req)
    assert not hit and ov.load(rebuilt, req).infer(x[:1])["dets"].shape[0] == 1


@pytest.mark.slow
def test_openvino_int8_quantises_the_network_not_the_postprocessing(rtmdet_onnx, shared_data, tmp_path):
    from common.runtime.backends import get_backend
    from common.runtime.backends.openvino_backend import ignored_scope, int8_convs
    from common.runtime.quantize import Int8Settings
    calib = _set_b_calibration(shared_data, tmp_path / "calib", 4)
    settings = Int8Settings(calib_images=4)
    ov = get_backend("openvino", threads=1)
    req = _request(rtmdet_onnx, tmp_path / "c", "int8", 1, calib, settings)
    engine, hit = ov.build(req)
    assert not hit and ov.build(req) == (engine, True)
    runner = ov.load(engine, req)
    n, total = int8_convs(runner)
    assert total == 123 and n >= 115, (n, total)
    patterns, kept = ignored_scope(rtmdet_onnx, req, settings)
    assert any(p.startswith("^NonMaxSuppression") for p in patterns) and len(patterns) > 150
    out = runner.infer(_inputs(shared_data, 1))
    assert np.isfinite(out["dets"]).all() and out["dets"].shape[-1] == 5
    # without calibration images the build is refused, saying why
    from common.errors import ConfigError
    with pytest.raises(ConfigError, match="needs calibration images"):
        ov.build(_request(rtmdet_onnx, tmp_path / "c", "int8", 1, None, settings))
