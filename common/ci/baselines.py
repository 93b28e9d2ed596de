"""Baseline files: `baselines/<device>/<sdk>.json`, one per accelerator model and runtime / SDK version.

Each file maps a case key to the accepted figures of that case: FPS entries are keyed
`model/variant/backend/precision/bsN` (unchanged since the first format), accuracy entries the same key plus
`/accuracy`. Entries carry their provenance (ONNX hash, threads, timing settings, host, runtime, commit).

When the SDK (runtime version) changes, the file of the new version has no entries yet: `lookup` then falls back
to the newest baseline of the same device and the same runtime name from an *older* version, and says so, so an
SDK upgrade that slows a model down is compared with the last accepted figures instead of passing as "no
baseline". The owner accepts the new version's figures deliberately with `baseline-update`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from common import REPO_ROOT, SCHEMA_VERSION
from common.engine_cache import atomic_write_json
from common.errors import ConfigError
from common.record.schema import RecordError
from common.record.types import built, check_baseline_file

BASELINES_DIR = REPO_ROOT / "baselines"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", str(text)).strip("-") or "unknown"


def baseline_key(case: dict) -> str:
    key = f"{case['model']}/{case['variant']}/{case['backend']}/{case['precision']}/bs{case['batch_size']}"
    if case.get("kind") == "loadgen":
        return f"{key}/loadgen-{case.get('scenario')}"
    return key + "/accuracy" if case.get("kind") == "accuracy" else key


def baseline_path(baselines_dir: str | Path, device: str, sdk: str) -> Path:
    return Path(baselines_dir) / slug(device) / f"{slug(sdk)}.json"


def read_baseline(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"unreadable baseline file ({exc})", path) from None
    try:
        check_baseline_file(data, path)
    except RecordError as exc:
        # a NaN, a string or a null where a figure belongs would compare false against every bound (a pass) or
        # crash the comparison: the file is refused as bad configuration, exit 2, naming the entry and field
        raise ConfigError(str(exc)) from None
    return data["entries"]


def split_sdk(sdk: str) -> tuple[str, tuple]:
    """'onnxruntime-1.31.1' -> ('onnxruntime', (1, 31, 1)); the version part sorts numerically."""
    m = re.match(r"^(.*?)[-_ ]?v?(\d+(?:[.\-_+]\w+)*)$", sdk)
    if not m:
        return sdk, ()
    parts = tuple(int(p) if p.isdigit() else p for p in re.split(r"[.\-_+]", m.group(2)))
    return m.group(1), parts


def _older(a: tuple, b: tuple) -> bool:
    """a < b for version tuples that may mix ints and strings (numbers sort before words)."""
    norm = lambda t: [(0, x, "") if isinstance(x, int) else (1, 0, x) for x in t]  # noqa: E731
    return norm(a) < norm(b)


class Baselines:
    """Baseline files read once per report; `lookup` returns (entry, path it came from, note or None)."""

    def __init__(self, baselines_dir: str | Path):
        self.dir = Path(baselines_dir)
        self._files: dict = {}

    def entries(self, path: Path) -> dict:
        """The entries of one baseline file by case key, read once per file: every case of a report looks them up."""
        if path not in self._files:
            self._files[path] = read_baseline(path)
        return self._files[path]

    def lookup(self, device: str, sdk: str, key: str) -> tuple[dict | None, Path, str | None]:
        """(entry, file, note) of a case's baseline for this device and SDK; with none for this SDK, the newest older
        version's entry and a note saying the runtime changed; (None, this SDK's file, None) when there is none."""
        path = baseline_path(self.dir, device, sdk)
        entry = self.entries(path).get(key)
        if entry is not None:
            return entry, path, None
        name, version = split_sdk(slug(sdk))
        candidates = []
        for other in sorted((self.dir / slug(device)).glob("*.json")) if (self.dir / slug(device)).is_dir() else []:
            o_name, o_version = split_sdk(other.stem)
            if other == path or o_name != name or not _older(o_version, version):
                continue
            if key in self.entries(other):
                candidates.append((o_version, other))
        if not candidates:
            return None, path, None
        best = max(candidates, key=lambda c: [(0, x, "") if isinstance(x, int) else (1, 0, x) for x in c[0]])[1]
        note = (
            f"runtime changed: no baseline for {slug(sdk)} yet, compared with the newest older one "
            f"({best.stem}); accept the new version's figures with `scripts/regress.py baseline-update`"
        )
        return self.entries(best)[key], best, note


def write_baseline(path: Path, device: str, sdk: str, entries: dict) -> None:
    data = {"schema_version": SCHEMA_VERSION, "device": device, "sdk": sdk, "entries": dict(sorted(entries.items()))}
    atomic_write_json(path, built(check_baseline_file, data, path))
