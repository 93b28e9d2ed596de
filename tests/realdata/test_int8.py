"""INT8 on ONNX Runtime: the spec's int8 section, the quantised ONNX and its cache key, the refusal of evaluation
images, and the sensitivity analysis (small: a few calibration images, a few held-apart images)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO
from test_igie_contract import PERSON350, _calib_images

ANN_A = "instances_val2017_subset150.json"


def test_int8_section_is_typed_and_checked(tmp_path):
    from common.errors import ConfigError
    from common.runtime.quantize import Int8Settings, read_int8_section
    assert read_int8_section(None) == Int8Settings()
    s = read_int8_section({"format": "QOperator", "per_channel": False, "method": "percentile", "percentile": 99.9,
                           "calib_images": 8, "op_types": ["Conv", "MatMul"], "keep_fp32": ["Conv_3"]})
    assert (s.format, s.per_channel, s.method, s.calib_images, s.keep_fp32) == \
        ("qoperator", False, "percentile", 8, ("Conv_3",))
    spec = tmp_path / "model.yaml"
    for raw, words in [({"method": "kl"}, "int8.method: 'kl' is not one of"),
                       ({"per_chanel": True}, "int8.per_chanel: unknown setting"),
                       ({"calib_images": 0}, "int8.calib_images: expected a positive integer"),
                       ({"keep_fp32": "Conv_3"}, "int8.keep_fp32: expected a list"),
                       ({"per_channel": "yes"}, "int8.per_channel: expected true or false"),
                       ([1], "int8: expected a mapping")]:
        with pytest.raises(ConfigError) as err:
            read_int8_section(raw, spec)
        assert words in str(err.value) and str(spec) in str(err.value), (raw, str(err.value))


def _request(onnx, cache, calib_dir, n, settings, shared_data):
    from common.runtime.backends.base import BuildRequest
    from common.data.calibration import CalibrationSet
    from common.engine_cache import EngineCache, file_sha256
    from common.data.coco import DatasetRequest
    from common.config.specs import load_model
    variant = load_model("rtmdet").variant()
    calib = CalibrationSet.for_variant(str(calib_dir), variant, n, DatasetRequest(str(shared_data / "coco"), PERSON350))
    return BuildRequest(onnx, file_sha256(onnx), "int8", 1, "input", (3, 320, 320), EngineCache(cache),
                        {"calibration": calib, "int8": settings})


def test_int8_preflight_tolerance():
    """INT8's pre-flight tolerance is its own (looser than FP16's), and the spec's int8.fidelity overrides it."""
    from dataclasses import replace

    from common.runtime.quantize import preflight_tolerance
    from common.config.specs import load_model
    v = load_model("rtmdet").variant()
    fp16, int8 = v.fidelity, preflight_tolerance(v, v.fidelity)
    assert int8.max_score_diff > fp16.max_score_diff and int8.min_cosine < fp16.min_cosine
    assert int8.max_ap_diff == 0.05
    v2 = replace(v, extra={**v.extra, "int8": {**v.extra["int8"], "fidelity": {"max_ap_diff": 0.01}}})
    assert preflight_tolerance(v2, v2.fidelity).max_ap_diff == 0.01


@pytest.mark.slow
def test_quantised_onnx_cached_by_calibration_and_settings(rtmdet_onnx, shared_data, tmp_path):
    from dataclasses import replace

    import onnx

    from common.runtime.backends import get_backend
    from common.runtime.quantize import Int8Settings
    backend = get_backend("onnxruntime")
    calib = _calib_images(tmp_path / "calib", n=3)
    base = Int8Settings(calib_images=2)
    req = _request(rtmdet_onnx, tmp_path / "c", calib, 2, base, shared_data)
    engine, hit = backend.build(req)
    assert not hit
    model = onnx.load(str(engine))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 13  # per-channel QDQ
    # it runs on the CPU through the backend and gives finite detections
    runner = backend.load(engine, req)
    x = np.stack([b[0] for b in req.options["calibration"].batches(1)])
    out = runner.infer(x)
    assert np.isfinite(out["dets"]).all()
    assert backend.build(req) == (engine, True)
    calib_files = sorted((tmp_path / "c" / "calibration").iterdir())
    assert len(calib_files) == 1

    # every setting and the calibration set's content are in the key
    seen = {engine}
    for changed in [replace(base, keep_fp32=("Conv_0",)), replace(base, activation_type="qint8"),
                    replace(base, method="percentile")]:
        e, h = backend.build(_request(rtmdet_onnx, tmp_path / "c", calib, 2, changed, shared_data))
        assert not h and e not in seen, changed
        seen.add(e)
    # keep_fp32 and the activation type reuse the calibration ranges; another method calibrates again
    assert len(list((tmp_path / "c" / "calibration").iterdir())) == 2
    e, h = backend.build(_request(rtmdet_onnx, tmp_path / "c", calib, 3, base, shared_data))  # 3 images, not 2
    assert not h and e not in seen
    seen.add(e)
    (calib / "calib_000.jpg").write_bytes((calib / "calib_002.jpg").read_bytes())  # same names, other content
    e, h = backend.build(_request(rtmdet_onnx, tmp_path / "c", calib, 3, base, shared_data))
    assert not h and e not in seen


def test_keep_fp32_leaves_the_node_unquantised(rtmdet_onnx, shared_data, tmp_path):
    import onnx

    from common.runtime.quantize import Int8Settings, quantize_onnx
    calib_dir = _calib_images(tmp_path / "calib", n=2)
    req = _request(rtmdet_onnx, tmp_path / "c", calib_dir, 2, Int8Settings(), shared_data)
    calib = req.options["calibration"]

    def conv0_inputs(settings):
        q = tmp_path / "q.onnx"
        quantize_onnx(rtmdet_onnx, q, calib, settings, "input", tmp_path / "c")
        node = next(n for n in onnx.load(str(q)).graph.node if n.name == "Conv_0")
        return list(node.input)
    assert any("DequantizeLinear" in i for i in conv0_inputs(Int8Settings(calib_images=2)))
    assert not any("DequantizeLinear" in i for i in conv0_inputs(Int8Settings(calib_images=2, keep_fp32=("Conv_0",))))


def test_onnxruntime_int8_refuses_evaluation_images(rtmdet_onnx, shared_data, tmp_path):
    val = shared_data / "coco" / "val2017"
    for calib, words in [(val, "is the evaluation images dir"), (None, "needs calibration images")]:
        res = subprocess.run([sys.executable, str(REPO / "scripts" / "build_engine.py"), "--model", "rtmdet",
                              "--onnx", str(rtmdet_onnx), "--backend", "onnxruntime", "--precision", "int8",
                              "--images-dir", str(val), "--ann", str(shared_data / "coco" / "annotations" / PERSON350),
                              "--cache-dir", str(tmp_path / "c"), *(["--calib-dir", str(calib)] if calib else [])],
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 2 and words in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").glob("*.onnx"))


def _held_apart(shared_data, tmp_path, ids):
    """An annotation file of a few set-B images (held apart from calibration and evaluation)."""
    data = json.loads((shared_data / "coco" / "annotations" /
                       "person_keypoints_val2017_single_person_subset200.json").read_text())
    keep = set(sorted(im["id"] for im in data["images"])[ids])
    sub = {**data, "images": [im for im in data["images"] if im["id"] in keep],
           "annotations": [a for a in data["annotations"] if a["image_id"] in keep]}
    path = tmp_path / "held.json"
    path.write_text(json.dumps(sub))
    return path, [im["file_name"] for im in sub["images"]]


def _spec_without_int8(tmp_path):
    """The rtmdet spec without its int8 section (whose keep_fp32 list would leave little to analyse)."""
    import yaml
    doc = yaml.safe_load((REPO / "models" / "rtmdet" / "model.yaml").read_text())
    doc["variants"]["nano-person"].pop("int8", None)
    path = tmp_path / "rtmdet.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _sensitivity(rtmdet_onnx, shared_data, tmp_path, calib, held, *extra):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "int8_sensitivity.py"), "--model",
                           str(_spec_without_int8(tmp_path)), "--variant", "nano-person",
                           "--onnx", str(rtmdet_onnx), "--calib-dir", str(calib), "--calib-images", "2",
                           "--dataset-dir", str(shared_data / "coco"), "--ann", str(held), "--search-images", "3",
                           "--error-images", "1", "--error-nodes", "3", "--cache-dir", str(tmp_path / "c"),
                           *map(str, extra)],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_sensitivity_curve_and_snippet(rtmdet_onnx, shared_data, tmp_path):
    calib = _calib_images(tmp_path / "calib", n=2)
    held, _ = _held_apart(shared_data, tmp_path, slice(0, 3))
    report = tmp_path / "r.json"
    res = _sensitivity(rtmdet_onnx, shared_data, tmp_path, calib, held, "--max-keep", 2, "--tolerance", 0.9,
                       "--report", report)
    assert res.returncode == 0, res.stderr
    rep = json.loads(report.read_text())
    assert rep["curve"][0]["keep"] == 0 and rep["chosen"] == 0        # tolerance 0.9: full INT8 is enough
    measured = [r for r in rep["node_errors"] if r["alone_db"] is not None]
    # the rule keeps the depthwise Convs; the rest are ranked after the 3 measured, unmeasured
    assert len(measured) == 3 and len(rep["node_errors"]) == 123 - len(rep["kept_by_rule"]) > 70
    assert all(r["why"] for r in rep["kept_by_rule"]) and "kept in FP32 by rule" in res.stdout
    assert "int8:" in res.stdout and "keep_fp32: []" in res.stdout
    # the snippet is a valid int8 section of the spec, with the settings the analysis used
    import yaml

    from common.runtime.quantize import read_int8_section
    snippet = res.stdout.split("under variants:):\n", 1)[1].split("\n report:", 1)[0]
    settings = read_int8_section(yaml.safe_load("variants:\n" + snippet)["variants"]["nano-person"]["int8"])
    assert settings.calib_images == 2 and settings.keep_fp32 == ()
    # an impossible tolerance walks the curve (doubling) and says no node list was found: exit 1
    res = _sensitivity(rtmdet_onnx, shared_data, tmp_path, calib, held, "--max-keep", 1, "--tolerance", 0)
    assert res.returncode in (0, 1), res.stderr
    if res.returncode == 1:
        assert "no node list within" in res.stdout and "- \"" in res.stdout


def test_sensitivity_refuses_calibration_on_held_apart_or_evaluation_images(rtmdet_onnx, shared_data, tmp_path):
    held, names = _held_apart(shared_data, tmp_path, slice(0, 3))
    calib = _calib_images(tmp_path / "calib", n=2)
    (calib / names[0]).write_bytes((shared_data / "coco" / "val2017" / names[0]).read_bytes())
    res = _sensitivity(rtmdet_onnx, shared_data, tmp_path, calib, held)
    assert res.returncode == 2 and "belong to the evaluation set" in res.stderr, res.stderr
    # the evaluation set (--eval-ann) is checked too
    (calib / names[0]).unlink()
    a = json.loads((shared_data / "coco" / "annotations" / ANN_A).read_text())
    name = a["images"][0]["file_name"]
    (calib / name).write_bytes((shared_data / "coco" / "val2017" / name).read_bytes())
    res = _sensitivity(rtmdet_onnx, shared_data, tmp_path, calib, held, "--eval-ann", ANN_A)
    assert res.returncode == 2 and "belong to the evaluation set" in res.stderr, res.stderr


def _tiny_convnet(path):
    """Three 3x3 convs with ReLU between them, seeded weights, input [N, 3, 16, 16]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits, nodes, prev = [], [], "input"
    for i, (cin, cout) in enumerate([(3, 8), (8, 8), (8, 4)]):
        inits += [numpy_helper.from_array(rng.standard_normal((cout, cin, 3, 3)).astype(np.float32) * 0.3, f"w{i}"),
                  numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32) * 0.1, f"b{i}")]
        nodes.append(helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", pads=[1] * 4))
        prev = f"c{i}"
        if i < 2:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"], name=f"relu{i}"))
            prev = f"r{i}"
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                           ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info(prev, TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def test_per_node_error_finds_a_planted_bad_quantisation(tmp_path):
    """A node whose activation scale is made 50x too coarse must rank first in the per-node error."""
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from common.compare.int8_search import node_errors
    f = _tiny_convnet(tmp_path / "f.onnx")
    x = np.random.default_rng(1).standard_normal((4, 3, 16, 16)).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": x[i:i + 1]} for i in range(len(x))])

        def get_next(self):
            return next(self.it, None)

    q = tmp_path / "q.onnx"
    quantize_static(str(f), str(q), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                    per_channel=True, extra_options={"OpTypesToExcludeOutputQuantization": ["Conv"]})
    clean = node_errors(f, q, x[:2], "input", ("Conv",))
    assert sorted(r["node"] for r in clean) == ["conv0", "conv1", "conv2"]
    model = onnx.load(str(q))
    inits = {t.name: t for t in model.graph.initializer}
    for target in ("conv1", "conv2"):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        node = next(n for n in m.graph.node if n.name == target)
        dq = next(n for n in m.graph.node if n.output[0] == node.input[0])
        scale = next(t for t in m.graph.initializer if t.name == dq.input[1])
        scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(inits[dq.input[1]]) * 50, scale.name))
        planted = tmp_path / f"planted_{target}.onnx"
        onnx.save(m, str(planted))
        rows = node_errors(f, planted, x[:2], "input", ("Conv",))
        assert rows[0]["node"] == target, rows
        assert rows[0]["alone_db"] < next(r["alone_db"] for r in clean if r["node"] == target) - 10
