"""docs/bring-your-own-detector.md, run as written: its spec block becomes mydet/model.yaml, every command of its
bash blocks runs in a fresh directory (the repository's scripts by their absolute path) and must exit as the
doc says (`# exit N`, else 0). The shared RTMDet-nano ONNX stands in for the user's model; the model "that lost
accuracy" is it with noise in one layer."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from helpers import REPO

DOC = REPO / "docs" / "bring-your-own-detector.md"
PLANT_LAYER = "onnx::Conv_1641"


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def _noisy(src, dst, scale: float = 0.3):
    model = onnx.load(str(src))
    init = next(i for i in model.graph.initializer if i.name == PLANT_LAYER)
    w = numpy_helper.to_array(init).astype(np.float32)
    noise = np.random.default_rng(0).standard_normal(w.shape).astype(np.float32)
    init.CopyFrom(numpy_helper.from_array(w + scale * w.std() * noise, init.name))
    onnx.save(model, str(dst))
    return dst


@pytest.mark.slow
def test_the_walkthrough_runs_as_written(tmp_path, shared_data, rtmdet_onnx):
    text = DOC.read_text()
    (spec,) = _blocks(text, "yaml")
    (tmp_path / "mydet").mkdir()
    (tmp_path / "mydet" / "model.yaml").write_text(spec)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REGRESS_", "SUITE_IMAGES", "ONNX_MODEL"))}
    env.update(PYTHON=sys.executable, MY_ONNX=str(rtmdet_onnx), COCO=str(shared_data / "coco"),
               ANN="instances_val2017_person_subset350.json",
               MY_WORSE_ONNX=str(_noisy(rtmdet_onnx, tmp_path / "worse.onnx")))
    commands = [ln.strip() for block in _blocks(text, "bash") for ln in block.splitlines() if ln.strip()]
    exported = {ln.split()[1].split("=")[0] for ln in commands if ln.startswith("export ")}
    assert exported == {"MY_ONNX", "COCO", "ANN"}       # the variables the doc sets (the test sets them here)
    log = []
    for line in commands:
        if line.startswith("export "):
            continue
        m = re.search(r"#\s*exit (\d+)\s*$", line)
        expected = int(m.group(1)) if m else 0
        command = re.sub(r"^scripts/", f"{REPO}/scripts/", re.sub(r"\s+#.*$", "", line))
        res = subprocess.run(["bash", "-c", command],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        log.append(f"$ {command}\n{res.stdout[-2000:]}{res.stderr[-2000:]}[exit {res.returncode}]")
        assert res.returncode == expected, "\n\n".join(log)
    verdicts = json.loads((tmp_path / "mydet" / "run2" / "verdicts.json").read_text())["verdicts"]
    (v,) = verdicts
    assert v["status"] == "fail" and any(n.startswith("accuracy regression") for n in v["notes"]), v
    assert list((tmp_path / "mydet" / "baselines").rglob("*.json"))
    accuracy_run = next(entry for entry in log if "scripts/suite accuracy" in entry.splitlines()[0])
    assert "(on 100 images)" in accuracy_run
