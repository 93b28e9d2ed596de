"""Backend registry: name -> class. A backend module is imported only when asked for."""
from __future__ import annotations

import importlib

from ..errors import BackendUnavailable, ConfigError

BACKENDS = {
    "onnxruntime": ("common.backends.onnxruntime_backend", "OnnxRuntimeBackend"),
    "igie": ("common.backends.igie_backend", "IgieBackend"),
    "replay": ("common.backends.replay_backend", "ReplayBackend"),
    "tvm": ("common.backends.tvm_backend", "TvmBackend"),
}
DEFAULT_BACKEND = "onnxruntime"


def get_backend(name: str, device: str | None = None, **options):
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend '{name}'; known: {', '.join(sorted(BACKENDS))}")
    module, cls_name = BACKENDS[name]
    cls = getattr(importlib.import_module(module), cls_name)
    ok, why = cls.availability()
    if not ok:
        raise BackendUnavailable(f"backend '{name}' is unavailable: {why}")
    return cls(device=device, **options)
