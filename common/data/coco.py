"""COCO image sets: resolve the dataset layout, read the annotation file, decode + preprocess in workers."""

from __future__ import annotations

import contextlib
import json
import mmap
import multiprocessing as mp
import os
import re
import signal
import stat
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from common.data.coco_checks import COCO_CHECKS, check_coco, drop_zero_area
from common.data.preprocess import Preprocessor
from common.errors import ConfigError, InputError
from common.fsaccess import check_readable_dir, file_kind, is_dir, is_file, path_stat

if TYPE_CHECKING:  # imported where a cache is asked for: a run without one never loads it
    from common.data.input_cache import InputCache


@dataclass(frozen=True)
class ImageItem:
    image_id: int
    path: str
    width: int
    height: int
    # (size, mtime_ns) when image_items found the file: the input cache's key reuses it (no second stat per image)
    stamp: tuple | None = field(default=None, compare=False)


class Batch:
    """image_ids [n] int64, inputs [n, 3, H, W] float32, meta [n, 6] float64 (see preprocess.META_FIELDS).

    A batch read from the input cache (or decoded to be stored there) holds letterboxed uint8 canvases and
    normalises them into `inputs` when they are first asked for, in the thread that asks: the stream threads
    of an accuracy run, outside the loader, so normalising runs in parallel with the next batch's reading."""

    __slots__ = ("image_ids", "meta", "canvas", "_inputs", "_normalize")

    def __init__(
        self,
        image_ids: np.ndarray,
        inputs: np.ndarray | None,
        meta: np.ndarray,
        canvas: np.ndarray | None = None,
        normalize=None,
    ):
        self.image_ids, self.meta, self._inputs = image_ids, meta, inputs
        self.canvas, self._normalize = canvas, normalize

    @property
    def inputs(self) -> np.ndarray:
        """The batch's float32 network inputs, normalised from the uint8 canvases the first time they are asked for."""
        if self._inputs is None:
            self._inputs = self._normalize(self.canvas, self.meta)
            self.canvas = None  # its buffer (a loader's, or the cache's mapping) is not needed any more
        return self._inputs


class InputBuffers:
    """float32 batch buffers reused once no view of them is left. A fresh np.empty of a batch (39 MB at
    32x3x320x320) is a mapping of its own, and writing it faults in every page again (~10k faults a batch)."""

    def __init__(self, pre: Preprocessor, batch_size: int):
        self.pre, self.shape = pre, (batch_size, 3, pre.height, pre.width)
        self.free: list = []
        self.lock = threading.Lock()

    def _give_back(self, buf):
        with self.lock:
            self.free.append(buf)

    def normalize(self, canvas: np.ndarray, meta: np.ndarray) -> np.ndarray:
        """The float32 inputs of uint8 canvases [n, 3, H, W], in a reused buffer."""
        with self.lock:
            buf = self.free.pop() if self.free else None
        if buf is None:
            buf = bytearray(int(np.prod(self.shape)) * 4)
        # numpy makes this array the base of every view taken from it: the buffer returns once all are gone
        raw = np.frombuffer(buf, np.float32)
        weakref.finalize(raw, self._give_back, buf)
        out = raw.reshape(self.shape)[: len(canvas)]
        del raw
        return self.pre.normalize(canvas, meta, out)


@dataclass(frozen=True)
class DatasetRequest:
    """Where a run's images and annotations are, as asked (the dataset stage's request; None: not given)."""

    dataset_dir: str | None = None
    annotation: str | None = None  # None: the variant's evaluation.annotation
    images_dir: str | None = None
    max_images: int | None = None  # None: every image of the annotation file

    def resolve(self, default_annotation: str) -> tuple[Path, Path]:
        """(images dir, annotation file): the asked annotation, else `default_annotation` (the variant's)."""
        return resolve_dataset(self.dataset_dir, self.annotation or default_annotation, self.images_dir)

    def images(self) -> Path:
        """The images dir alone (a run that needs pixels but no annotation)."""
        return resolve_images_dir(self.dataset_dir, self.images_dir)


def resolve_dataset(dataset_dir: str | None, annotation: str, images_dir: str | None = None) -> tuple[Path, Path]:
    """(images dir, annotation file) from a COCO-layout dataset dir and/or explicit paths.

    Layouts accepted under dataset_dir: images/val2017 (the public recipes') or val2017 (COCO's own);
    annotations/<annotation>. An absolute or existing annotation path is used as it is.
    """
    ann = Path(annotation)
    if not ann.is_absolute() and not is_file(ann, "annotation file"):
        if not dataset_dir:
            raise ConfigError(
                f"annotation '{annotation}' not found and no dataset dir given (set DATASETS_DIR or pass --dataset-dir)"
            )
        ann = Path(dataset_dir) / "annotations" / annotation
    if not is_file(ann, "annotation file"):
        raise InputError(
            "annotation file not found (pass --ann with a file under <dataset>/annotations or a path)", ann
        )
    return resolve_images_dir(dataset_dir, images_dir), ann


def resolve_images_dir(dataset_dir: str | None, images_dir: str | None = None) -> Path:
    """The images dir of a COCO layout (images/val2017 or val2017 under dataset_dir), or images_dir as given."""
    if images_dir:
        images = Path(images_dir)
    elif dataset_dir:
        candidates = [Path(dataset_dir) / "images" / "val2017", Path(dataset_dir) / "val2017"]
        images = next((c for c in candidates if is_dir(c, "images directory")), candidates[0])
    else:
        raise ConfigError("no images dir: set DATASETS_DIR, or pass --dataset-dir or --images-dir")
    if not is_dir(images, "images directory"):
        raise InputError("images directory not found", images)
    check_readable_dir(images, "images directory")
    return images


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def folder_items(images_dir: Path, n: int | None) -> list[ImageItem]:
    """The first n images (all when None) of a folder by file name, for a run that needs pixels but no annotations
    (a performance run times real images, a LoadGen performance run queries them). The id is the file name's
    number (COCO's naming), else its rank; width and height are 0: nothing that reads these items evaluates them."""
    names = sorted(p.name for p in Path(images_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:n]
    if not names:
        raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the images dir", images_dir)
    return [
        ImageItem(int(Path(name).stem) if Path(name).stem.isdigit() else i, str(Path(images_dir) / name), 0, 0)
        for i, name in enumerate(names)
    ]


# A polygon segmentation: a list of lists of numbers only. Parsing its numbers is three quarters of json.loads'
# time on val2017 files, and a box evaluation never reads them. A number-only character class cannot run past a
# string or an object, so only whole polygon values match (an RLE object or an empty list is left as it is).
_POLYGONS = re.compile(rb'"segmentation"\s*:\s*\[\s*\[[-+0-9.eE,\s\[\]]*\]\s*\]')


def read_annotations(ann_file: str | Path, polygons: bool = True, remember=None) -> dict:
    """Parse and check a COCO detection annotation file (common/data/coco_checks.py): every defect is an InputError
    naming the file and the field, before any inference. polygons=False: polygon segmentations are read as empty
    lists (a box-only reader; ~4x faster on val2017 files). remember: an EngineCache where a file that passed
    the checks is remembered, parsed, by its bytes' sha256 (EngineCache.parsed_file, which also remembers that
    sha256 by the file's stamps): the same file is then neither read, parsed nor checked field by field again
    (5 ms for the 350-image subset, ~0.3 s for val2017, against ~1 ms); a changed byte parses and checks it again."""
    ann_file = Path(ann_file)

    def parse_and_check(raw: bytes):
        data = _parse_json(raw, polygons, ann_file)
        check_coco(data, ann_file)  # a refusal raises: never remembered
        return data

    if remember is None:
        try:
            with open(ann_file, "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise InputError(f"cannot read: {exc.strerror}", ann_file) from None
        return drop_zero_area(parse_and_check(raw), ann_file)
    version = f"checks {COCO_CHECKS}, polygons {polygons}"
    return drop_zero_area(remember.parsed_file("coco-annotations", ann_file, parse_and_check, version), ann_file)


def _parse_json(raw: bytes, polygons: bool, ann_file: Path) -> dict:
    try:
        try:
            return json.loads(raw if polygons else _POLYGONS.sub(b'"segmentation":[]', raw))
        except (json.JSONDecodeError, UnicodeDecodeError):
            if polygons:
                raise
            return json.loads(raw)  # the defect's position in the file as it is, not in the shortened text
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"not valid JSON ({exc})", ann_file) from None


def image_items(annotations: dict, images_dir: Path, max_images: int | None = None) -> list[ImageItem]:
    """The images of the annotation file, in id order, checked to exist on disk."""
    # str(images_dir / name) costs ~3 us an image in pathlib; for a plain file name (no "/", not "." or "") it
    # is the directory, a "/" and the name, which string concatenation gives directly
    base = str(images_dir)
    prefix = "" if base == "." else base.rstrip("/") + "/"

    def path_of(name):
        if isinstance(name, str) and name and name != "." and "/" not in name:
            return prefix + name
        return str(images_dir / name)

    images = sorted(annotations["images"], key=lambda im: im["id"])
    if max_images:
        images = images[:max_images]
    if not images:
        raise InputError("the dataset has no images", images_dir)
    items, missing, odd = [], [], []
    for img in images:
        path = path_of(img["file_name"])
        # path_stat: an image the process may not reach (a directory without search permission) is a permission
        # fault naming that directory, not a "missing" image
        st = path_stat(path, "image")
        if st is None:
            missing.append(path)
        elif not stat.S_ISREG(st.st_mode):  # a FIFO would block the decoder forever; it is not "missing" either
            odd.append((path, file_kind(st)))
        else:
            items.append(ImageItem(img["id"], path, img["width"], img["height"], (st.st_size, st.st_mtime_ns)))
    if missing:
        raise InputError(
            f"{len(missing)} image(s) listed in the annotation file are missing, e.g. {missing[0]}", images_dir
        )
    if odd:
        raise InputError(
            f"{len(odd)} image(s) listed in the annotation file are not regular files, e.g. {odd[0][0]} ({odd[0][1]})",
            images_dir,
        )
    return items


def jpeg_is_truncated(data: bytes) -> bool:
    """Whether a JPEG ends before its end-of-image marker (FFD9).

    The header segments are skipped by their lengths (an EXIF thumbnail in APP1 has its own FFD9), then the
    marker is searched in the scan data, where a literal FF is always stuffed (FF00) so FFD9 cannot occur by
    chance. Bytes after the marker (camera trailers, padding) are allowed: decoders ignore them. A header
    that is not a sequence of markers is left to the decoder to refuse.
    """
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return False  # damaged, not truncated: the decoder says so
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:
            return False
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == 0xDA:  # start of scan: the rest is entropy-coded data (and later scans)
            # searched from the end, where the marker is: the same answer without scanning the whole scan data
            return data.rfind(b"\xff\xd9", i + 2 + length) == -1
        i += 2 + length
    return True


# IMREAD_IGNORE_ORIENTATION: COCO boxes refer to the stored pixels, so an EXIF orientation tag must not rotate
# the image (plain IMREAD_COLOR applies it).
_IMREAD_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


def read_image(path: str) -> np.ndarray:
    """Decode an image file to HxWx3 uint8 BGR by its content, not its extension (PNG named .jpg works;
    grayscale and CMYK are converted by OpenCV), in its stored orientation."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise InputError(f"cannot read image: {exc.strerror}", path) from None
    # OpenCV decodes a truncated JPEG with only a warning, filling the missing rows with grey, which
    # would silently lower the AP: a JPEG's scan data must reach its end-of-image marker.
    if data[:2] == b"\xff\xd8" and jpeg_is_truncated(data):
        raise InputError("truncated JPEG (no end-of-image marker)", path)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), _IMREAD_FLAGS) if data else None
    if img is None:
        raise InputError("cannot decode image (corrupt, truncated or not an image)", path)
    return img


_worker_pre: Preprocessor | None = None
# Decoded inputs travel from worker processes through slots of a shared anonymous mapping made before the
# fork, not through pickles on a pipe: at 1.2 MB an image (320x320) pickling cost more than decoding.
_worker_slots: np.ndarray | None = None


def _die_with_parent(parent_pid: int, from_main_thread: bool):
    """Make this worker end when the run's process ends, even by kill -9 (which runs no clean-up): a worker
    left behind would hold the run's stdout/stderr open, and a CI log reader waiting for EOF would hang.
    Linux: the kernel sends SIGKILL on the parent's death (PR_SET_PDEATHSIG). Elsewhere: a thread that
    watches the parent id (also when the pool was made by another thread: the kernel signal follows the
    death of the forking thread, not of the process)."""
    try:
        if not from_main_thread:
            raise OSError("the pool was not forked by the main thread")
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # 1 = PR_SET_PDEATHSIG
            raise OSError(ctypes.get_errno(), "prctl")
    except (OSError, AttributeError):

        def watch():
            while os.getppid() == parent_pid:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the watch was set up
        os._exit(1)


# Held back while workers are forked and until each has set its own handlers (below): a worker that took one
# with the parent's handler (the CLI's raises KeyboardInterrupt) before multiprocessing's own code caught it would
# unwind the parent's copied stack, running the run's clean-up and messages a second time, as if it were the run.
WORKER_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def signals_held():
    """Ctrl-C and SIGTERM wait (pending, not lost) while this thread forks workers."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _init_worker(
    pre: Preprocessor, own_process: bool = True, parent_pid: int | None = None, from_main_thread: bool = False
):
    global _worker_pre
    _worker_pre = pre
    if not own_process:
        return
    # Ctrl-C / SIGTERM are handled once, by the parent, which then terminates the pool quietly.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_SIGNALS)  # held since the fork (signals_held)
    if parent_pid is not None:
        _die_with_parent(parent_pid, from_main_thread)


def _load_one(item: ImageItem, out: np.ndarray | None = None, canvas: bool = False):
    """(input, meta) of one image: the float32 network input, or with `canvas` the uint8 letterboxed canvas
    (Preprocessor.letterbox: what the input cache stores)."""
    img = read_image(item.path)
    if item.width and img.shape[:2] != (item.height, item.width):  # 0: a folder's image, no annotation to agree with
        raise InputError(
            f"image is {img.shape[1]}x{img.shape[0]} but the annotation file says {item.width}x{item.height}", item.path
        )
    pre = _worker_pre
    assert pre is not None, "the loader's process initialiser sets the preprocessor"
    return pre.letterbox(img, out) if canvas else pre(img, out)


def _load_into_slot(item: ImageItem, slot: int, canvas: bool = False) -> np.ndarray:
    """In a worker: decode + preprocess into shared slot `slot`; only the geometry row goes back."""
    slots = _worker_slots
    assert slots is not None, "slots exist (inherited by fork) whenever a slot index is sent"
    return _load_one(item, slots[slot], canvas)[1]


def _shared_slots(count: int, shape: tuple, dtype=np.float32) -> np.ndarray:
    size = count * int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer(mmap.mmap(-1, size), dtype).reshape(count, *shape)


# An input cache's pages are let go once they are this many batches behind the batch being handed out.
RELEASE_BATCHES_BEHIND = 8


class BatchLoader:
    """Preprocessed batches in item order. With workers > 0, decoding runs in worker processes and overlaps
    whatever the caller does with the previous batch.

    The workers are forked when the loader is created: create it before anything starts runtime thread pools
    (an inference session), since forking a process that runs such threads can deadlock the child, while
    fork keeps worker start-up and hand-over cheap. At most `prefetch` decoded images wait in memory.

    With an input cache the loader works on uint8 canvases (Preprocessor.letterbox): read from the cache, or
    decoded and stored there, and normalised by each batch when its inputs are first asked for. The cache's
    size is stated and its space reserved when the loader is made: a disk that cannot hold it is refused then
    (ConfigError, exit 2), before any work.
    """

    def __init__(
        self,
        items: list[ImageItem],
        pre: Preprocessor,
        batch_size: int,
        workers: int = 1,
        progress: bool = False,
        desc: str = "images",
        cache_dir: str | None = None,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        self.items, self.pre, self.batch_size, self.progress, self.desc = items, pre, batch_size, progress, desc
        # never more slots than images: a huge --bs on a small set would otherwise map gigabytes for nothing
        self.prefetch = max(1, min(len(items), max(4 * workers, 2 * batch_size)))
        self.pool = None
        self.cache: InputCache | None = None
        self.cached: tuple[np.ndarray, np.ndarray] | None = None
        self.writer = None
        if cache_dir:
            from common.data.input_cache import InputCache

            self.cache = InputCache(cache_dir, items, pre)
            self.cached = self.cache.lookup()
            if self.cached is None:
                self.writer = self._cache_writer()
        # decoding produces uint8 canvases only for the cache: the float32 input is then made from the canvas
        self.canvas = self.writer is not None
        self.buffers = InputBuffers(pre, max(1, min(batch_size, len(items)))) if self.cache is not None else None
        self.slots: np.ndarray | None = None
        if workers > 0 and self.cached is None:
            global _worker_slots
            fork = "fork" in mp.get_all_start_methods()
            if fork:  # inherited by the workers forked below
                self.slots = _worker_slots = _shared_slots(
                    self.prefetch, (3, pre.height, pre.width), np.uint8 if self.canvas else np.float32
                )
            ctx = mp.get_context("fork" if fork else "spawn")
            from_main = threading.current_thread() is threading.main_thread()
            with signals_held():
                self.pool = ProcessPoolExecutor(
                    workers, mp_context=ctx, initializer=_init_worker, initargs=(pre, True, os.getpid(), from_main)
                )
                self.pool.submit(int).result()  # starts (forks) every worker now

    def _pooled(self) -> Iterator:
        """(input, meta) per item in order; with shared slots the input is a view of a slot that stays valid
        until the next item is asked for."""
        window: deque = deque()
        todo = iter(self.items)
        free = deque(range(self.prefetch))

        def submit(item):
            if self.slots is None:
                window.append((self.pool.submit(_load_one, item, None, self.canvas), None))
            else:
                slot = free.popleft()
                window.append((self.pool.submit(_load_into_slot, item, slot, self.canvas), slot))

        for item in todo:
            submit(item)
            if len(window) >= self.prefetch:
                break
        while window:
            future, slot = window.popleft()
            result = future.result()
            if slot is None:
                yield result
            else:
                assert self.slots is not None  # a slot index is only handed out when the slots exist
                yield self.slots[slot], result
                free.append(slot)
            following = next(todo, None)
            if following is not None:
                submit(following)

    def _batch(self, image_ids: np.ndarray, inputs: np.ndarray, meta: np.ndarray) -> Batch:
        """A batch of float32 inputs, or of uint8 canvases normalised when first asked for."""
        if inputs.dtype == np.uint8:
            assert self.buffers is not None  # uint8 canvases come only from the input cache, which has buffers
            return Batch(image_ids, None, meta, inputs, self.buffers.normalize)
        return Batch(image_ids, inputs, meta)

    def __iter__(self) -> Iterator[Batch]:
        if self.cache is not None and self.cached is not None:
            inputs, meta = self.cached
            ids = np.array([it.image_id for it in self.items], np.int64)
            behind = RELEASE_BATCHES_BEHIND * self.batch_size
            for start in range(0, len(self.items), self.batch_size):
                end = start + self.batch_size
                yield self._batch(ids[start:end], inputs[start:end], meta[start:end])
                if start >= behind:  # normalised long ago (the run holds a few batches ahead at most)
                    self.cache.release(start - behind, start - behind + self.batch_size)
            return
        writer, self.writer = self.writer, None
        try:
            for batch in self._decoded():
                if writer is not None:
                    try:
                        writer.add(batch)
                    except OSError as exc:  # a file system without fallocate filled up: the run goes on
                        self._no_cache(exc)
                        writer.discard()
                        writer = None
                yield batch
                del batch  # not held while the next one decodes: the shared loader may then reuse its buffer
            if writer is not None:
                try:
                    writer.commit()
                except OSError as exc:
                    self._no_cache(exc)
                    writer.discard()
                writer = None
        finally:
            if writer is not None:
                writer.discard()

    def _cache_writer(self):
        """The entry's space reserved now (its size printed): a disk too small for it is refused before any work
        (ConfigError naming the directory, the bytes needed and free). A cache dir that cannot be written
        (read-only) only costs the decoding: a warning, and the run goes on without it."""
        try:
            return self.cache.writer()
        except OSError as exc:
            self._no_cache(exc)
            return None

    def _no_cache(self, exc: OSError):
        import sys

        root = self.cache.root if self.cache is not None else "the input cache"
        print(
            f"warning: {root}: cannot store the input cache ({exc.strerror or exc}); the run goes on without it",
            file=sys.stderr,
        )

    def _decoded(self) -> Iterator[Batch]:
        if self.pool is not None:
            results = self._pooled()
        else:
            _init_worker(self.pre, own_process=False)
            results = (_load_one(item, None, self.canvas) for item in self.items)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(self.items), desc=self.desc, unit="img", dynamic_ncols=True)
        pre = self.pre
        try:
            for start in range(0, len(self.items), self.batch_size):
                chunk = self.items[start : start + self.batch_size]
                inputs = np.empty((len(chunk), 3, pre.height, pre.width), np.uint8 if self.canvas else np.float32)
                meta = np.empty((len(chunk), 6), np.float64)
                for i in range(len(chunk)):
                    inputs[i], meta[i] = next(results)
                yield self._batch(np.array([it.image_id for it in chunk], np.int64), inputs, meta)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()

    def close(self):
        """Stop the decoding workers and drop an input-cache entry that was never completed (nothing half-written)."""
        if self.writer is not None:  # made but never iterated: nothing is published
            self.writer.discard()
            self.writer = None
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def iter_batches(
    items: list[ImageItem],
    pre: Preprocessor,
    batch_size: int,
    workers: int = 1,
    progress: bool = False,
    desc: str = "images",
) -> Iterator[Batch]:
    with BatchLoader(items, pre, batch_size, workers, progress, desc) as loader:
        yield from loader
