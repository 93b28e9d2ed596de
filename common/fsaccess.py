"""File-system checks that turn permission and layout faults into one clear InputError (exit 2) naming the
path, before any work is done, instead of a PermissionError / NotADirectoryError after it.

Root bypasses permission bits, so the checks probe with real operations (stat, creating a file) rather than
reading mode bits; os.access is only used to point at the directory that blocks a path.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from common.errors import InputError


def denied_dir(path: str | Path) -> Path | None:
    """The first directory on the way to `path` that this process may not search (x), or None."""
    path = Path(os.path.abspath(path))
    for parent in reversed(path.parents):
        if parent.is_dir() and not os.access(parent, os.X_OK):
            return parent
    return None


def _stat(path: str | Path, what: str):
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError:
        blocked = denied_dir(path)
        if blocked is not None:
            raise InputError(
                f"permission denied: cannot search this directory to reach the {what} {path}", blocked
            ) from None
        raise InputError(f"{what}: permission denied", path) from None
    except OSError as exc:
        raise InputError(f"{what}: cannot access ({exc.strerror})", path) from None


def path_stat(path: str | Path, what: str = "file") -> os.stat_result | None:
    """The stat of whatever is at `path` (a FIFO, a directory too), None when nothing is; a permission fault is
    an InputError naming the blocking directory."""
    return _stat(path, what)


def file_kind(st: os.stat_result) -> str:
    """What a non-regular file is, in words for a message."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(st.st_mode):
            return name
    return "not a regular file"


def file_stat(path: str | Path, what: str = "file") -> os.stat_result | None:
    """The stat of a regular file, None when there is none; a permission fault is an InputError naming the
    blocking directory."""
    st = _stat(path, what)
    return st if st is not None and stat.S_ISREG(st.st_mode) else None


def is_file(path: str | Path, what: str = "file") -> bool:
    """Path.is_file, except that a permission fault is an InputError naming the blocking directory."""
    return file_stat(path, what) is not None


def is_dir(path: str | Path, what: str = "directory") -> bool:
    """Path.is_dir, except that a permission fault is an InputError naming the blocking directory."""
    st = _stat(path, what)
    return st is not None and stat.S_ISDIR(st.st_mode)


def check_readable_dir(path: str | Path, what: str) -> None:
    """A directory whose entries are read by name (images): it needs search permission (x)."""
    if not os.access(path, os.X_OK):
        raise InputError(f"{what}: permission denied (no search permission on the directory)", path)


def current_umask() -> int:
    """The process umask, read without changing it (os.umask would race with other threads' file creation)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def shared_file_mode() -> int:
    """The mode open() would give a new file (0666 less the umask); mkstemp's files are always 0600."""
    return 0o666 & ~current_umask()


def ensure_writable_dir(path: str | Path, what: str) -> Path:
    """`path` is, or can be created as, a directory this process may write into; else InputError naming it
    (exit 2). Nothing is created: a run that then fails on its input leaves no empty dir behind. os.access
    answers for the process's real rights, capabilities included, and says EROFS on a read-only mount."""
    path = Path(path)
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not os.path.isdir(existing):
        if existing == path:
            raise InputError(f"{what} is not a directory", path)
        raise InputError(f"{what} cannot be created: {existing} is not a directory", path)
    if not os.access(existing, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only(existing) else "permission denied"
        where = "" if existing == path else f" (it would be created in {existing})"
        raise InputError(f"{what} is not writable: {reason}{where}", path)
    return path


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_output_file(path: str | Path, what: str) -> Path:
    """A file the run will write at its end: its directory must be writable and the path not a directory."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} is a directory, not a file path", path)
    ensure_writable_dir(path.parent if str(path.parent) else Path("."), f"directory of the {what}")
    return path  # an existing read-only file is fine: it is replaced by a rename
