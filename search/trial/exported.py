"""The checkpoint `mmsa export` names is a copy nothing deletes: EXP/exported/TRIAL-FOLDER/.

A trial's checkpoint folders are deleted while a search runs (an older best epoch once a better one is written, the
pruner's old checkpoints, retention when a trial ends) and by a later `mmsa resume`, by other processes on other
machines, without a lock anyone could share (object storage has none). Marking a folder "pinned" for the deleters to
spare raced with them (check, then delete: CI once lost an exported checkpoint that way). A copy does not race: it is
made from the files as they are and is whole or not used; a deletion of the original under way makes the copy fail
(the export then names no checkpoint).

- Only what `mmsa predict --model` and `mmsa train --config` read is copied (NEEDED; not a training state), with
  METRICS_FILE last: a copy is whole once that file is there.
- A copy, once whole, is never replaced or deleted by mmsa: a later export of the same checkpoint names it again, and
  files a user put there (predictions) stay. A copy that is not whole (cut short) is left alone; the next export
  writes a fresh one beside it (NAME-<random>).
- Local disk: mmsa's best-weights folders are hard-linked (no bytes copied; mmsa writes each file beside and renames
  it over, never in place); Ray's own checkpoint folders (checkpoint_mode sync) are copied, since Ray rewrites
  their files in place when a resumed trial reports the same checkpoint again. Written through descriptors: a link
  swapped in meanwhile is never followed.
- Object storage: server-side copies (no bytes through this machine).
"""
from __future__ import annotations

import secrets

from data_pipeline import safe_files
from model import run_files as ckpt

from search.experiment import storage
from search.trial.async_checkpoint import BEST_PREFIX
from search.trial.checkpoint_retention import METRICS_FILE

EXPORTED_DIR = "exported"
NEEDED = (ckpt.WEIGHTS, ckpt.CONFIG, METRICS_FILE)  # in this order: METRICS_FILE last marks the copy whole


def whole(exp: str, name: str) -> str | None:
    """The location of a whole copy EXP/exported/NAME, or None."""
    fs, root = storage.filesystem(exp)
    rel = f"{EXPORTED_DIR}/{name}"
    ok = all(storage.is_file(fs, f"{root}/{rel}/{n}", root) for n in NEEDED)
    return storage.join(exp, rel) if ok else None


def keep_copy(exp: str, src: str, name: str) -> str:
    """A whole copy of the checkpoint folder `src` (a location below the experiment `exp`, in exp's form) at
    EXP/exported/NAME (or beside it, see above); its location. OSError when it cannot be made whole: src is gone or
    being deleted, a file of it is not a plain file (UnsafePath), or the storage refused the write."""
    if not src.startswith(f"{exp}/"):
        raise OSError(f"{src}: not below {exp}")
    found = whole(exp, name)
    if found:
        return found
    fs, root = storage.filesystem(exp)
    src_path = f"{root}/{src[len(exp) + 1:]}"
    link = src.rsplit("/", 1)[-1].startswith(BEST_PREFIX)  # mmsa's own folders: written whole, never in place
    for rel in (f"{EXPORTED_DIR}/{name}", f"{EXPORTED_DIR}/{name}-{secrets.token_hex(4)}"):
        if safe_files.is_local_fs(fs):
            made = safe_files.copy_into_new_dir(src_path, f"{root}/{rel}", list(NEEDED), root, link=link)
        else:
            made = _copy_remote(fs, src_path, f"{root}/{rel}", fresh=rel != f"{EXPORTED_DIR}/{name}")
        if made:
            return storage.join(exp, rel)
    raise OSError(f"{storage.join(exp, EXPORTED_DIR)}: could not create a fresh folder for the copy")


def _copy_remote(fs, src: str, dest: str, fresh: bool) -> bool:
    """Object storage: no folder to create exclusively. NAME is written into when nothing whole is there (a second
    export at once writes the same objects); a copy that fails is deleted only when it went to a fresh NAME-<random>
    (NAME may be another export's whole copy by then)."""
    import pyarrow.fs as pafs

    for n in NEEDED:
        if fs.get_file_info(f"{src}/{n}").type != pafs.FileType.File:
            raise FileNotFoundError(f"{src}/{n}: not there (deleted meanwhile, or not a checkpoint)")
    try:
        for n in NEEDED:
            fs.copy_file(f"{src}/{n}", f"{dest}/{n}")
    except BaseException:
        if fresh:
            try:
                storage.delete_dir(fs, dest)
            except OSError:
                pass
        raise
    return True
