"""Raw outputs of an accuracy run, recorded per image and served again by the replay backend.

A recording is a directory: manifest.json (ONNX sha256, preprocessing key, image ids, outputs) and, per output,
<name>.data.npy (every image's slice concatenated along its first axis) and <name>.offsets.npy. Outputs whose
per-image first axis varies (detections kept by an in-graph NMS) are stored without padding. The directory is
written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from common.engine_cache import atomic_write_bytes
from common.errors import ConfigError, InputError

MANIFEST = "manifest.json"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


class OutputRecorder:
    def __init__(self, directory: str | Path, onnx_sha256: str, preprocess_key: str):
        self.directory = Path(directory)
        self.onnx_sha256, self.preprocess_key = onnx_sha256, preprocess_key
        self.image_ids: list[int] = []
        self.chunks: dict[str, list[np.ndarray]] = {}

    def add(self, image_ids: np.ndarray, outputs: dict):
        """Keep a batch's outputs per image; an output without the batch axis is a ConfigError."""
        n = len(image_ids)
        for name, value in outputs.items():
            if value.ndim == 0 or value.shape[0] != n:
                raise ConfigError(f"output '{name}' of shape {value.shape} has no batch axis of {n}: cannot record")
            self.chunks.setdefault(name, []).extend(value[i] for i in range(n))
        self.image_ids.extend(int(i) for i in image_ids)

    def write(self):
        """Write the recording to a temporary dir renamed over `directory`: a failed write leaves no half recording."""
        parent = self.directory.parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{self.directory.name}."))
        try:
            outputs = {}
            for name, slices in self.chunks.items():
                tails = {s.shape[1:] for s in slices if s.ndim}
                if len(tails) > 1:
                    raise ConfigError(f"output '{name}' changes shape beyond its first axis: cannot record")
                sizes = np.array([s.shape[0] if s.ndim else 1 for s in slices], np.int64)
                data = np.concatenate([s.reshape(-1, *s.shape[1:]) if s.ndim else s.reshape(1) for s in slices])
                np.save(tmp / f"{_safe(name)}.data.npy", data)
                np.save(tmp / f"{_safe(name)}.offsets.npy", np.concatenate([[0], np.cumsum(sizes)]))
                outputs[name] = {"file": _safe(name), "scalar_per_image": not slices[0].ndim}
            atomic_write_bytes(
                tmp / MANIFEST,
                json.dumps(
                    {
                        "onnx_sha256": self.onnx_sha256,
                        "preprocess": self.preprocess_key,
                        "image_ids": self.image_ids,
                        "outputs": outputs,
                    }
                ).encode(),
            )
            if self.directory.exists():
                shutil.rmtree(self.directory)
            os.replace(tmp, self.directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


class Recording:
    """A recording opened for replay: per-image outputs from memory-mapped arrays."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        try:
            self.manifest = json.loads((self.directory / MANIFEST).read_text())
            self.row = {int(i): k for k, i in enumerate(self.manifest["image_ids"])}
            self.outputs = {}
            for name, info in self.manifest["outputs"].items():
                path = self.directory / f"{info['file']}.data.npy"
                data = np.load(path, mmap_mode="r")  # its shape, dtype and where the data starts
                offsets = np.load(self.directory / f"{info['file']}.offsets.npy")
                self.outputs[name] = (_Rows(path, data), offsets, info["scalar_per_image"])
                del data
        except FileNotFoundError as exc:
            raise InputError(
                f"not a complete output recording ({Path(exc.filename).name} missing)", self.directory
            ) from None
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise InputError(f"not a readable output recording ({exc})", self.directory) from None

    def check(self, onnx_sha256: str, preprocess_key: str):
        """A ConfigError when the recording was made with another ONNX or other preprocessing."""
        if self.manifest["onnx_sha256"] != onnx_sha256:
            raise ConfigError("the recording was made with another ONNX model", self.directory)
        if self.manifest["preprocess"] != preprocess_key:
            raise ConfigError("the recording was made with other preprocessing settings", self.directory)

    def batch(self, image_ids) -> dict:
        """{output: batch array} recorded for image_ids; an InputError naming the first image not recorded."""
        missing = [int(i) for i in image_ids if int(i) not in self.row]
        if missing:
            raise InputError(f"no recorded outputs for image {missing[0]} ({len(missing)} missing)", self.directory)
        rows = [self.row[int(i)] for i in image_ids]
        out = {}
        for name, (data, offsets, scalar) in self.outputs.items():
            if scalar:
                out[name] = (
                    np.stack([data.read(r, r + 1)[0] for r in rows]) if rows else np.empty((0, *data.tail), data.dtype)
                )
                continue
            sizes = offsets[np.add(rows, 1)] - offsets[rows]
            width = int(sizes.max()) if len(sizes) else 0
            # Images of one batch are padded to the longest with zeros, as a batched graph pads its outputs.
            value = np.zeros((len(rows), width, *data.tail), data.dtype)
            for k, (r, size) in enumerate(zip(rows, sizes)):
                value[k, :size] = data.read(offsets[r], offsets[r] + size)
            out[name] = value
        return out


class _Rows:
    """Rows of a recorded .npy array read with pread: a memory map's pages, once read, would stay in the
    process's RSS (504 MB for 5000 images of RT-DETR's outputs)."""

    def __init__(self, path: Path, header: np.memmap):
        self.dtype, self.tail, self.offset = header.dtype, header.shape[1:], header.offset
        self.row_bytes = int(np.prod(self.tail, dtype=np.int64)) * self.dtype.itemsize
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)

    def read(self, start: int, end: int) -> np.ndarray:
        n = (int(end) - int(start)) * self.row_bytes
        buf = os.pread(self.fd, n, self.offset + int(start) * self.row_bytes)
        if len(buf) != n:
            raise InputError(f"recorded outputs end early ({len(buf)} of {n} bytes)", self.path)
        return np.frombuffer(buf, self.dtype).reshape(-1, *self.tail)

    def __del__(self):
        try:
            os.close(self.fd)
        except (OSError, AttributeError):
            pass
