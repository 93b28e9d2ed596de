"""A new backend is one folder: a toy backend written by this test (a package folder exporting BACKEND, found on
$SUITE_BACKENDS_PATH exactly as the suite's own folder is searched) declares its capabilities, its own flag and its
own spec section, and runs an accuracy run end to end through `python -m common.cli` with no edit anywhere else:
same AP as ONNX Runtime on the same images, its flag and its spec section reach its build, and a misspelt key of
its section is refused naming the field."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO
from tiny_detector import tiny_detector_env

TOY = '''"""Toy backend: ONNX Runtime underneath, everything else its own."""
from __future__ import annotations

import shutil
from pathlib import Path

from common.runtime.backends.base import Backend, BackendFlag, Capabilities, Runner


class ToyRunner(Runner):
    concurrent = False

    def __init__(self, engine: Path, input_name: str, extra: dict):
        import onnxruntime as ort
        self.session = ort.InferenceSession(str(engine), providers=["CPUExecutionProvider"])
        self.input_name = input_name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.extra_inputs = extra

    def _run(self, feeds):
        return self.session.run(self.output_names, feeds)


class ToyBackend(Backend):
    name = "toy"
    engine_suffix = ".onnx"
    capabilities = Capabilities(precisions=("fp32",), devices=("toycpu",), dynamic_batch=True,
                                device_timer=False, host_compute=True)
    flags = (BackendFlag("--toy-note", "toy_note", "toy backend: a word put into its engine's name"),)
    spec_section = frozenset({"engine_tag"})

    def runtime_version(self):
        return "toy-0.1"

    def build(self, req):
        tag = req.options["toy"].get("engine_tag", "untagged")
        out = Path(req.cache.root) / "toy" / f"{tag}-{self.options.get('toy_note', 'none')}-{req.onnx_sha256[:12]}.onnx"
        hit = out.is_file()
        if not hit:
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(req.onnx_path, out)
        return out, hit

    def load(self, engine, req):
        import numpy as np
        return ToyRunner(engine, req.input_name, {k: np.asarray(v, np.float32) for k, v in req.extra_inputs})


BACKEND = ToyBackend
'''


@pytest.fixture()
def toy(tmp_path):
    (tmp_path / "backends" / "toy").mkdir(parents=True)
    (tmp_path / "backends" / "toy" / "__init__.py").write_text(TOY)
    env = tiny_detector_env(tmp_path, n_images=6)
    spec = env["spec"].read_text().replace("    targets:", "    toy: {engine_tag: tagged}\n    targets:")
    env["spec"].write_text(spec)
    env["process_env"] = {**os.environ, "SUITE_BACKENDS_PATH": str(tmp_path / "backends")}
    return env


def _accuracy(env, backend, results, *extra):
    cmd = [sys.executable, "-m", "common.cli", "accuracy", "--model", str(env["spec"]), "--onnx", str(env["onnx"]),
           "--dataset-dir", str(env["coco"]), "--results-dir", str(results), "--cache-dir", str(env["dir"] / "cache"),
           "--no-progress", "--threads", "1", "--workers", "0", "--backend", backend, *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env["process_env"])


def test_a_toy_backend_in_its_own_folder_runs_an_accuracy_run(toy, tmp_path):
    res = _accuracy(toy, "toy", tmp_path / "toy_res", "--toy-note", "hello")
    assert res.returncode == 0, res.stderr
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "toy_res").glob("*.json")]
    assert (record["backend"], record["device"], record["engine"]["runtime"]) == ("toy", "toycpu", "toy-0.1")
    # its own flag and its own spec section reached its build
    assert Path(record["engine"]["path"]).name.startswith("tagged-hello-")
    assert "preflight: toy fp32 vs FP32 reference on 4 image(s): ok" in res.stdout   # like any candidate
    ref = _accuracy(toy, "onnxruntime", tmp_path / "ort_res")
    assert ref.returncode == 0, ref.stderr
    (ort,) = [json.loads(p.read_text()) for p in (tmp_path / "ort_res").glob("*.json")]
    assert record["metrics"] == ort["metrics"] and record["dataset"]["num_images"] == 6


def test_the_toy_backends_spec_section_is_checked_like_any_other(toy, tmp_path):
    toy["spec"].write_text(toy["spec"].read_text().replace("engine_tag: tagged", "engine_tga: tagged"))
    res = _accuracy(toy, "toy", tmp_path / "res")
    assert res.returncode == 2 and "toy.engine_tga: unknown key" in res.stderr and "Traceback" not in res.stderr
    # without the backend on the path, its section is an unknown key and its flag an unknown option
    toy["process_env"].pop("SUITE_BACKENDS_PATH")
    res = _accuracy(toy, "onnxruntime", tmp_path / "res")
    assert res.returncode == 2 and "variants.v.toy: unknown key" in res.stderr, res.stderr
