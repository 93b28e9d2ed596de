"""The one small interface every runtime sits behind.

Backend.build(onnx, precision, batch, ...) -> engine file (cached); Backend.load(engine, ...) -> Runner;
Runner.infer(batch or {input name: array}) -> {output name: array}. A backend says what it can do in its
`capabilities`; nothing outside a backend module names a runtime or knows its insides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.engine_cache import EngineCache
from common.errors import ConfigError, InputError


@dataclass(frozen=True)
class Capabilities:
    """What a runtime can do, asked by the CLI, the CI matrix, fidelity and telemetry instead of its name."""

    precisions: tuple  # precisions it builds
    devices: tuple  # devices it accepts; the first is the default
    dynamic_batch: bool  # one engine serves every batch size (else one engine per batch size)
    device_timer: bool  # the runtime times compute alone on the device (time_evaluator)
    host_compute: bool  # computes on the host's cores, competing with the harness for them
    telemetry: tuple = ()  # (device, tool) pairs: the SMI tool that reads device memory / power
    # (ixsmi, nvidia-smi); devices not named are watched on the host
    reference: bool = False  # at fp32 on its first device it is the FP32 reference of fidelity checks
    fp16_onnx: bool = False  # its FP16 engine is an ONNX float16 graph: the FP16 range check and the
    # localisation read that graph itself, not a stand-in conversion
    replays: bool = False  # serves stored outputs instead of computing (needs image ids)
    # what the device does with float16 subnormals (results below 2^-14), as the FP16 range check models it:
    # flush (to zero, the strict default: MR-V100's handling is not publicly documented) | keep; a spec's
    # `fidelity: {fp16_subnormals: ...}` overrides it
    fp16_subnormals: str = "flush"

    def supports(self, precision: str, device: str | None = None) -> str | None:
        """None when the cell can run, else why not."""
        if precision not in self.precisions:
            return f"precision {precision} is not supported ({', '.join(self.precisions)})"
        if device is not None and device not in self.devices:
            return f"device {device!r} is not supported ({', '.join(self.devices)})"
        return None


@dataclass(frozen=True)
class BackendFlag:
    """A command-line flag a backend declares for itself (`Backend.flags`); its value reaches the backend as
    options[dest]. `type` turns the text into a value or raises ValueError saying what is wrong."""

    name: str  # "--replay-dir"
    dest: str  # "replay_dir"
    help: str
    type: Callable | None = None
    metavar: str | None = None
    shown: str | None = None  # the default as --help describes it
    group: str = "accuracy"  # the option group of common/config/options.py it joins


@dataclass(frozen=True)
class BuildRequest:
    onnx_path: Path
    onnx_sha256: str
    precision: str
    batch_size: int
    input_name: str
    input_shape: tuple  # (C, H, W)
    cache: EngineCache
    options: dict
    extra_inputs: tuple = ()  # ((name, (values...)), ...): constant per-image inputs besides input_name


class Runner:
    """Runs a loaded engine. Subclasses implement _run(feeds) -> list of arrays in output_names order, where
    feeds maps every graph input to its array: the image batch and the spec's constant extra inputs, fed the
    same way on every runtime."""

    input_name: str
    output_names: list
    static_batch: int | None = None  # set when the engine only accepts one batch size
    concurrent: bool = False  # infer() may run in several threads at once (one runner serves all streams)
    extra_inputs: dict = {}  # {name: [K] array}: fed as [N, K], the same row for every image
    # Optional features, declared (the harness reads these, never probes for methods):
    device_timer: bool = False  # device_time() times the engine alone on the device (time_evaluator)
    device_index: int | None = None  # which device of its kind it runs on, for the telemetry's SMI query

    @property
    def simulated_device_s(self) -> float | None:
        """Seconds of a simulated device clock (the replay backend's); None on a real runtime."""
        return None

    def device_time(self, x: np.ndarray) -> list:
        """Per-run seconds of the engine alone on the device, for runners that declare `device_timer`."""
        raise NotImplementedError(f"{type(self).__name__} declares no device timer")

    def extra_feeds(self, n: int) -> dict:
        """The extra inputs for a batch of n images: the same row for every image."""
        return {name: np.ascontiguousarray(np.broadcast_to(v, (n, *v.shape))) for name, v in self.extra_inputs.items()}

    def feeds(self, x: np.ndarray) -> dict:
        """Every graph input for the image batch x: x itself and the extra inputs."""
        return {self.input_name: x, **self.extra_feeds(x.shape[0])}

    def _run(self, feeds: dict) -> list:
        raise NotImplementedError

    def sync(self):
        """Wait until the device has finished all submitted work (no-op on synchronous runtimes)."""

    def pad(self, x: np.ndarray) -> np.ndarray:
        """x as the engine takes it: a partial batch padded by repeating its last image (static-batch engines)."""
        n = x.shape[0]
        if self.static_batch is not None and n != self.static_batch:
            if n > self.static_batch:
                raise InputError(
                    f"batch of {n} for an engine built for batch {self.static_batch}; rebuild or "
                    f"re-export the model for batch {n}, or use --bs {self.static_batch}"
                )
            x = np.concatenate([x, np.repeat(x[-1:], self.static_batch - n, axis=0)])
        return x

    def infer(self, x, image_ids: np.ndarray | None = None) -> dict:
        """Outputs for the batch x (the image batch, or {input name: array} naming inputs explicitly; extra
        inputs not named are fed from the spec); image_ids name its images for runners that serve stored
        outputs."""
        given = dict(x) if isinstance(x, dict) else {self.input_name: x}
        n = given[self.input_name].shape[0]
        padded = self.pad(given[self.input_name])  # the padded rows are dropped below
        feeds = self.feeds(padded)
        feeds.update({k: self.pad(v) for k, v in given.items() if k != self.input_name})
        outs = self._run(feeds)
        return {
            name: out[:n] if out.ndim and out.shape[0] == padded.shape[0] else out
            for name, out in zip(self.output_names, outs)
        }

    def close(self):
        """Free the engine's session and device memory (no-op where the runtime frees them itself)."""


class Backend:
    name = "base"
    engine_suffix = ".engine"
    capabilities: Capabilities
    flags: tuple = ()  # BackendFlag: its own command-line flags
    spec_section: frozenset | None = None  # the keys of its own variant section (named after the backend) in
    # model.yaml; the section reaches build() as req.options[name]

    def __init__(self, device: str | None = None, **options):
        self.requested_device = device
        self.options = options

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        """(usable here, why not)"""
        return True, ""

    def device(self) -> str:
        """The device this backend runs on: the one asked for, checked against the capabilities."""
        device = self.requested_device or self.capabilities.devices[0]
        if device not in self.capabilities.devices:
            raise ConfigError(
                f"{self.name} backend: unknown device {device!r}; known: {', '.join(self.capabilities.devices)}"
            )
        return device

    def precision_note(self, precision: str) -> str:
        """What `precision` means on this backend, said in the run's output (docs/fidelity.md)."""
        if precision == "fp16":
            return (
                "the backend's own FP16 build (computation in float16 where its compiler chooses); the FP16 "
                "range check judges the ONNX Runtime float16 conversion with the spec's block list as a stand-in"
            )
        return ""

    def telemetry_tool(self) -> str | None:
        """The device tool that watches this backend's device, None for the host."""
        return dict(self.capabilities.telemetry).get(self.device())

    def is_reference(self, precision: str) -> bool:
        """Whether this run is the FP32 reference itself (nothing to compare it with)."""
        return self.capabilities.reference and precision == "fp32" and self.device() == self.capabilities.devices[0]

    def runtime_version(self) -> str:
        """The runtime's name and version: part of every engine key, so an upgrade rebuilds."""
        raise NotImplementedError

    def build(self, req: BuildRequest) -> tuple[Path, bool]:
        """(engine path, cache hit)"""
        raise NotImplementedError

    def load(self, engine: Path, req: BuildRequest) -> Runner:
        """A Runner of the built engine."""
        raise NotImplementedError
