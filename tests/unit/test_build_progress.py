"""An engine build says what it builds when it starts and how long it took when it ends; on a terminal it shows the
elapsed time with an estimate from the last build of the same kind (common/build_progress.py)."""
from __future__ import annotations

import io
import json
import threading

from common.build_progress import describe_build, last_build_s, timed_build
from common.engine_cache import EngineCache


def test_a_build_is_named_when_it_starts_and_timed_when_it_ends(tmp_path, capsys):
    cache = EngineCache(tmp_path / "cache")
    seen_during = []

    def build(tmp):
        seen_during.append(capsys.readouterr().err)    # the start line is out before the build's work
        tmp.write_bytes(b"engine")

    describe = {"backend": "onnxruntime", "precision": "fp16", "shape": [1, 3, 32, 32]}
    path, hit = cache.get_or_build("k1", ".onnx", build, describe)
    assert not hit
    assert seen_during == ["engine: building onnxruntime fp16 [1, 3, 32, 32] (.onnx) ...\n"]
    assert capsys.readouterr().err.startswith("engine: built onnxruntime fp16 [1, 3, 32, 32] (.onnx) in ")
    took = json.loads(cache.paths("k1", ".onnx")[1].read_text())["build_s"]
    assert took >= 0
    # the next build of the same kind (another key) is estimated from this one; a hit builds and says nothing
    assert last_build_s(cache.root, describe, ".onnx") == took
    assert last_build_s(cache.root, {**describe, "precision": "int8"}, ".onnx") is None
    cache.get_or_build("k2", ".onnx", lambda tmp: tmp.write_bytes(b"e2"), describe)
    assert f"~{took:.0f} s like the last one" in capsys.readouterr().err
    assert cache.get_or_build("k2", ".onnx", build, describe)[1] and capsys.readouterr().err == ""


def test_a_terminal_sees_the_elapsed_time_and_what_is_left(tmp_path, monkeypatch):
    import common.build_progress as bp
    monkeypatch.setattr(bp, "TICK_S", 0.001)

    class Tty(io.StringIO):
        def isatty(self):
            return True

    out, ticked = Tty(), threading.Event()

    def build(tmp):       # lasts until the progress thread has drawn at least twice (bounded wait)
        for _ in range(2000):
            if out.getvalue().count("\r  building: ") >= 2:
                ticked.set()
                return
            threading.Event().wait(0.005)

    timed_build(build, tmp_path / "e", "tvm fp32 (.so)", 120.0, out=out)
    assert ticked.is_set() and "s left" in out.getvalue()
    assert out.getvalue().rstrip().splitlines()[-1].startswith("engine: built tvm fp32 (.so) in ")


def test_an_export_is_named_by_model_and_variant():
    assert describe_build({"checkpoint": "c.pth", "model": "rtdetr", "variant": "r18", "opset": 17}, ".onnx") == \
        "the ONNX of rtdetr/r18 (export, opset 17)"
