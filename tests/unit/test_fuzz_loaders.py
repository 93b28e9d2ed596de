"""Random bytes and random JSON fed to the suite's loaders: only SuiteError subclasses may escape."""
import atexit
import json
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.data.archive import extract
from common.export.checkpoints import load_state_dict
from common.data.coco import image_items, read_annotations, read_image
from common.errors import SuiteError
from common.config.specs import load_spec

# derandomize: the same 60 examples every run, so a CI landing never depends on the draw (fuzzing further is a
# campaign to run on purpose: more max_examples, derandomize off, not a chance finding in CI)
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30)

# COCO-shaped documents with random values, so the fuzzer gets past the top-level checks
coco_like = st.fixed_dictionaries({
    "images": st.lists(st.fixed_dictionaries({"id": json_values | st.integers(0, 5), "file_name": json_values,
                                              "width": json_values | st.integers(1, 9),
                                              "height": json_values | st.integers(1, 9)}), max_size=4),
    "annotations": st.lists(st.dictionaries(st.sampled_from(["image_id", "bbox", "category_id"]), json_values),
                            max_size=4),
    "categories": st.lists(json_values, max_size=3)})

# spec-shaped documents: real key names with random values
spec_like = st.fixed_dictionaries({"schema": st.just(1) | json_values, "name": st.text(max_size=8) | json_values,
                                   "variants": st.dictionaries(st.text(min_size=1, max_size=6), st.dictionaries(
                                       st.sampled_from(["input", "preprocess", "output", "labels", "evaluation",
                                                        "targets", "onnx", "build"]), json_values, max_size=8),
                                       max_size=2)})


_DIR = Path(tempfile.mkdtemp(prefix="suite-fuzz-"))
atexit.register(shutil.rmtree, _DIR, True)


def _write(data: bytes, suffix: str) -> Path:
    """Each example overwrites the same few files, so thousands of examples leave nothing behind."""
    _DIR.mkdir(exist_ok=True)   # a clean-up of /tmp by another process must not fail the fuzzing
    p = _DIR / f"f{suffix}"
    p.write_bytes(data)
    shutil.rmtree(_DIR / "out", ignore_errors=True)
    return p


def _only_suite_errors(fn, *args):
    try:
        fn(*args)
    except SuiteError:
        pass


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes(data):
    _only_suite_errors(read_annotations, _write(data, ".json"))
    _only_suite_errors(load_spec, _write(data, ".yaml"))
    _only_suite_errors(read_image, str(_write(data, ".jpg")))
    _only_suite_errors(read_image, str(_write(b"\xff\xd8" + data, ".jpg")))
    _only_suite_errors(load_state_dict, _write(data, ".pth"))
    _only_suite_errors(load_state_dict, _write(data, ".safetensors"))
    p = _write(data, ".zip")
    _only_suite_errors(extract, p, p.parent / "out")


@FUZZ
@given(json_values | coco_like)
def test_random_json_annotations(doc):
    p = _write(json.dumps(doc).encode(), ".json")
    try:
        ann = read_annotations(p)
        image_items(ann, p.parent)
    except SuiteError:
        pass


@FUZZ
@given(json_values | spec_like)
def test_random_json_specs(doc):
    _only_suite_errors(load_spec, _write(json.dumps(doc).encode(), ".yaml"))


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_as_onnx_model(data):
    from common.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from common.runtime.backends.base import BuildRequest
    p = _write(data, ".onnx")
    req = BuildRequest(onnx_path=p, onnx_sha256="0", precision="fp32", batch_size=1, input_name="input",
                       input_shape=(3, 8, 8), cache=None, options={})
    _only_suite_errors(OnnxRuntimeBackend().load, p, req)
