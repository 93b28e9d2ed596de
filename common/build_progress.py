"""What a user sees while an engine or an export is built: a line naming it when it starts, one with the time it
took when it ends, and on a terminal the elapsed time with an estimate from the last build of the same kind. An
IGIE or OpenVINO compile takes minutes; a CI log that shows nothing meanwhile looks hung."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

TICK_S = 1.0


def describe_build(describe: dict, suffix: str) -> str:
    """`onnxruntime fp16 [1, 3, 320, 320] (.onnx)`, or `the ONNX of rtmdet/nano-person (export, opset 17)`: what
    is built, from the cache sidecar's description."""
    if describe.get("checkpoint"):
        return f"the ONNX of {describe.get('model')}/{describe.get('variant')} (export, opset {describe.get('opset')})"
    parts = [str(describe[k]) for k in ("backend", "precision") if describe.get(k)]
    if describe.get("shape") is not None:
        parts.append(str(describe["shape"]))
    return " ".join(parts or ["engine"]) + f" ({suffix})"


def last_build_s(root: Path, describe: dict, suffix: str) -> float | None:
    """How long the newest cached build of the same backend, precision and file type took (None: none yet)."""
    newest, seconds = -1.0, None
    for info in root.glob("*.json"):  # <key>.json beside <key><suffix>
        if not info.with_name(info.stem + suffix).is_file():
            continue
        try:
            meta = json.loads(info.read_text())
            mtime = info.stat().st_mtime
        except (OSError, ValueError):
            continue
        if (
            isinstance(meta, dict)
            and isinstance(meta.get("build_s"), int | float)
            and mtime > newest
            and all(meta.get(k) == describe.get(k) for k in ("backend", "precision", "model", "variant"))
        ):
            newest, seconds = mtime, float(meta["build_s"])
    return seconds


def timed_build(build: Callable[[Path], None], tmp: Path, what: str, estimate_s: float | None, out=None) -> float:
    """build(tmp) between a start and an end line on stderr; the seconds it took."""
    out = out or sys.stderr
    like = f", ~{estimate_s:.0f} s like the last one" if estimate_s is not None else ""
    print(f"engine: building {what}{like} ...", file=out, flush=True)
    start = time.monotonic()
    stop = threading.Event()
    ticker = None
    if getattr(out, "isatty", lambda: False)():

        def tick():
            while not stop.wait(TICK_S):
                elapsed = time.monotonic() - start
                left = f", ~{max(0.0, estimate_s - elapsed):.0f} s left" if estimate_s is not None else ""
                print(f"\r  building: {elapsed:.0f} s{left}   ", end="", file=out, flush=True)

        ticker = threading.Thread(target=tick, name="build-progress", daemon=True)
        ticker.start()
    try:
        build(tmp)
    finally:
        stop.set()
        if ticker is not None:
            ticker.join()
            print(file=out)
    took = time.monotonic() - start
    print(f"engine: built {what} in {took:.1f} s", file=out, flush=True)
    return took
