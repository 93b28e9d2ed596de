"""The one small interface every runtime sits behind.

Backend.build(onnx, precision, batch, ...) -> engine file (cached); Backend.load(engine, ...) -> Runner;
Runner.infer(batch) -> {output name: array}. Nothing outside a backend module knows a runtime's insides.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine_cache import EngineCache
from ..errors import InputError


@dataclass(frozen=True)
class BuildRequest:
    onnx_path: Path
    onnx_sha256: str
    precision: str
    batch_size: int
    input_name: str
    input_shape: tuple           # (C, H, W)
    cache: EngineCache
    options: dict
    extra_inputs: tuple = ()     # ((name, (values...)), ...): constant per-image inputs besides input_name


class Runner:
    """Runs a loaded engine. Subclasses implement _run(x) -> list of arrays in output_names order."""

    input_name: str
    output_names: list
    static_batch: int | None = None   # set when the engine only accepts one batch size
    concurrent: bool = False          # infer() may run in several threads at once (one runner serves all streams)
    extra_inputs: dict = {}           # {name: [K] array}: fed as [N, K], the same row for every image

    def extra_feeds(self, n: int) -> dict:
        return {name: np.ascontiguousarray(np.broadcast_to(v, (n, *v.shape))) for name, v in self.extra_inputs.items()}

    def _run(self, x: np.ndarray) -> list:
        raise NotImplementedError

    def sync(self):
        """Wait until the device has finished all submitted work (no-op on synchronous runtimes)."""

    def pad(self, x: np.ndarray) -> np.ndarray:
        """x as the engine takes it: a partial batch padded by repeating its last image (static-batch engines)."""
        n = x.shape[0]
        if self.static_batch is not None and n != self.static_batch:
            if n > self.static_batch:
                raise InputError(f"batch of {n} for an engine built for batch {self.static_batch}; rebuild or "
                                 f"re-export the model for batch {n}, or use --bs {self.static_batch}")
            x = np.concatenate([x, np.repeat(x[-1:], self.static_batch - n, axis=0)])
        return x

    def infer(self, x: np.ndarray, image_ids: np.ndarray | None = None) -> dict:
        """Outputs for the batch x; image_ids name its images for runners that serve stored outputs."""
        n = x.shape[0]
        x = self.pad(x)  # the padded rows are dropped below
        outs = self._run(x)
        return {name: out[:n] if out.ndim and out.shape[0] == x.shape[0] else out
                for name, out in zip(self.output_names, outs)}

    def close(self):
        pass


class Backend:
    name = "base"
    engine_suffix = ".engine"

    def __init__(self, device: str | None = None, **options):
        self.requested_device = device
        self.options = options

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        """(usable here, why not)"""
        return True, ""

    def device(self) -> str:
        raise NotImplementedError

    def runtime_version(self) -> str:
        raise NotImplementedError

    def build(self, req: BuildRequest) -> tuple[Path, bool]:
        """(engine path, cache hit)"""
        raise NotImplementedError

    def load(self, engine: Path, req: BuildRequest) -> Runner:
        raise NotImplementedError
