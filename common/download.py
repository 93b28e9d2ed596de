"""Resumable, sha256-verified downloads.

Data lands in `<dest>.part` first; an interrupted transfer resumes from the bytes already there with an
HTTP Range request, and the file is renamed to `dest` only after its sha256 matches, so a half-downloaded
or corrupted file never sits under the final name.
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from .engine_cache import file_sha256
from .errors import InputError, RuntimeFailure


def _hash_of(path: Path) -> "hashlib._Hash":
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h


def download(url: str, dest: str | Path, sha256: str | None = None, timeout: float = 60.0,
             chunk: int = 1 << 20) -> Path:
    """Fetch `url` to `dest` (skipped when `dest` already has the expected hash); returns `dest`."""
    dest = Path(dest)
    if dest.exists() and sha256 and file_sha256(dest) == sha256.lower():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url)
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = have and response.status == 206
            if not resumed:
                have = 0  # server ignored the Range header: start over
            expected = response.headers.get("Content-Length")
            h = _hash_of(part) if resumed else hashlib.sha256()
            got = 0
            with open(part, "ab" if resumed else "wb") as f:
                while block := response.read(chunk):
                    f.write(block)
                    h.update(block)
                    got += len(block)
                f.flush()
                os.fsync(f.fileno())
            if expected is not None and got < int(expected):  # the server closed early
                raise OSError(f"connection closed after {got} of {expected} bytes")
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to fetch: the .part is already complete
            h = _hash_of(part)
        else:
            raise RuntimeFailure(f"download failed: HTTP {exc.code} {exc.reason} ({url})", dest) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise RuntimeFailure(f"download interrupted: {reason} ({url}); rerun to resume from "
                             f"{part.stat().st_size if part.exists() else 0} bytes", dest) from None
    actual = h.hexdigest()
    if sha256 and actual != sha256.lower():
        part.unlink(missing_ok=True)  # a wrong file cannot be resumed into a right one
        raise InputError(f"checksum mismatch for {url}: expected sha256 {sha256.lower()}, got {actual}", dest)
    os.replace(part, dest)
    return dest
