"""The one way this project writes a file or a folder that a later command reads: under a temporary name, then
renamed over the target, so a crash (or a full disk) leaves the old whole version or the new whole one, never half.

Local paths go through data_pipeline/safe_files.py (no link below `root` followed, temporary files created
exclusively); pyarrow filesystems for object storage (S3, GCS: no links) write through the filesystem.
Used for run checkpoints (model/), the preprocessing cache (data_pipeline/) and experiment metadata and state
backups (search/).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from . import safe_files


def replace_dir(dest: str | Path, write: Callable[[Path], None], root: str | Path | None = None) -> Path:
    """Call write(tmpdir) on a fresh sibling folder, then move it to dest, replacing an older dest. No link between
    root (default: dest's parent) and dest is followed."""
    return safe_files.replace_dir(dest, write, root)


def write_file(path: str | Path, data: bytes, fs=None, root: str | Path | None = None) -> None:
    """Write data to path; `fs` is a pyarrow filesystem (S3, GCS, local) for paths that are not plain local ones.
    On a local path no link between root (default: the file's folder) and the file is followed."""
    if safe_files.is_local_fs(fs):
        safe_files.write_bytes(path, data, root)
        return
    tmp = f"{path}.tmp"
    try:
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)
    except BaseException:
        try:
            fs.delete_file(tmp)
        except OSError:
            pass
        raise
