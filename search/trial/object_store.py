"""A trial folder on object storage (s3://, gs://, or any pyarrow filesystem that is not the local one), for the
background checkpoints of search/trial/async_checkpoint.py.

Object storage has no rename and no links, so the local disk's guarantee (a folder is complete or absent: written
beside, then renamed) is kept another way: each folder is written whole on the worker's local disk first, then its
files are uploaded, and only after the upload has finished may a reported pointer name it. A worker killed mid-upload
leaves a folder that no saved experiment state names; it is deleted with the trial's other states. The best weights'
folder (`mmsa predict --model` reads it) is uploaded the same way; `mmsa export` names it only once it is listed with
its weights, and an older best folder is deleted on storage only after the newer one is up."""
from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pyarrow.fs as pafs

from search.experiment.storage import download_file, read_bytes
from search.trial.checkpoint_retention import METRICS_FILE


PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")  # the names mmsa writes in a state or best folder


class ObjectStoreFolder:
    """One trial's folder at `path` on the pyarrow filesystem `fs` (the names below it are relative)."""

    def __init__(self, fs, path: str):
        self.fs, self.path = fs, str(path).rstrip("/")

    def at(self, rel: str) -> str:
        """REL's full path on the filesystem."""
        return f"{self.path}/{rel}"

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def upload(self, local: Path, rel: str, between=None) -> None:
        """A local folder's files to REL, one object each (all whole once this returns). METRICS_FILE goes last: its
        presence is what says a folder is whole (`mmsa export` names a best folder only then; retention deletes a
        folder without it once no writer is left). between: called after the first file (the tests' kill in the
        middle of an upload, search/experiment/faults.py)."""
        files = sorted((p for p in Path(local).rglob("*") if p.is_file()), key=lambda p: (p.name == METRICS_FILE, p.name))
        if not files or files[-1].name != METRICS_FILE:  # a staging folder emptied under us: never upload "nothing"
            raise OSError(f"{local}: the folder to upload is incomplete ({len(files)} file(s), no {METRICS_FILE})")
        for i, f in enumerate(files):
            pafs.copy_files(str(f), self.at(f"{rel}/{f.relative_to(local).as_posix()}"),
                            source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)
            if i == 0 and between is not None:
                between()

    def download(self, rel: str, local: Path) -> Path:
        """REL's files into a fresh local folder (one the trial owns: it is replaced, never merged into). A folder of
        ours holds plain files only: anything below it (a key `x/../../../home/u/.bashrc` planted in the bucket) is
        refused, never written outside the folder."""
        shutil.rmtree(local, ignore_errors=True)
        local.mkdir(parents=True)
        base = self.at(rel)
        for info in self.fs.get_file_info(pafs.FileSelector(base, recursive=True)):
            name = info.path[len(base) + 1:]
            if info.type == pafs.FileType.Directory and name:
                raise OSError(f"{base}: holds a folder {name[:80]!r}; a training state of mmsa holds plain files only "
                              "(planted or damaged), so it is not loaded")
            if info.type != pafs.FileType.File:
                continue
            if not PLAIN_NAME.fullmatch(name) or name in (".", ".."):
                raise OSError(f"{base}: holds {name[:80]!r}, not a plain file name (planted or damaged); not loaded")
            download_file(self.fs, info.path, local / name, exclusive=True)
        return local

    def exists(self, rel: str, on_error: bool | None = False) -> bool:
        """on_error: the answer when storage cannot tell (throttled, a timeout): what is safe for the caller; None
        where neither answer is (asked again twice, then the OSError is raised)."""
        for wait in (1, 2, None):
            try:
                return self.fs.get_file_info(self.at(rel)).type != pafs.FileType.NotFound
            except OSError:
                if on_error is not None:
                    return on_error
                if wait is None:
                    raise
                time.sleep(wait)

    def whole(self, rel: str) -> bool:
        return self.exists(f"{rel}/{METRICS_FILE}", on_error=True)

    def read(self, rel: str) -> bytes | None:
        return read_bytes(self.fs, self.at(rel))

    def write(self, rel: str, data: bytes) -> None:
        with self.fs.open_output_stream(self.at(rel)) as f:
            f.write(data)

    def names(self, prefix: str = "", under: str = "") -> list[str]:
        """Entries right below the folder (or below UNDER in it) whose names start with prefix."""
        base = self.at(under) if under else self.path
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        except OSError:
            return []
        return sorted(i.base_name for i in infos if i.base_name.startswith(prefix))

    def delete(self, rel: str) -> None:
        try:
            self.fs.delete_dir(self.at(rel))
        except (FileNotFoundError, OSError):  # already gone (or never fully up): nothing names it
            pass
