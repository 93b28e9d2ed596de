"""Engine artifacts cached under a key of everything that changes them.

The key hashes the ONNX content (not its name), the backend, precision, input shapes, the runtime / SDK
version and any build options. Engines are built under a temporary name and renamed into place when
complete, with a sidecar recording their own sha256, so a partial or corrupted file is never reused.
A lock per key keeps two concurrent runs from building the same engine twice.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import hashlib
import json
import marshal
import os
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common.build_progress import describe_build, last_build_s, timed_build
from common.errors import InputError, RuntimeFailure
from common.fsaccess import shared_file_mode


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """The file's sha256 hex digest, read in chunks; an InputError naming the file when it is unreadable."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", path) from None
    return h.hexdigest()


# A file changed twice within the time stamps' granularity (a second on some file systems) could keep the same
# stamps: a file touched this recently is hashed and not remembered (git's "racy" rule).
_MEMO_SETTLED_NS = 2_000_000_000


def file_sha256_memo(path: str | Path, memo_dir: str | Path | None) -> str:
    """file_sha256, remembered under memo_dir by the file's identity and change stamps (device, inode, size,
    mtime and ctime in ns; ctime moves with every change and no user can set it back), so a model is hashed
    once rather than at every run (~1 ms a MB: 4 ms for RTMDet-nano, 0.1-0.2 s for an RT-DETR). The memo is
    only a cache: one that cannot be read or written is skipped and the file is hashed."""
    try:
        st = os.stat(path)
    except OSError:
        return file_sha256(path)  # its InputError names the file
    if memo_dir is None:
        return file_sha256(path)
    stamp = f"{os.path.realpath(path)}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}"
    entry = Path(memo_dir) / f"{hashlib.sha256(stamp.encode()).hexdigest()[:40]}.sha256"
    try:
        digest = entry.read_text()
        if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
            return digest
    except (OSError, UnicodeDecodeError):
        pass
    digest = file_sha256(path)
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _MEMO_SETTLED_NS:
        with _suppress_oserror():
            atomic_write_bytes(entry, digest.encode(), durable=False)
    return digest


_MISSING = object()


def _read_marshal(entry: Path) -> Any:
    """A remembered parse (EngineCache.parsed), or _MISSING when absent, damaged or unreadable."""
    try:
        blob = entry.read_bytes()
        stored = memoryview(blob)[4:]
        if len(blob) > 4 and int.from_bytes(blob[:4], "little") == zlib.crc32(stored):
            return marshal.loads(stored)
    except (OSError, ValueError, EOFError, TypeError):
        pass
    return _MISSING


def _write_marshal(entry: Path, value: Any) -> Any:
    """Remember `value` under `entry` (skipped when marshal cannot write it exactly or the disk refuses)."""
    try:
        body = marshal.dumps(value)
    except ValueError:  # a type marshal does not write (a YAML date): parsed at every run, as before
        return value
    with _suppress_oserror():
        atomic_write_bytes(entry, zlib.crc32(body).to_bytes(4, "little") + body, durable=False)
    return value


def cache_key(onnx_sha256: str, **parts) -> str:
    """32 hex digits naming a build: the ONNX's sha256 with every part that changes the result (sorted JSON)."""
    payload = json.dumps({"onnx": onnx_sha256, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = True):
    """Write a file so that readers see either the old content or the complete new one. `durable` also syncs
    it to disk before the rename (survives a power cut, not only a killed process)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), shared_file_mode())  # as open() would make it, not mkstemp's 0600
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with _suppress_oserror():
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, data, indent: int = 2):
    """JSON (NaN allowed, unknown types as strings) written atomically: the one JSON writer of reports, baselines
    and run metadata."""
    atomic_write_bytes(path, (json.dumps(data, indent=indent, allow_nan=True, default=str) + "\n").encode())


# A cache directory that cannot take the engine (full, over quota, read-only, not permitted): the run builds the
# engine outside it rather than failing (get_or_build)
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
CACHE_WRITE_ERRNOS = DISK_FULL_ERRNOS | {errno.EROFS, errno.EACCES, errno.EPERM}


class _suppress_oserror:
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        return exc_type is not None and issubclass(exc_type, OSError)


class EngineCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def remembered(self, kind: str, key: str, compute: Callable[[], object]) -> tuple[object, bool]:
        """(compute()'s JSON answer, True when it was remembered), kept under <root>/<kind>/<key>.json for an
        analysis whose answer is fixed by what the key holds (a file's content, the inputs, the settings, the
        code's version). Only a cache: an entry that cannot be read is computed again, one that cannot be
        written is skipped."""
        entry = self.root / kind / f"{key}.json"
        try:
            return json.loads(entry.read_text()), True
        except (OSError, ValueError):
            pass
        value = compute()
        with _suppress_oserror():
            atomic_write_json(entry, value)
        return value, False

    def parsed(self, kind: str, data: bytes, parse: Callable[[], Any], version: str) -> Any:
        """parse()'s answer for these exact bytes (a spec, an annotation file), remembered in marshal's format
        under <root>/<kind>/: loading it is 4-10x faster than parsing JSON or YAML again, at every run's
        start. The key is the bytes' sha256, `version` (the parser's and its checks': change it when they
        change), and marshal's and Python's versions. A checksum guards every entry: one that is damaged or
        cannot be read is parsed again, one that cannot be written is skipped. A parse that raises (a refused
        file) is never remembered; nor is an answer marshal cannot write exactly."""
        entry = self._parsed_entry(kind, hashlib.sha256(data).hexdigest(), version)
        value = _read_marshal(entry)
        return value if value is not _MISSING else _write_marshal(entry, parse())

    def parsed_file(self, kind: str, path: Path, parse: Callable[[bytes], Any], version: str) -> Any:
        """parsed() of a file's bytes, keyed by the sha256 file_sha256_memo remembers for the file: a file
        remembered unchanged is neither read nor hashed (a 5000-image annotation file: ~7 ms of each run's
        start). On a miss the bytes read are hashed again for the key, so a file changing in between is
        remembered under its new content. An unreadable file is an InputError naming it."""
        value = _read_marshal(self._parsed_entry(kind, file_sha256_memo(path, self.root / "sha256"), version))
        if value is not _MISSING:
            return value
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read: {exc.strerror}", path) from None
        return _write_marshal(self._parsed_entry(kind, hashlib.sha256(data).hexdigest(), version), parse(data))

    def _parsed_entry(self, kind: str, sha256: str, version: str) -> Path:
        key = cache_key(sha256, kind=kind, version=version, marshal=marshal.version, python=list(sys.version_info[:2]))
        return self.root / kind / f"{key}.marshal"

    def paths(self, key: str, suffix: str) -> tuple[Path, Path]:
        """(engine file, its JSON record) of a key."""
        return self.root / f"{key}{suffix}", self.root / f"{key}.json"

    def lookup(self, key: str, suffix: str) -> Path | None:
        """The cached engine, or None when absent, partial or not matching its recorded checksum."""
        engine, info = self.paths(key, suffix)
        try:
            recorded = json.loads(info.read_text())["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not engine.is_file() or file_sha256(engine) != recorded:
            return None
        return engine

    def get_or_build(self, key: str, suffix: str, build: Callable[[Path], None], describe: dict) -> tuple[Path, bool]:
        """(engine path, True if it came from the cache). `build(tmp_path)` writes the engine to tmp_path.

        A hit is served without taking the lock (engines and sidecars are published by rename and checked
        against their checksum), so a read-only cache (a CI cache mounted read-only) serves its engines; a
        miss there, or a cache that cannot take the engine (a full file system, errno 28), builds it outside the
        cache with a warning naming the dir (`_build_uncached`)."""
        if self.root.exists() and not self.root.is_dir():
            raise InputError("engine cache path is not a directory (--cache-dir / ENGINE_CACHE_DIR)", self.root)
        hit = self.lookup(key, suffix)
        if hit is not None:
            return hit, True
        try:
            return self._build_cached(key, suffix, build, describe)
        except OSError as exc:
            # the build's own errors say something about the cache only when it is the disk that is full (a
            # permission fault there is about what the build reads)
            if exc.errno not in (DISK_FULL_ERRNOS if getattr(exc, "from_build", False) else CACHE_WRITE_ERRNOS):
                raise
            return self._build_uncached(key, suffix, build, exc), False

    def _build_cached(self, key: str, suffix: str, build: Callable[[Path], None], describe: dict) -> tuple[Path, bool]:
        engine, info = self.paths(key, suffix)
        self.root.mkdir(parents=True, exist_ok=True)
        with self._key_lock(key):
            hit = self.lookup(key, suffix)  # built by another run while this one waited for the lock
            if hit is not None:
                return hit, True
            # holding the lock, any temp file of this key is what a killed build (kill -9) left behind
            for stale in [*self.root.glob(f".{key}.*.tmp"), *self.root.glob(f".{key}.*.tmp.*")]:
                with _suppress_oserror():
                    stale.unlink()
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{key}.", suffix=f"{suffix}.tmp")
            os.close(fd)
            try:
                what = describe_build(describe, suffix)
                try:
                    took = timed_build(build, Path(tmp), what, last_build_s(self.root, describe, suffix))
                except OSError as exc:
                    exc.from_build = True  # type: ignore[attr-defined]  # read by the errno filter above
                    raise
                digest = file_sha256(tmp)
                os.chmod(tmp, shared_file_mode())  # mkstemp's 0600 would hide a shared cache from other users
                # the sidecar first: it is the write that may still fail (a full disk); an engine without a
                # matching sidecar is a miss, and the rename below needs no space
                atomic_write_bytes(
                    info,
                    json.dumps(
                        {**describe, "key": key, "sha256": digest, "build_s": round(took, 3)}, indent=1, default=str
                    ).encode(),
                )
                os.replace(tmp, engine)
            except BaseException:
                with _suppress_oserror():
                    os.unlink(tmp)
                raise
            return engine, False

    @contextmanager
    def _key_lock(self, key: str):
        """The exclusive lock of one key, its file removed once the build is over (no empty `.lock` stays). A
        run that waited on a lock file removed meanwhile locks the new one instead: two runs never hold the
        locks of two different files of the same key at once."""
        path = self.root / f"{key}.lock"
        while True:
            lock = open(path, "a")
            try:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    print(
                        f"engine: waiting for another run that builds this engine (lock {path})",
                        file=sys.stderr,
                        flush=True,
                    )
                    fcntl.flock(lock, fcntl.LOCK_EX)
                if os.fstat(lock.fileno()).st_ino == os.stat(path).st_ino:
                    break
            except FileNotFoundError:  # removed by the run that held it: lock the next one
                pass
            except BaseException:
                lock.close()
                raise
            lock.close()
        try:
            yield
        finally:
            with _suppress_oserror():
                path.unlink()
            lock.close()

    def _build_uncached(self, key: str, suffix: str, build: Callable[[Path], None], exc: OSError) -> Path:
        """The engine built outside the cache, for this process only (the cache directory is full or not
        writable): the run goes on without caching, with a warning naming the cache and the errno. Where no
        temporary directory can hold the engine either, the build needed the cache: exit 3 naming it."""
        why = f"errno {exc.errno} {errno.errorcode.get(exc.errno or 0, '')}: {exc.strerror}"
        path = None
        try:
            tmp_dir = Path(tempfile.mkdtemp(prefix="suite-engine-"))
            atexit.register(shutil.rmtree, tmp_dir, True)
            path = tmp_dir / f"{key}{suffix}"
            print(
                f"warning: {self.root}: cannot write the engine cache ({why}); the engine is built in {tmp_dir} "
                "for this run only and not cached",
                file=sys.stderr,
            )
            build(path)
            return path
        except OSError as second:
            if second.errno not in DISK_FULL_ERRNOS and not (second.errno in CACHE_WRITE_ERRNOS and path is None):
                raise
            raise RuntimeFailure(
                f"cannot write the engine cache ({why}), and no temporary directory can hold the "
                f"engine either ({second.strerror}): free space or pass a writable --cache-dir",
                self.root,
            ) from None
