"""Resumable, sha256-verified downloads.

Data lands in `<dest>.part` first; an interrupted transfer resumes from the bytes already there with an
HTTP Range request, and the file is renamed to `dest` only once it is known to be complete, so a half-downloaded
or corrupted file never sits under the final name. Complete means one of:

- the sha256 matches (when one is given: always required then);
- the server said how long the body is (Content-Length) and that many bytes arrived;
- a chunked body ended with its terminating chunk (a cut mid-chunk raises, and the bytes received are kept);
- for a body of unknown length (`Connection: close`, no Content-Length): a Range request for the bytes after the
  end is answered 416 (nothing more), or, where the server ignores Range, the caller's `complete` check (e.g.
  the archive's own structure, datasets/prepare.py) passes.

Exit codes (common/errors.py): a transfer cut short or not known to be complete -> RuntimeFailure (3), `.part`
kept for the rerun to resume; a complete file with the wrong sha256 -> InputError (2), `.part` deleted (a wrong
file cannot be resumed into a right one); a short file of unknown length with the wrong sha256 -> 3, `.part` kept.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from common.engine_cache import file_sha256
from common.errors import InputError, RuntimeFailure


class _Cut(Exception):
    """The transfer ended before the body did."""


def _hash_of(path: Path) -> hashlib._Hash:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h


def _partial_bytes(exc: http.client.IncompleteRead) -> bytes:
    """Every byte an IncompleteRead carries: http.client's chunked reader re-raises with the whole chunks read so
    far, the cut chunk's own bytes ride on the exception it chains from."""
    data = exc.partial or b""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, http.client.IncompleteRead) and cause is not exc:
        data += cause.partial or b""
    return data


def _receive(response, part: Path, resumed: bool, chunk: int):
    """Stream the body into `part`; returns (hash of the whole .part, bytes this time, length known?)."""
    h = _hash_of(part) if resumed else hashlib.sha256()
    expected = response.headers.get("Content-Length")
    chunked = bool(getattr(response, "chunked", False))
    got = 0
    with open(part, "ab" if resumed else "wb") as f:
        try:
            while block := response.read(chunk):
                f.write(block)
                h.update(block)
                got += len(block)
        except http.client.IncompleteRead as exc:
            block = _partial_bytes(exc)  # keep what arrived: the rerun resumes after it
            f.write(block)
            got += len(block)
            raise _Cut(f"connection closed mid-body after {got} bytes") from None
        finally:
            f.flush()
            os.fsync(f.fileno())
    if expected is not None and got < int(expected):  # the server closed early
        raise _Cut(f"connection closed after {got} of {expected} bytes")
    return h, got, expected is not None or chunked


def _more_after(url: str, size: int, timeout: float) -> bool | None:
    """For a body of unknown length: does the server have bytes after `size`? True / False, or None when it
    ignores Range requests (then nothing can be told)."""
    request = urllib.request.Request(url, headers={"Range": f"bytes={size}-"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return True if response.status == 206 else None
    except urllib.error.HTTPError as exc:
        return False if exc.code == 416 else None
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        return None


def _range_start(value: str | None) -> int | None:
    """The first byte of a `Content-Range: bytes S-E/T` header, or None."""
    try:
        return int(value.split()[1].split("-")[0]) if value else None
    except (IndexError, ValueError):
        return None


def _range_total(value: str | None) -> int | None:
    """T of `Content-Range: bytes */T` (a 416's), or None."""
    try:
        total = value.rsplit("/", 1)[1] if value else "*"
        return None if total == "*" else int(total)
    except (IndexError, ValueError):
        return None


def download(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    timeout: float = 60.0,
    chunk: int = 1 << 20,
    complete: Callable[[Path], bool] | None = None,
) -> Path:
    """Fetch `url` to `dest` (skipped when `dest` already has the expected hash); returns `dest`.

    `complete(path) -> bool`: the caller's own completeness test of a file, used only for a body of unknown
    length from a server that ignores Range requests and when no sha256 is given."""
    dest = Path(dest)
    if dest.exists() and sha256 and file_sha256(dest) == sha256.lower():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for path in (dest, part):  # appending to / replacing a link would write into a file the suite did not create
        if path.is_symlink():
            raise InputError(
                f"is a link (to {os.readlink(path)}): the suite never downloads through a link; remove it", path
            )
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url)
    if have:
        request.add_header("Range", f"bytes={have}-")

    def interrupted(reason) -> RuntimeFailure:
        return RuntimeFailure(
            f"download interrupted: {reason} ({url}); rerun to resume from "
            f"{part.stat().st_size if part.exists() else 0} bytes",
            dest,
        )

    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = bool(have) and response.status == 206  # otherwise the server ignored Range: start over
            start = _range_start(response.headers.get("Content-Range"))
            if resumed and start is not None and start != have:  # bytes from elsewhere would corrupt the file
                part.unlink(missing_ok=True)
                raise RuntimeFailure(
                    f"download failed: asked for bytes from {have}, the server sent bytes from "
                    f"{start} ({url}); the partial file was deleted: rerun to start over",
                    dest,
                )
            h, _, known = _receive(response, part, resumed, chunk)
    except urllib.error.HTTPError as exc:
        total = _range_total(exc.headers.get("Content-Range") if exc.headers else None)
        if exc.code == 416 and have and total is not None and total != have:
            part.unlink(missing_ok=True)  # longer than the file itself: not a prefix of it
            raise RuntimeFailure(
                f"download failed: the partial file has {have} bytes but the file has {total} "
                f"({url}); the partial file was deleted: rerun to start over",
                dest,
            ) from None
        if exc.code == 416 and have:  # nothing left to fetch: the .part is already complete
            h, known = _hash_of(part), True
        else:
            raise RuntimeFailure(f"download failed: HTTP {exc.code} {exc.reason} ({url})", dest) from None
    except _Cut as exc:
        raise interrupted(exc) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise interrupted(getattr(exc, "reason", None) or str(exc) or type(exc).__name__) from None
    size = part.stat().st_size
    more = None if known else _more_after(url, size, timeout)
    if more is False:
        known = True
    actual = h.hexdigest()
    if sha256:
        if actual != sha256.lower():
            if known:
                part.unlink(missing_ok=True)  # a complete wrong file cannot be resumed into a right one
                raise InputError(f"checksum mismatch for {url}: expected sha256 {sha256.lower()}, got {actual}", dest)
            raise RuntimeFailure(
                f"download incomplete: {size} bytes of unknown total so far (no Content-Length) "
                f"and the sha256 does not match yet ({url}); rerun to resume from {size} bytes",
                dest,
            )
    elif not known:
        if more is True or complete is None or not complete(part):
            if more is True:
                why = "the server has more bytes"
            elif complete is None:
                why = (
                    "the server sent no length and ignores Range requests, so completeness cannot be told: give "
                    "its sha256"
                )
            else:
                why = "the file is not complete"
            raise RuntimeFailure(
                f"download incomplete: {size} bytes of unknown total (no Content-Length), {why} "
                f"({url}); rerun to resume from {size} bytes",
                dest,
            )
    os.replace(part, dest)
    return dest
