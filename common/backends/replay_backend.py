"""Replay: serves the raw outputs an earlier accuracy run recorded (--record-outputs) for the same model,
preprocessing and images. It measures the harness alone and re-evaluates other decode settings without a device."""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..replay import Recording
from .base import Backend, BuildRequest, Capabilities, Runner


class ReplayRunner(Runner):
    concurrent = True  # serves read-only recorded arrays
    def __init__(self, recording: Recording):
        self.recording = recording
        self.output_names = list(recording.outputs)

    def infer(self, x, image_ids=None) -> dict:
        if image_ids is None:
            raise ConfigError("the replay backend serves accuracy runs only (it needs the images' ids)")
        return self.recording.batch(image_ids)


class ReplayBackend(Backend):
    name = "replay"
    capabilities = Capabilities(precisions=("fp32", "fp16", "int8"), devices=("replay",), dynamic_batch=True,
                                device_timer=False, host_compute=False, replays=True)

    def runtime_version(self) -> str:
        return "replay-1"

    def _dir(self) -> Path:
        directory = self.options.get("replay_dir")
        if not directory:
            raise ConfigError("the replay backend needs --replay-dir (a directory written by --record-outputs)")
        return Path(directory)

    def build(self, req: BuildRequest):
        return self._dir(), True

    def load(self, engine: Path, req: BuildRequest) -> Runner:
        recording = Recording(engine)
        recording.check(req.onnx_sha256, req.options["preprocess_key"])
        return ReplayRunner(recording)
