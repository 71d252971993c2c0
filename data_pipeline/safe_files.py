"""The one way mmsa reads and writes a file under a folder it does not trust (an experiment folder, `--out`): no
symbolic link below the root is followed, so a link planted in the folder (report.md -> ~/.bashrc, a trial folder
-> /etc, error.txt -> a secret) can neither redirect a write nor be read and printed; a name read from a file
(`../../..`) is used only when it stays inside the folder it names.

How: each path is split into a root (followed: the user chose it, and ~/ray_results may well be a link to a bigger
disk) and the names below it, which are opened one by one relative to the folder opened before (openat with
O_NOFOLLOW), so swapping a folder for a link between a check and the open changes nothing. Files are read only when
they are regular files (never a FIFO that would block, never a device), and temporary files are created exclusively
(O_CREAT|O_EXCL|O_NOFOLLOW) under a random name, then renamed over the target; a rename replaces a link planted under
the target's name instead of writing through it.

Paths on object storage (pyarrow filesystems for s3://, gs://) have no links: they go through the filesystem as before.
A local pyarrow filesystem (a plain path, file://) is handled here.
"""
from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import Callable


class UnsafePath(OSError):
    """A path that leaves its root or passes through a symbolic link below it. An OSError, so the readers that
    treat an unreadable file as missing treat this one the same way."""


MAX_READ = 2**30  # no file mmsa reads whole is near this; a sparse 100 GB result.json must not fill the memory
_LINK_ERRNOS = (errno.ELOOP, errno.ENOTDIR)  # O_NOFOLLOW met a link; O_DIRECTORY met a file (or a link)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def is_local_fs(fs) -> bool:
    """Whether a pyarrow filesystem is the local one (its paths may hold links), or None (a plain path)."""
    return fs is None or getattr(fs, "type_name", "") == "local"


def _names(path: str | Path, root: str | Path | None) -> tuple[str, list[str]]:
    """The root's real path and the names from it to path; refuses a path that is not below the root."""
    path = os.path.abspath(os.fspath(path))
    if root is None:
        root = os.path.dirname(path)
    root_abs = os.path.abspath(os.fspath(root))
    root_real = os.path.realpath(root_abs)
    for prefix in (root_abs, root_real):
        if path == prefix:
            return root_real, []
        if path.startswith(prefix.rstrip("/") + "/"):
            names = path[len(prefix.rstrip("/")) + 1:].split("/")
            break
    else:
        raise UnsafePath(f"{path}: not inside {root_abs}")
    names = [n for n in names if n not in ("", ".")]
    if ".." in names:
        raise UnsafePath(f"{path}: leaves {root_abs} (..)")
    return root_real, names


def plain_name(name) -> list[str] | None:
    """The parts of a relative name (read from a file) that cannot leave the folder it is joined to: a non-empty
    string, not absolute, no `..`, no NUL, no backslash; None for any other."""
    if not isinstance(name, str) or not name or "\0" in name or "\\" in name or name.startswith("/") or "://" in name:
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return parts if parts and ".." not in parts else None


def inside(root: str | Path, name: str) -> Path | None:
    """root/name when the name (read from a file: a checkpoint folder, a path) stays inside root: relative, no `..`,
    no link below the root on the way; None otherwise."""
    parts = plain_name(name)
    if parts is None:
        return None
    target = Path(root, *parts)
    try:
        fd = _open_dirs(*_names(target, root), create=False)
    except OSError:
        return target if _missing_below(root, parts) else None
    os.close(fd)
    return target


def _missing_below(root, parts) -> bool:
    """A name that does not exist (yet) is inside as long as no existing part of it is a link."""
    p = Path(os.path.realpath(root))
    for part in parts:
        p = p / part
        if p.is_symlink():
            return False
        if not p.exists():
            return True
    return False


def _open_dirs(root_real: str, names: list[str], create: bool) -> int:
    """A descriptor of root/names..., opened without following a link below the root (creating folders if asked)."""
    if create:
        os.makedirs(root_real, exist_ok=True)  # the root is followed: the caller chose it
    fd = os.open(root_real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in names:
            try:
                new = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(name, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass  # made meanwhile (or a dangling link: the open below refuses that)
                new = _open_dir_no_link(name, fd, root_real)
            except OSError as e:
                if e.errno in _LINK_ERRNOS:
                    raise UnsafePath(f"{root_real}/{name}: a link or not a folder; not followed") from None
                raise
            os.close(fd)
            fd = new
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_dir_no_link(name: str, dir_fd: int, where: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in _LINK_ERRNOS:
            raise UnsafePath(f"{where}/{name}: a link or not a folder; not followed") from None
        raise


def _open_no_link(name: str, dir_fd: int, where) -> int:
    """A descriptor of the file name in dir_fd, for reading; never through a link (UnsafePath), never blocking (a
    FIFO opens at once; the caller checks the file's type on the descriptor)."""
    try:
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafePath(f"{where}: a link; not followed") from None
        raise


def _parent(path, root, create: bool) -> tuple[int, str]:
    root_real, names = _names(path, root)
    if not names:
        raise UnsafePath(f"{path}: the root itself is not a file")
    return _open_dirs(root_real, names[:-1], create), names[-1]


def read_bytes(path: str | Path, root: str | Path | None = None, limit: int | None = MAX_READ) -> bytes | None:
    """A regular file's bytes, or None when it is missing, unreadable, a link, a FIFO or device, outside root, or
    longer than limit bytes."""
    try:
        return open_read(path, root, limit)
    except OSError:
        return None


def open_read(path: str | Path, root: str | Path | None = None, limit: int | None = MAX_READ) -> bytes:
    """read_bytes that raises OSError (UnsafePath for a link or a name outside root) instead of returning None."""
    dfd, name = _parent(path, root, create=False)
    try:
        fd = _open_no_link(name, dfd, path)
    finally:
        os.close(dfd)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{path}: not a regular file")
        if limit is not None and st.st_size > limit:
            raise UnsafePath(f"{path}: larger than {limit} bytes")
        return f.read() if limit is None else f.read(limit + 1)[:limit]


def write_bytes(path: str | Path, data: bytes, root: str | Path | None = None, mode: int = 0o666) -> None:
    """Write data to path atomically: a fresh temporary file beside it, fsynced, renamed over it (a crash or a full
    disk leaves the old whole file or the new whole one). Folders below root are created."""
    dfd, name = _parent(path, root, create=True)
    tmp = f".{name}.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # a power cut after the rename must not leave an empty file under the new name
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
    finally:
        os.close(dfd)


def make_dirs(path: str | Path, root: str | Path | None = None) -> Path:
    """Create path and the folders above it below root, refusing links; returns path."""
    root_real, names = _names(path, root)
    os.close(_open_dirs(root_real, names, create=True))
    return Path(path)


def is_file(path: str | Path, root: str | Path | None = None) -> bool:
    """A regular file reached without links below root."""
    try:
        dfd, name = _parent(path, root, create=False)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode)
    except OSError:
        return False
    finally:
        os.close(dfd)


def is_dir(path: str | Path, root: str | Path | None = None) -> bool:
    """A folder reached without links below root."""
    try:
        root_real, names = _names(path, root)
        os.close(_open_dirs(root_real, names, create=False))
        return True
    except OSError:
        return False


def links_below(root: str | Path) -> list[str]:
    """Names (relative to root) of the links and special files (FIFOs, devices, sockets) below root: what a
    program that follows links (Ray restoring an experiment) must not be handed."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            try:
                mode = os.lstat(p).st_mode
            except OSError:
                continue
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                found.append(os.path.relpath(p, root))
    return sorted(found)


def remove_tree(dfd: int, name: str) -> None:
    """Remove name (a folder tree, a file or a link: never what a link points to) in the folder dfd."""
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dfd, ignore_errors=True)
    else:
        os.unlink(name, dir_fd=dfd)


def copy_into_new_dir(src: str | Path, dest: str | Path, names: list[str], root: str | Path | None = None,
                      link: bool = True) -> bool:
    """Create the folder dest (it must not exist: False when it does) and put src's files `names` into it, in that
    order (the last one marks the folder whole): hard links when `link` (no bytes copied), else copies. Both folders
    are reached without links below root and written through descriptors, so a link swapped in meanwhile is never
    followed; each file must be a regular file (UnsafePath otherwise: a link, a folder, a FIFO). On any error the
    new folder is removed again and the error raised (FileNotFoundError: a file of src is gone)."""
    root_real, src_names = _names(src, root)
    sfd = _open_dirs(root_real, src_names, create=False)
    try:
        pfd, name = _parent(dest, root, create=True)
        try:
            try:
                os.mkdir(name, 0o755, dir_fd=pfd)
            except FileExistsError:
                return False
            try:
                dfd = _open_dir_no_link(name, pfd, str(dest))
                try:
                    for n in names:
                        _put(sfd, dfd, n, link, f"{src}/{n}")
                    if os.stat(name, dir_fd=pfd, follow_symlinks=False).st_ino != os.fstat(dfd).st_ino:
                        raise UnsafePath(f"{dest}: replaced while it was written; not used")
                finally:
                    os.close(dfd)
            except BaseException:
                remove_tree(pfd, name)
                raise
            return True
        finally:
            os.close(pfd)
    finally:
        os.close(sfd)


def _put(sfd: int, dfd: int, name: str, link: bool, where: str) -> None:
    fd = _open_no_link(name, sfd, where)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{where}: not a plain file (a folder, a FIFO or a device); not copied")
        if link:
            try:
                os.link(name, name, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
                if os.stat(name, dir_fd=dfd, follow_symlinks=False).st_ino == st.st_ino:
                    return  # the very file checked above (not one swapped in after the check)
                os.unlink(name, dir_fd=dfd)
                raise FileNotFoundError(f"{where}: replaced while it was copied")
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dfd)
        with os.fdopen(out, "wb") as w, os.fdopen(os.dup(fd), "rb") as r:
            shutil.copyfileobj(r, w, 8 * 2**20)
    finally:
        os.close(fd)


def remove(path: str | Path, root: str | Path | None = None) -> None:
    """Remove path (a folder tree, a file or a link itself) without following a link below root; a missing path is
    fine."""
    try:
        dfd, name = _parent(path, root, create=False)
    except OSError:
        return  # a folder above it is gone (or a link: not ours to follow)
    try:
        remove_tree(dfd, name)
    finally:
        os.close(dfd)

def replace_dir(dest: str | Path, write: Callable[[Path], None], root: str | Path | None = None) -> Path:
    """Call write(tmpdir) on a fresh, private sibling folder, then move it to dest, replacing an older dest (a
    link planted under dest's name is replaced, never followed)."""
    dest = Path(dest)
    dfd, name = _parent(dest, root, create=True)
    try:
        tmp_name = f".{name}.tmp{secrets.token_hex(6)}"
        os.mkdir(tmp_name, 0o700, dir_fd=dfd)  # fails on anything already there, a link included
        tmp = dest.with_name(tmp_name)
        try:
            write(tmp)
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISDIR(st.st_mode):
                old = f".{name}.old"
                remove_tree(dfd, old)
                os.replace(name, old, src_dir_fd=dfd, dst_dir_fd=dfd)
                os.replace(tmp_name, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                remove_tree(dfd, old)
            else:
                if st is not None:  # a file or a link where a folder belongs
                    os.unlink(name, dir_fd=dfd)
                os.replace(tmp_name, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            remove_tree(dfd, tmp_name)
            raise
    finally:
        os.close(dfd)
    return dest
