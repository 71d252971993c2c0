"""The checkpoint `mmsa export` names is a copy nothing deletes: EXP/exported/TRIAL-FOLDER/.

A trial's checkpoint folders are deleted while a search runs (an older best epoch once a better one is written, the
pruner's old checkpoints, retention when a trial ends) and by a later `mmsa resume`, by other processes on other
machines, without a lock anyone could share (object storage has none). Marking a folder "pinned" for the deleters to
spare raced with them (check, then delete: CI once lost an exported checkpoint that way). A copy does not race: it is
made from the files as they are and checked whole afterwards; a deletion of the original under way makes the copy fail
(the export then names no checkpoint), never leaves it half.

- Local disk: hard links, so no bytes are copied; mmsa never rewrites a checkpoint's file in place (each is written
  beside and renamed over), so a linked file keeps the bytes it had. The copy is made in a private folder and renamed
  into place whole.
- Object storage: server-side copies (no bytes through this machine), METRICS_FILE last: a copy without it is not
  whole, and the next export makes it again.
"""
from __future__ import annotations

from data_pipeline import safe_files
from model import run_files as ckpt

from search.experiment import storage
from search.trial.checkpoint_retention import METRICS_FILE

EXPORTED_DIR = "exported"
NEEDED = (ckpt.WEIGHTS, ckpt.CONFIG, METRICS_FILE)  # what `mmsa predict --model` and `mmsa train --config` read


def keep_copy(exp: str, src: str, name: str) -> str:
    """A whole copy of the checkpoint folder `src` (below the experiment `exp`, a path or URI) at
    EXP/exported/NAME; its location (in exp's form). OSError when it cannot be made whole: src is gone or being
    deleted, holds something that is not a plain file, or the storage refused the write."""
    fs, root = storage.filesystem(exp)
    src_path = f"{root}/{src[len(exp):].lstrip('/')}" if src.startswith(exp) else None
    if src_path is None:
        raise OSError(f"{src}: not below {exp}")
    dest = f"{root}/{EXPORTED_DIR}/{name}"
    if safe_files.is_local_fs(fs):
        def write(tmp):
            missing = set(NEEDED) - set(safe_files.link_files(src_path, tmp, root))
            if missing:  # listed while it was being deleted
                raise OSError(f"{src}: lacks {', '.join(sorted(missing))} (deleted meanwhile, or not a checkpoint)")

        safe_files.replace_dir(dest, write, root)
    else:
        _copy_remote(fs, src_path, dest)
    return storage.join(exp, f"{EXPORTED_DIR}/{name}")


def _copy_remote(fs, src: str, dest: str) -> None:
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(src, allow_not_found=True))
    names = sorted((i.base_name for i in infos if i.type == pafs.FileType.File), key=lambda n: (n == METRICS_FILE, n))
    if any(i.type == pafs.FileType.Directory for i in infos):
        raise OSError(f"{src}: holds a folder; a checkpoint of mmsa holds plain files only (planted or damaged)")
    missing = set(NEEDED) - set(names)
    if missing:
        raise OSError(f"{src}: lacks {', '.join(sorted(missing))} (deleted meanwhile, or not a checkpoint)")
    storage.delete_dir(fs, dest)  # an earlier copy cut short
    try:
        for n in names:
            fs.copy_file(f"{src}/{n}", f"{dest}/{n}")
    except BaseException:
        try:
            storage.delete_dir(fs, dest)
        except OSError:
            pass
        raise
