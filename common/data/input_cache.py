"""Decoded + letterboxed images stored once per (image set, preprocessing) as memory-mapped .npy files.

Every precision and batch size of a CI matrix reads the same file instead of decoding JPEGs again. The key hashes
the preprocessing settings and every image's path, size and modification time, so changed images or settings
make a new entry. Entries are written under temporary names and renamed when complete (inputs last, which is
what lookup() requires), so two runs building the same entry at once cannot leave a torn file.
What is stored is what preprocessing cannot cheaply redo: the JPEG decode and the resize, as the uint8 canvas of
Preprocessor.letterbox (3 x H x W bytes per image: 0.31 MB at 320x320, 1.23 MB at 640x640, so 6.1 GB for the 5000
images of val2017 at 640x640, where float32 inputs took 24.6 GB). The normalisation to float32 is a table lookup
per pixel, redone by each batch (Preprocessor.normalize), bit-identical to preprocessing the image afresh.
The entry's size is printed when it is built, and its space reserved first: a disk that cannot hold it is refused
(ConfigError, exit 2) naming the directory and the bytes needed and free. Entries of the float32 format that
preceded this one are not read (their dtype differs) and are replaced.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import tempfile
from json.encoder import encode_basestring_ascii
from pathlib import Path

import numpy as np

from common.engine_cache import atomic_write_bytes
from common.errors import ConfigError
from common.fsaccess import shared_file_mode

DTYPE = np.uint8


def cache_key(items, pre) -> str:
    # Per image the bytes of json.dumps([id, path, size, mtime_ns]) (the key's format since the cache exists),
    # formatted directly: json.dumps per image was half of this function's time on every run with the cache.
    # The stamps image_items took while checking each file exists, else a stat here.
    """The entry's name: every image's id, path, size and mtime with the preprocessing key, so a
    changed image or setting never reads another entry's inputs."""
    rows = []
    for it in items:
        if it.stamp is None:
            st = os.stat(it.path)
            size, mtime_ns = st.st_size, st.st_mtime_ns
        else:
            size, mtime_ns = it.stamp
        rows.append(f"[{int(it.image_id)!r}, {encode_basestring_ascii(it.path)}, {size}, {mtime_ns}]")
    h = hashlib.sha256(pre.spec.key(pre.height, pre.width).encode())
    h.update("".join(rows).encode())
    return h.hexdigest()[:32]


class InputCache:
    def __init__(self, root: str | Path, items, pre):
        self.root = Path(root)
        self.n, self.shape = len(items), (3, pre.height, pre.width)
        key = cache_key(items, pre)
        self.inputs_path = self.root / f"{key}.inputs.npy"
        self.meta_path = self.root / f"{key}.meta.npy"
        self.ids = np.array([it.image_id for it in items], np.int64)

    def lookup(self):
        """(canvases [N, 3, H, W] uint8 over a read-only mapping of the entry, meta [N, 6]) or None when absent
        or not matching. release() lets go of the pages of images already read."""
        try:
            header = np.load(self.inputs_path, mmap_mode="r")  # its shape, dtype and where the data starts
            meta = np.load(self.meta_path)
            if header.shape != (self.n, *self.shape) or header.dtype != DTYPE or meta.shape != (self.n, 6):
                return None
            self._offset = header.offset
            del header
            with open(self.inputs_path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            return None
        inputs = np.frombuffer(self._map, DTYPE, count=self.n * self.per_image, offset=self._offset)
        return inputs.reshape(self.n, *self.shape), meta

    @property
    def per_image(self) -> int:
        """Bytes of one image's uint8 canvas."""
        return int(np.prod(self.shape))

    def release(self, start: int, end: int):
        """Images [start, end) were read: their pages leave this process (they stay in the page cache). A
        mapped file's pages count in the process's RSS: reading all of a 6 GB entry would otherwise leave its
        RSS at 6 GB. Pages read again are faulted in again, so this is never wrong, only slower."""
        page = mmap.PAGESIZE
        lo = -(-(self._offset + start * self.per_image) // page) * page
        hi = (self._offset + end * self.per_image) // page * page
        if hi > lo:
            self._map.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    @property
    def nbytes(self) -> int:
        """Bytes of the entry on disk (canvases and geometry rows; the .npy headers aside)."""
        return self.n * int(np.prod(self.shape)) * np.dtype(DTYPE).itemsize + self.n * 6 * 8

    def describe(self) -> str:
        """The entry in words: image count, canvas shape and size."""
        c, h, w = self.shape
        return f"{self.n} images x {c}x{h}x{w} uint8 = {_size(self.nbytes)}"

    def writer(self):
        return _CacheWriter(self)


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _too_small(cache: InputCache, free: int) -> ConfigError:
    return ConfigError(
        f"the input cache needs {cache.nbytes} bytes ({cache.describe()}) but the disk has "
        f"{free} bytes free ({_size(free)}); free space, point --input-cache at a larger disk, or "
        "run without it",
        cache.root,
    )


class _CacheWriter:
    """Collects batches in order; commit() publishes the entry once every image was written."""

    def __init__(self, cache: InputCache):
        import shutil
        import sys

        self.cache = cache
        cache.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(cache.root).free
        if free < cache.nbytes:
            raise _too_small(cache, free)
        print(f"input cache: storing {cache.describe()} in {cache.root} ({_size(free)} free)", file=sys.stderr)
        fd, self.tmp = tempfile.mkstemp(dir=cache.root, prefix=".inputs.", suffix=".npy.tmp")
        self.fd = fd
        try:
            os.fchmod(fd, shared_file_mode())  # shared by runs, possibly of other users: not mkstemp's 0600
            # the .npy header; the canvases are then written with pwrite, not through a mapping, whose written
            # pages would stay in this process's RSS (all 6 GB of them at full scale)
            header = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=DTYPE, shape=(cache.n, *cache.shape))
            self.offset = header.offset
            del header
            # reserve the blocks now: a disk that filled up since the check above (or a quota) is refused here,
            # not a SIGBUS when a mapped page is written
            try:
                os.posix_fallocate(fd, 0, os.path.getsize(self.tmp))
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    raise _too_small(cache, shutil.disk_usage(cache.root).free) from None
                # a file system without fallocate: written as it comes (a full disk is then an OSError of add)
        except BaseException:
            self.discard()
            raise
        self.meta = np.empty((cache.n, 6), np.float64)
        self.done = 0

    def add(self, batch):
        n = len(batch.image_ids)
        data = memoryview(np.ascontiguousarray(batch.canvas)).cast("B")
        at, written = self.offset + self.done * self.cache.per_image, 0
        while written < len(data):  # pwrite may write less than asked
            written += os.pwrite(self.fd, data[written:], at + written)
        self.meta[self.done : self.done + n] = batch.meta
        self.done += n

    def commit(self):
        if self.done != self.cache.n:
            return self.discard()
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = None
        buf = _npy_bytes(self.meta)
        atomic_write_bytes(self.cache.meta_path, buf)
        os.replace(self.tmp, self.cache.inputs_path)

    def discard(self):
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
        try:
            os.unlink(self.tmp)
        except OSError:
            pass


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()
