"""Backend registry: name -> class. A backend module is imported only when asked for."""
from __future__ import annotations

import dataclasses
import importlib

from common.errors import BackendUnavailable, ConfigError

BACKENDS = {
    "onnxruntime": ("common.runtime.backends.onnxruntime_backend", "OnnxRuntimeBackend"),
    "igie": ("common.runtime.backends.igie_backend", "IgieBackend"),
    "replay": ("common.runtime.backends.replay_backend", "ReplayBackend"),
    "tvm": ("common.runtime.backends.tvm_backend", "TvmBackend"),
    "openvino": ("common.runtime.backends.openvino_backend", "OpenVinoBackend"),
}
DEFAULT_BACKEND = "onnxruntime"


def backend_class(name: str):
    """The class of a backend by name (importing its module, not its runtime)."""
    if name not in BACKENDS:
        from common.errors import did_you_mean
        raise ConfigError(f"unknown backend '{name}'{did_you_mean(name, BACKENDS)}; known: "
                          f"{', '.join(sorted(BACKENDS))}")
    module, cls_name = BACKENDS[name]
    return getattr(importlib.import_module(module), cls_name)


def get_backend(name: str, device: str | None = None, **options):
    """A usable backend, or BackendUnavailable saying why not here."""
    cls = backend_class(name)
    ok, why = cls.availability()
    if not ok:
        raise BackendUnavailable(f"backend '{name}' is unavailable: {why}")
    return cls(device=device, **options)


def reference_backend():
    """The class of the runtime that is the FP32 reference of every fidelity comparison."""
    return next(cls for cls in map(backend_class, BACKENDS) if cls.capabilities.reference)


def environment_table() -> list[dict]:
    """One row per runtime: name, version, whether it is usable here (and why not), its capabilities."""
    rows = []
    for name in BACKENDS:
        cls = backend_class(name)
        ok, why = cls.availability()
        version = None
        if ok:
            try:
                version = cls().runtime_version()
            except Exception as exc:  # noqa: BLE001 - a broken install is a row, not a crash
                ok, why = False, f"runtime_version() failed: {type(exc).__name__}: {exc}"
        rows.append({"backend": name, "available": ok, "why_not": why or None, "version": version,
                     "capabilities": dataclasses.asdict(cls.capabilities)})
    return rows
