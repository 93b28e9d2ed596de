"""A tiny end2end-convention ONNX detector and a spec for it, for tests that run the whole accuracy driver.

Its boxes and scores depend on each image's mean value, so a mix-up of images or batches changes the AP.
`slow` adds an input-dependent matrix product per image (results unchanged) so a run lasts long enough to be
interrupted; `nan` makes one value of `dets` per image NaN.
"""
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

K = 3


def make_tiny_detector(path, size=64, slow=0, nan=False, input_name="input", dtype=TensorProto.FLOAT,
                       batch="N") -> Path:
    base = np.array([[[4, 4, 40, 30, 0.6], [20, 10, 60, 60, 0.5], [0, 30, 30, 62, 0.4]]], np.float32)
    delta = np.array([[[3, 2, 3, 2, 0.05]] * K], np.float32)
    if nan:
        delta[0, 0, 4] = np.nan
    inits = [numpy_helper.from_array(base, "base"), numpy_helper.from_array(delta, "delta"),
             numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape3"),
             numpy_helper.from_array(np.array([-1, 1], np.int64), "shape2"),
             numpy_helper.from_array(np.zeros((1, K), np.float32), "lab"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    x = input_name
    nodes = []
    if dtype != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [x], ["xf"], to=TensorProto.FLOAT))
        x = "xf"
    nodes += [helper.make_node("ReduceMean", [x], ["m"], axes=[1, 2, 3], keepdims=0),
              helper.make_node("Reshape", ["m", "shape3"], ["m3"]),
              helper.make_node("Mul", ["m3", "delta"], ["md"]),
              helper.make_node("Add", ["base", "md"], ["dets0"])]
    last = "dets0"
    if slow:
        # scaled by 1/sqrt(slow), not 1/slow: the product's values stay in float16's normal range (an FP16 run's
        # range check flushes subnormals, as a device may), and its sum is multiplied by zero anyway
        c = (np.random.default_rng(0).standard_normal((1, slow, slow)) / np.sqrt(slow)).astype(np.float32)
        inits += [numpy_helper.from_array(c, "c"), numpy_helper.from_array(c[0], "c2")]
        nodes += [helper.make_node("Mul", ["m3", "c"], ["t"]),
                  helper.make_node("MatMul", ["t", "c2"], ["u"]),
                  helper.make_node("ReduceSum", ["u"], ["r"], axes=[1, 2], keepdims=1),
                  helper.make_node("Mul", ["r", "zero"], ["r0"]),
                  helper.make_node("Add", ["dets0", "r0"], ["dets1"])]
        last = "dets1"
    nodes += [helper.make_node("Identity", [last], ["dets"]),
              helper.make_node("Reshape", ["m", "shape2"], ["m2"]),
              helper.make_node("Mul", ["m2", "zero"], ["mz"]),
              helper.make_node("Add", ["mz", "lab"], ["labf"]),
              helper.make_node("Cast", ["labf"], ["labels"], to=TensorProto.INT64)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info(input_name, dtype, [batch, 3, size, size])],
        [helper.make_tensor_value_info("dets", TensorProto.FLOAT, ["N", K, 5]),
         helper.make_tensor_value_info("labels", TensorProto.INT64, ["N", K])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


SPEC = """schema: 1
name: tiny
default_variant: v
variants:
  v:
    input: {{name: input, height: {size}, width: {size}}}
    preprocess: {{resize: letterbox, pad: bottom_right, pad_value: 114, color: bgr,
                 mean: [100, 100, 100], std: [50, 50, 50]}}
    output: {{convention: end2end, dets: dets, labels: labels, score_threshold: 0.0}}
    labels: person
    evaluation: {{annotation: instances_val2017.json, categories: [1]}}
    targets:
      - {{backend: "*", device: "*", precision: [fp32, fp16], min: {{AP: 0.0}}}}
"""


def write_tiny_spec(path, size=64) -> Path:
    Path(path).write_text(SPEC.format(size=size))
    return Path(path)


def tiny_detector_env(d: Path, n_images: int) -> dict:
    """A synthetic COCO set of n_images in d/coco, the tiny detector's spec, its ONNX and a slow variant of it:
    what the resume and fault tests run on."""
    from synthetic_coco import make_synthetic_coco
    make_synthetic_coco(d / "coco", n_images=n_images, seed=0, size=(64, 80))
    return {"dir": d, "spec": write_tiny_spec(d / "tiny.yaml"), "coco": d / "coco",
            "onnx": make_tiny_detector(d / "m.onnx"), "slow": make_tiny_detector(d / "slow.onnx", slow=1024)}
