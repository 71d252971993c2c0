"""The one way this project writes a file or a folder that a later command reads: under a temporary name, then
renamed over the target, so a crash (or a full disk) leaves the old whole version or the new whole one, never half.

Used for run checkpoints (model/), the preprocessing cache (data_pipeline/) and experiment metadata and state
backups (search/, on local paths and on pyarrow filesystems such as S3 alike).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def replace_dir(dest: str | Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmpdir) on a fresh sibling folder, then move it to dest, replacing an older dest."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp"))
    try:
        write(tmp)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def write_file(path: str | Path, data: bytes, fs=None) -> None:
    """Write data to path; `fs` is a pyarrow filesystem (S3, GCS, local) for paths that are not plain local ones."""
    tmp = f"{path}.tmp"
    if fs is None:
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # a power cut after the rename must not leave an empty file under the new name
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
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
