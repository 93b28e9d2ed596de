"""Archive extraction that refuses members escaping the target directory.

Absolute paths, `..` components and symbolic / hard links pointing outside the target are rejected before
anything is written, so a hostile or corrupted archive cannot overwrite files elsewhere.
"""
from __future__ import annotations

import os
import tarfile
import zipfile
from pathlib import Path

from .errors import InputError


def _inside(root: Path, name: str) -> bool:
    if os.path.isabs(name) or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return False
    target = os.path.normpath(os.path.join(root, name))
    return target == str(root) or target.startswith(str(root) + os.sep)


def _check(archive: Path, root: Path, name: str, what: str = "path"):
    if not _inside(root, name):
        raise InputError(f"refusing to extract member {name!r}: its {what} points outside {root}", archive)


def extract(archive: str | Path, target: str | Path) -> Path:
    """Extract a .zip or tar archive (any compression) into `target`; returns `target`."""
    archive, root = Path(archive), Path(target).resolve()
    root.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    _check(archive, root, info.filename)
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:  # unix symlink stored in a zip
                        raise InputError(f"refusing to extract symbolic link {info.filename!r}", archive)
                zf.extractall(root)
            return root
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                for m in tf.getmembers():
                    _check(archive, root, m.name)
                    if m.issym():
                        _check(archive, root, os.path.join(os.path.dirname(m.name), m.linkname), "link")
                    elif m.islnk():
                        _check(archive, root, m.linkname, "link")
                    elif not (m.isfile() or m.isdir()):
                        raise InputError(f"refusing to extract special file {m.name!r}", archive)
                tf.extractall(root, filter="data")
            return root
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise InputError(f"corrupt or truncated archive: {exc}", archive) from None
    raise InputError("not a zip or tar archive", archive)
