"""Backend registry: every backend is one module `<name>_backend.py` or one package folder `<name>/` under this
folder (or under a folder of $SUITE_BACKENDS_PATH, for backends kept outside the suite), exporting `BACKEND = <its
Backend class>`. Nothing else names a backend: the class declares its capabilities, its command-line flags
(`flags`) and its spec section (`spec_section`), and the CLI, the spec reader and the CI matrix ask it. The
folder is listed at import; a backend module is imported only when asked for."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
from pathlib import Path

from common.errors import BackendUnavailable, ConfigError

DEFAULT_BACKEND = "onnxruntime"
PATH_ENV = "SUITE_BACKENDS_PATH"  # extra folders of backends, os.pathsep-separated
_HERE = Path(__file__).resolve().parent


def _entries(root: Path):
    """(name, file to import, is a package) of every backend in a folder."""
    if not root.is_dir():
        return
    for entry in sorted(root.iterdir()):
        if entry.suffix == ".py" and entry.stem.endswith("_backend"):
            yield entry.stem[: -len("_backend")], entry, False
        elif entry.is_dir() and not entry.name.startswith(("_", ".")) and (entry / "__init__.py").is_file():
            yield entry.name, entry / "__init__.py", True


def discover(environ=None) -> dict:
    """{name: (module name, file, is a package)} of every backend, the default first; the suite's own folder
    wins over $SUITE_BACKENDS_PATH. Also refreshes BACKENDS (a test that sets the path calls it)."""
    environ = os.environ if environ is None else environ
    found: dict = {}
    for name, path, package in _entries(_HERE):
        found[name] = (f"{__name__}.{path.parent.name if package else path.stem}", path, package)
    for root in filter(None, environ.get(PATH_ENV, "").split(os.pathsep)):
        for name, path, package in _entries(Path(root)):
            found.setdefault(name, (f"suite_backends.{name}", path, package))
    BACKENDS.clear()
    BACKENDS.update(sorted(found.items(), key=lambda kv: (kv[0] != DEFAULT_BACKEND, kv[0])))
    return BACKENDS


BACKENDS: dict = {}
discover()


def _module(name: str):
    module_name, path, package = BACKENDS[name]
    if module_name in sys.modules or module_name.startswith(__name__ + "."):
        return importlib.import_module(module_name)
    spec = importlib.util.spec_from_file_location(
        module_name, path, submodule_search_locations=[str(path.parent)] if package else None
    )
    if spec is None or spec.loader is None:
        raise ConfigError(f"backend '{name}': cannot be imported", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def backend_class(name: str):
    """The class of a backend by name (importing its module, not its runtime)."""
    if name not in BACKENDS:
        from common.errors import did_you_mean

        raise ConfigError(
            f"unknown backend '{name}'{did_you_mean(name, BACKENDS)}; known: {', '.join(sorted(BACKENDS))}"
        )
    cls = getattr(_module(name), "BACKEND", None)
    if cls is None or getattr(cls, "name", None) != name:
        raise ConfigError(f"backend '{name}': {BACKENDS[name][1]} must export BACKEND, a Backend class named '{name}'")
    return cls


def backend_flags() -> list:
    """Every backend's own command-line flags (BackendFlag), in registry order; their values reach the backend
    as its options (RunConfig.backend_options)."""
    return [f for name in BACKENDS for f in backend_class(name).flags]


def spec_sections() -> dict:
    """{section: its keys} of the variant sections backends declare (a backend's section is named after it)."""
    return {name: set(cls.spec_section) for name in BACKENDS if (cls := backend_class(name)).spec_section is not None}


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
        rows.append(
            {
                "backend": name,
                "available": ok,
                "why_not": why or None,
                "version": version,
                "capabilities": dataclasses.asdict(cls.capabilities),
            }
        )
    return rows
