"""Archive extraction that refuses members escaping the target directory or writing through links.

Absolute paths, `..` components and symbolic / hard links pointing outside the target are rejected before
anything is written, so a hostile or corrupted archive cannot overwrite files elsewhere. A link already on disk
inside the target (the target itself, or a directory on a member's path, e.g. the `annotations -> <user's COCO>`
link that `prepare.py --from-dir` makes) is never written through either: the suite did not create the directory
behind it, so extracting into it would change the user's own files. Every refusal names the member.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
from pathlib import Path

from common.errors import InputError


def _inside(root: Path, name: str) -> bool:
    if os.path.isabs(name) or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return False
    target = os.path.normpath(os.path.join(root, name))
    return target == str(root) or target.startswith(str(root) + os.sep)


def _check(archive: Path, root: Path, member: str, path: str | None = None, what: str = "path"):
    """Refuse `member` when `path` (its own name, or its link target) leads outside root."""
    path = member if path is None else path
    if not _inside(root, path):
        detail = (
            f"its path points outside {root}" if what == "path" else f"its link target {path!r} points outside {root}"
        )
        raise InputError(f"refusing to extract member {member!r}: {detail}", archive)


def _no_links_on_path(archive: Path, root: Path, member: str):
    """Refuse a member whose destination passes through a link that exists on disk below root."""
    parts = Path(os.path.normpath(member)).parts
    here = root
    for part in parts:
        here = here / part
        if here.is_symlink():
            raise InputError(
                f"refusing to extract member {member!r}: {here} is a link (to {os.readlink(here)}), "
                "and the suite never writes through a link into a directory it did not create; "
                "remove the link or choose another --out",
                archive,
            )
        if not here.is_dir():
            return


def _root(target: str | Path) -> Path:
    target = Path(target)
    if target.is_symlink():
        raise InputError(
            f"is a link (to {os.readlink(target)}): the suite never extracts through a link into a "
            "directory it did not create; remove the link or choose another --out",
            target,
        )
    return target.resolve()


def extract(archive: str | Path, target: str | Path) -> Path:
    """Extract a .zip or tar archive (any compression) into `target`; returns `target`."""
    archive = Path(archive)
    root = _root(target)
    root.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    _check(archive, root, info.filename)
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:  # unix symlink stored in a zip
                        raise InputError(f"refusing to extract symbolic link {info.filename!r}", archive)
                    _no_links_on_path(archive, root, info.filename)
                zf.extractall(root)
            return root
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                for m in tf.getmembers():
                    _check(archive, root, m.name)
                    if m.issym():
                        _check(archive, root, m.name, os.path.join(os.path.dirname(m.name), m.linkname), "link")
                    elif m.islnk():
                        _check(archive, root, m.name, m.linkname, "link")
                    elif not (m.isfile() or m.isdir()):
                        raise InputError(f"refusing to extract special file {m.name!r}", archive)
                    _no_links_on_path(archive, root, m.name)
                try:
                    tf.extractall(root, filter="data")
                except tarfile.FilterError as exc:  # tarfile's own safety filter: a refusal, not a corrupt file
                    member = getattr(exc, "tarinfo", None)
                    name = member.name if member is not None else "?"
                    raise InputError(f"refusing to extract member {name!r}: {exc}", archive) from None
            return root
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise InputError(f"corrupt or truncated archive: {exc}", archive) from None
    raise InputError("not a zip or tar archive", archive)


def archive_is_complete(path: str | Path) -> bool:
    """Whether a file is a whole zip (its central directory, at the very end, is there) or a tar that reads to
    its end: the completeness test of a download of unknown length (common/data/download.py)."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                zf.infolist()
            return True
        with tarfile.open(path) as tf:
            tf.getmembers()  # reads (and decompresses) to the end: a cut stream raises
        return True
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError):
        return False
