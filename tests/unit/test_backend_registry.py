"""The backend registry finds backends by folder and asks their declarations: names, flags, spec sections and the
runner's optional features (declared, never probed with hasattr)."""
from __future__ import annotations

import re

from common import REPO_ROOT
from common.config.options import BACKEND_DESTS
from common.runtime.backends import BACKENDS, backend_class, backend_flags, discover, spec_sections
from common.runtime.backends.base import Runner


def test_the_suites_own_backends_are_found_by_their_files(tmp_path):
    assert list(BACKENDS)[0] == "onnxruntime" and set(BACKENDS) >= {"onnxruntime", "igie", "replay", "tvm"}
    for name in BACKENDS:
        assert backend_class(name).name == name
    # a folder on $SUITE_BACKENDS_PATH adds one; the suite's own name wins a clash
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "__init__.py").write_text("")
    (tmp_path / "onnxruntime").mkdir()
    (tmp_path / "onnxruntime" / "__init__.py").write_text("")
    try:
        found = discover({"SUITE_BACKENDS_PATH": str(tmp_path)})
        assert "extra" in found and found["onnxruntime"][0] == "common.runtime.backends.onnxruntime_backend"
    finally:
        discover()
    assert "extra" not in BACKENDS


def test_backend_flags_and_sections_come_from_the_backends():
    assert {f.name for f in backend_flags()} >= {"--replay-dir", "--replay-fps"}
    assert BACKEND_DESTS >= {"replay_dir", "replay_fps"}
    assert spec_sections() == {}          # none of the suite's own backends has a section of its own


def test_optional_runner_features_are_declared_not_probed():
    assert Runner.device_timer is False and Runner.device_index is None and Runner().simulated_device_s is None
    assert backend_class("tvm").__module__ and __import__(backend_class("tvm").__module__,
                                                          fromlist=["TvmRunner"]).TvmRunner.device_timer
    probes = re.compile(r"hasattr\((p\.)?runner|getattr\((p\.)?runner")
    offenders = [p.name for p in (REPO_ROOT / "common").rglob("*.py") if probes.search(p.read_text())]
    assert offenders == []
