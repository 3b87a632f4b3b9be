"""Reading files of a watched folder without leaving it: symlinks must point inside the folder.

Anyone who can drop a file into a docs folder or the inbox could otherwise drop a link to ``/etc/passwd``
and have it indexed and quoted in prompts. The folder is a trust boundary: a link is followed only when its
resolved target is inside the resolved folder (or the caller opted in, ``follow_outside``). The check is
done twice: once when listing (for a clear reason) and again on the opened file descriptor, so a link swapped
between the two is caught too.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

OUTSIDE = "symlink outside the folder"


class UnsafePathError(OSError):
    """A file that must not be read: it leads outside its folder or is not a regular file."""


def path_problem(path: Path, root: Path, follow_outside: bool = False) -> str | None:
    """Why ``path`` (an entry under the resolved folder ``root``) must not be read; ``None`` when it may be.

    Reasons: a symlink outside the folder, a symlink loop, a broken symlink, a symlink to a folder (folders
    are never followed), not a regular file (a FIFO would block the run forever).
    """
    try:
        st = path.lstat()
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if stat.S_ISLNK(st.st_mode):
        try:
            target = path.resolve(strict=True)
        except RuntimeError:  # Python < 3.13 reports a loop this way
            return "symlink loop"
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "symlink loop"
            if exc.errno == errno.ENOENT:
                return "broken symlink (its target does not exist)"
            return f"unreadable symlink ({exc.strerror or exc})"
        if not follow_outside and not target.is_relative_to(root):
            return f"{OUTSIDE} (it points to {target})"
        try:
            st = target.stat()
        except OSError as exc:
            return f"unreadable ({exc.strerror or exc})"
        if stat.S_ISDIR(st.st_mode):
            return "symlink to a folder (folders are not followed)"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    return None


def read_inside(path: Path, root: Path, follow_outside: bool = False) -> tuple[bytes, os.stat_result]:
    """The bytes and stat of ``path``, refused (:class:`UnsafePathError`) unless it is a regular file in ``root``.

    The resolved path is opened without following a last-moment link and non-blocking (a FIFO cannot hang the
    run); where ``/proc/self/fd`` exists, the opened file's real path is checked against ``root`` again.
    """
    real = os.path.realpath(path)
    fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(errno.EINVAL, "not a regular file")
        if not follow_outside:
            opened = _fd_path(fd) or real
            if not Path(opened).is_relative_to(root):
                raise UnsafePathError(errno.EACCES, f"{OUTSIDE} (it points to {opened})")
        return fh.read(), st


def _fd_path(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
