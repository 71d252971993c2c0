"""Where an experiment's files live: a local path or a URI (s3://, gs://, file://), opened through pyarrow's
filesystems as Ray itself does, and the up-front check that local storage can take checkpoints."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from data_pipeline.errors import UserError

MIN_FREE_BYTES = 100 * 2**20  # below this a search cannot even write its first checkpoints


def is_uri(location: str) -> bool:
    return "://" in str(location)


def join(storage: str, name: str) -> str:
    return f"{storage.rstrip('/')}/{name}" if is_uri(storage) else str(Path(storage) / name)


def normalize(location: str | Path) -> str:
    """An absolute local path, or the URI without a trailing slash."""
    return str(location).rstrip("/") if is_uri(str(location)) else str(Path(location).resolve())


def filesystem(location: str | Path):
    """A pyarrow filesystem and the path on it."""
    import pyarrow.fs as pafs

    if is_uri(str(location)):
        return pafs.FileSystem.from_uri(str(location))
    return pafs.LocalFileSystem(), str(Path(location).resolve())


def read_bytes(fs, path: str, root: str | None = None) -> bytes | None:
    """A file's bytes on a pyarrow filesystem, or None when it cannot be read. A local file is read only when no link
    between root (the experiment; default: the file's folder) and it is followed (data_pipeline/safe_files.py)."""
    from data_pipeline import safe_files

    if safe_files.is_local_fs(fs):
        return safe_files.read_bytes(path, root)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except OSError:
        return None


def parse_json(data: bytes | str | None):
    """The value of a JSON file mmsa wrote into an experiment, or None when it is absent or damaged (cut short by a
    crash, edited, planted: not JSON, not text, or nested deep enough to exhaust Python's recursion limit). Every
    reader of such a file goes through here and then checks the value's shape, so a damaged file is a note, never a
    traceback."""
    if data is None:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


def create_dir(fs, path: str, root: str | None = None) -> None:
    """A folder and those above it; on a local path without following a link below root (default: its parent)."""
    from data_pipeline import safe_files

    if safe_files.is_local_fs(fs):
        safe_files.make_dirs(path, root)
    else:
        fs.create_dir(path, recursive=True)


def list_files(fs, root: str) -> list[str]:
    """The files below root, relative to it; on a local path without descending into a linked folder (a planted
    `trial_x -> /` would otherwise list the whole machine)."""
    from data_pipeline import safe_files

    if safe_files.is_local_fs(fs):
        import os

        return [os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root, followlinks=False)
                for f in files]
    import pyarrow.fs as pafs

    return [i.path[len(root):].lstrip("/") for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
            if i.type == pafs.FileType.File]


def is_file(fs, path: str, root: str | None = None) -> bool:
    import pyarrow.fs as pafs

    from data_pipeline import safe_files

    if safe_files.is_local_fs(fs):
        return safe_files.is_file(path, root)
    return fs.get_file_info(path).type == pafs.FileType.File


def is_dir(fs, path: str, root: str | None = None) -> bool:
    import pyarrow.fs as pafs

    from data_pipeline import safe_files

    if safe_files.is_local_fs(fs):
        return safe_files.is_dir(path, root)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def delete_dir(fs, path: str, root: str | None = None) -> None:
    """A folder and everything below it gone (a missing one is fine); on a local disk no link is followed."""
    from data_pipeline import safe_files

    if safe_files.is_local_fs(fs):
        safe_files.remove(path, root)
        return
    try:
        fs.delete_dir(path)
    except FileNotFoundError:
        pass


def free_bytes(location: str | Path) -> int | None:
    """Free space where a local experiment lives; None for object storage (no such limit to read)."""
    if is_uri(str(location)):
        return None
    path = Path(location).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def check_local_storage(storage: str, what: str | None = None,
                        fix: str = "choose another directory with --storage") -> str:
    """Absolute path; fails before any trial starts when it cannot be written or its disk is full. what: how the
    message names it (default `--storage STORAGE`); fix: what to do besides freeing space."""
    what = what or f"--storage {storage}"
    if is_uri(storage):
        _check_object_storage(storage, what)
        return storage
    path = Path(storage).expanduser().resolve()
    try:
        from data_pipeline.atomic import write_file

        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".mmsa-write-test"
        write_file(probe, b"x" * 4096)  # a link planted under the probe's name (a shared storage folder) is replaced
        probe.unlink()
    except OSError as e:
        raise UserError(f"{what}: not writable ({e.strerror or e}). Free some space or {fix}.") from None
    free = free_bytes(path)
    if free is not None and free < MIN_FREE_BYTES:
        raise UserError(f"{what}: only {free / 2**20:.1f} MiB free; checkpoints need more. Free some space or {fix}.")
    return str(path)


def _check_object_storage(uri: str, what: str) -> None:
    """A small object written and deleted: a missing bucket, a wrong endpoint or key, a read-only role or an
    unreachable server is one message now, not a traceback in the middle of the search."""
    try:
        fs, path = filesystem(uri)
        fs.create_dir(path, recursive=True)
        probe = f"{path}/.mmsa-write-test"
        with fs.open_output_stream(probe) as f:
            f.write(b"x")
        fs.delete_file(probe)
    except (OSError, ValueError) as e:
        detail = " ".join(str(e).split())[:300]
        raise UserError(f"{what}: cannot write there ({detail}). Check that the bucket exists and that the "
                        "credentials and endpoint (AWS_ENDPOINT_URL for MinIO and other S3-compatible servers; "
                        "docs/cluster.md) are set on this machine and every node.") from None


def download_file(fs, path: str, local: Path, exclusive: bool = False) -> None:
    """One object (a file on any pyarrow filesystem), streamed into a local file: never a prefix copied recursively
    (a checkpoint's weights are 0.4 GiB at real size). exclusive: refuse a local file that already exists."""
    import pyarrow.fs as pafs

    if fs.get_file_info(path).type != pafs.FileType.File:
        raise OSError(f"{path}: not a file")
    with fs.open_input_stream(path) as src, open(local, "xb" if exclusive else "wb") as out:
        shutil.copyfileobj(src, out, 2**24)


def fetch_model(uri: str, dest: Path) -> Path:
    """A trained model's two files (the weights and config.yaml, nothing else) from object storage into dest."""
    from model import run_files as ckpt

    try:
        fs, path = filesystem(uri)
    except (OSError, ValueError) as e:
        raise UserError(f"{uri}: cannot open this storage ({e}); check the URI, its credentials and endpoint "
                        "(docs/cluster.md, object storage)") from None
    for name in (ckpt.WEIGHTS, ckpt.CONFIG):
        try:
            download_file(fs, f"{path}/{name}", dest / name)
        except OSError as e:
            raise UserError(f"{uri}: not a trained model folder ({name} cannot be read there: {str(e)[:200]}); give "
                            "the checkpoint that `mmsa export` names, or a run directory of `mmsa train`") from None
    return dest
