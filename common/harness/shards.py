"""Image shards of one accuracy run, and their exact merge (docs/scale-out.md).

A shard K/N is the K-th of N contiguous blocks of the dataset's image ids in ascending order (after --max-images):
the same on every node, whatever the order of the annotation file. A shard run writes, in its results dir,

    shard-K-of-N.<model>.<variant>.<backend>.<precision>.bs<B>.npy    its detections: DetectionStore rows, float64
    shard-K-of-N.<model>.<variant>.<backend>.<precision>.bs<B>.json   its partial record (kind "accuracy-shard")

and `scripts/suite merge DIR...` evaluates the union of every shard's detections once, with the suite's own
evaluator, over all the images: the rows of shards 1..N in order are the rows the unsharded run collects, so the
12 stats are the unsharded run's exactly. An average of per-shard APs is never computed (it is not the AP).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.config.options import parse_shard
from common.engine_cache import atomic_write_bytes, atomic_write_json, cache_key
from common.errors import ConfigError, IncompleteError, InputError

SHARD_KIND = "accuracy-shard"
SHARD_GLOB = "shard-*-of-*.json"

# The fields every shard of one run must agree on, with the words a refusal uses.
IDENTITY = {
    "model": "model",
    "variant": "variant",
    "backend": "backend",
    "precision": "precision",
    "batch_size": "batch size",
    "onnx_sha256": "model bytes (ONNX sha256)",
    "spec": "model spec (preprocessing, decoding)",
    "categories": "categories",
    "dataset": "dataset (image ids, file names and sizes)",
    "annotation_sha256": "annotation file",
    "engine_key": "engine key",
}  # in this order: the engine key follows from the others


def shard_bounds(count: int, k: int, n: int) -> tuple[int, int]:
    """[start, stop) of shard k of n over `count` images in id order: contiguous, sizes differ by at most one."""
    return count * (k - 1) // n, count * k // n


def ids_digest(image_ids) -> str:
    return hashlib.sha256(",".join(str(int(i)) for i in image_ids).encode()).hexdigest()


def dataset_digest(items) -> str:
    """The images a run covers, as any node sees them: id, file name and size of every image (not its path or
    mtime, which differ between nodes holding the same copy)."""
    h = hashlib.sha256()
    for it in items:
        size = it.stamp[0] if it.stamp else os.stat(it.path).st_size
        h.update(f"{it.image_id}\t{os.path.basename(it.path)}\t{size}\n".encode())
    return h.hexdigest()


@dataclass
class ShardPlan:
    """This run's shard of the dataset's items."""

    index: int
    total: int
    source: str
    start: int
    stop: int
    all_count: int
    dataset: str  # dataset_digest of every item of the unsharded run
    items: list

    @classmethod
    def of(cls, shard: str, source: str | None, all_items: list) -> ShardPlan:
        """The images of `all_items` that shard "K/N" selects (set by `source`: --shard or a CI variable), with
        what the merge needs to check the union."""
        k, n = parse_shard(shard)
        start, stop = shard_bounds(len(all_items), k, n)
        return cls(
            k,
            n,
            source or "--shard",
            start,
            stop,
            len(all_items),
            dataset_digest(all_items),
            all_items[start:stop],
        )

    def describe(self) -> str:
        """The line a shard run prints: which images of how many it covers, and what set the shard."""
        span = f"images {self.start + 1}..{self.stop}" if self.stop > self.start else "no image"
        return f"shard {self.index}/{self.total} (from {self.source}): {span} of {self.all_count} by id"


def engine_key(p) -> str:
    """What the engine of a run is built from, as the engine cache keys it: every shard must run the same one."""
    options = {k: v for k, v in p.request.options.items() if k != "calibration"}
    calib = p.request.options.get("calibration")
    return cache_key(
        p.onnx_sha256,
        backend=p.backend.name,
        precision=p.request.precision,
        batch_size=p.request.batch_size,
        runtime=p.backend.runtime_version(),
        options=options,
        calibration=getattr(calib, "key", None) if calib is not None else None,
    )


def shard_stem(record: dict, index: int, total: int) -> str:
    from common.record.results import _slug

    parts = (record["model"], record["variant"], record["backend"], record["precision"], f"bs{record['batch_size']}")
    return f"shard-{index}-of-{total}." + ".".join(_slug(x) for x in parts)


def write_shard(results_dir: str | Path, record: dict, rows: np.ndarray) -> Path:
    """The shard's detections, then its record naming them (so a record is never there without its detections).
    A rerun of the same shard replaces both."""
    from common.record.types import built, check_record

    shard = record["shard"]
    stem = shard_stem(record, shard["index"], shard["total"])
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(rows, np.float64), allow_pickle=False)
    data = buf.getvalue()
    shard.update(detections=stem + ".npy", detections_sha256=hashlib.sha256(data).hexdigest(), rows=len(rows))
    built(check_record, record)  # the record's declared type (common/record/types.py), before anything is written
    try:
        atomic_write_bytes(Path(results_dir) / (stem + ".npy"), data)
        path = Path(results_dir) / (stem + ".json")
        atomic_write_json(path, record)
    except OSError as exc:
        from common.errors import RuntimeFailure

        raise RuntimeFailure(
            f"cannot write the shard's detections or record ({exc.strerror or exc})", results_dir
        ) from None
    return path


# ---------------------------------------------------------------------------------------------------- merge


@dataclass
class Shard:
    path: Path
    record: dict

    @property
    def index(self) -> int:
        """K of this shard K/N."""
        return self.record["shard"]["index"]

    @property
    def total(self) -> int:
        """N of this shard K/N."""
        return self.record["shard"]["total"]

    def rows(self) -> np.ndarray:
        """This shard's detections as DetectionStore rows; an InputError naming the file when they are unreadable."""
        info = self.record["shard"]
        f = self.path.parent / info["detections"]
        try:
            data = f.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read the shard's detections ({exc.strerror})", f) from None
        if hashlib.sha256(data).hexdigest() != info["detections_sha256"]:
            raise InputError("the detections do not match their shard record's sha256 (changed or truncated)", f)
        rows = np.load(io.BytesIO(data), allow_pickle=False)
        if rows.ndim != 2 or rows.shape[1] != 7 or len(rows) != info["rows"]:
            raise InputError(f"expected {info['rows']} detection rows of 7 values, found {rows.shape}", f)
        return rows


def find_shards(dirs: list) -> tuple[list[Shard], list[str]]:
    """Every shard record under the given results dirs (their sub-dirs included: a node's --devices workers).
    A dir that is not there is exit 2; one with no shard record is a missing shard (exit 4, with the others)."""
    found, empty = [], []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise InputError("no such results dir", d)
        paths = sorted(d.rglob(SHARD_GLOB))
        if not paths:
            empty.append(str(d))
        for path in paths:
            try:
                record = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise InputError(f"unreadable shard record ({exc})", path) from None
            if not isinstance(record, dict) or record.get("kind") != SHARD_KIND or "identity" not in record:
                raise InputError(
                    f"not a shard record (kind {record.get('kind') if isinstance(record, dict) else '?'!r})", path
                )
            found.append(Shard(path, record))
    return found, empty


def check_shards(shards: list[Shard], empty_dirs: list[str]) -> list[Shard]:
    """Shards 1..N of one run, in index order. Exit 2 (ConfigError) for a duplicated shard, shards of different
    splits, or shards that disagree on what they ran; exit 4 (IncompleteError) naming every missing shard."""
    if not shards:
        raise IncompleteError("no shard record in " + ", ".join(empty_dirs) + ": every shard is missing")
    totals = {s.total for s in shards}
    if len(totals) > 1:
        raise ConfigError(
            "the shards split the images differently: " + ", ".join(f"{s.index}/{s.total} ({s.path})" for s in shards)
        )
    by_index: dict[int, Shard] = {}
    for s in shards:
        if s.index in by_index:
            raise ConfigError(f"shard {s.index}/{s.total} is given twice: {by_index[s.index].path} and {s.path}")
        by_index[s.index] = s
    first = min(by_index.values(), key=lambda s: s.index)
    for s in by_index.values():
        for key, words in IDENTITY.items():
            a, b = first.record["identity"].get(key), s.record["identity"].get(key)
            if a != b:
                raise ConfigError(
                    f"the shards disagree on the {words}: shard {first.index}/{first.total} has "
                    f"{a!r} ({first.path}), shard {s.index}/{s.total} has {b!r} ({s.path})"
                )
    n = first.total
    missing = [k for k in range(1, n + 1) if k not in by_index]
    if missing:
        sizes = {k: shard_bounds(first.record["shard"]["all_images"], k, n) for k in missing}
        raise IncompleteError(
            "missing shard(s): "
            + ", ".join(
                f"{k}/{n} (images {a + 1}..{b}, {b - a} images)" if b > a else f"{k}/{n} (no image)"
                for k, (a, b) in sizes.items()
            )
            + (f"; no shard record in {', '.join(empty_dirs)}" if empty_dirs else "")
        )
    return [by_index[k] for k in range(1, n + 1)]
