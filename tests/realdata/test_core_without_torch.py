"""The README's main job from an ONNX file runs on the core layer alone: with torch, transformers, mmengine,
onnxsim and safetensors made unimportable, an FP16 accuracy run (pre-flight included) passes and none of them
was imported. This is what keeps a vendor SDK's own torch untouched on an accelerator node."""
from __future__ import annotations

import os
import subprocess
import sys

from common import IMPORT_PATH

BLOCKED = ("torch", "transformers", "mmengine", "onnxsim", "safetensors")


def test_fp16_accuracy_run_needs_none_of_the_export_layer(rtmdet_onnx, shared_data, tmp_path):
    code = (f"import sys\nfor m in {BLOCKED!r}: sys.modules[m] = None  # import m -> ImportError\n"
            "from common.cli import main\n"
            f"code = main(['accuracy', '--model', 'rtmdet', '--precision', 'fp16', '--onnx', {str(rtmdet_onnx)!r},"
            f" '--dataset-dir', {str(shared_data / 'coco')!r}, '--ann', 'instances_val2017_person_subset350.json',"
            f" '--max-images', '12', '--no-progress', '--results-dir', {str(tmp_path)!r},"
            f" '--cache-dir', {str(tmp_path / 'cache')!r}])\n"
            f"assert not [m for m in {BLOCKED!r} if sys.modules.get(m) is not None]\n"
            "sys.exit(code)")
    env = {**os.environ, "PYTHONPATH": str(IMPORT_PATH)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "verdict: PASS" in res.stdout
