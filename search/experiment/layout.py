"""The experiment directory (STORAGE/NAME, local or at a URI): its metadata file, its layout, the check and repair
of Ray's state files before a resume, and a local copy of its small files. Every command that opens an experiment
(search, resume, status, export, report, confirm, refine) goes through here: once, as one `Experiment`, passed down.

Layout, as Ray Tune and mmsa-tune write it:
  mmsa_search.yaml               META: what `resume`, `status`, `export` and `report` read (written by mmsa)
  trial_<id>/params.json         the trial's config (Ray)
  trial_<id>/result.json         one JSON row per epoch (search/settings/schema.py)
  trial_<id>/checkpoint_*/       kept by search/trial/checkpoint_retention.py
  experiment_state-*.json, searcher-state-*.pkl, tuner.pkl, ...   Ray's state (search/experiment/ray_internals.py)
  .mmsa-state/                   whole, signed copies of Ray's state files (search/experiment/state_backup.py, state_trust.py)
  .mmsa-state/trials/            whole copies of each trial's params.json and result.json (search/experiment/trial_backup.py)
  .mmsa-lock.json                the lease of the search or resume running now (search/experiment/lock.py)
  .mmsa-time-used.json           the wall time the search has used, for its time budget (search/experiment/time_used.py)
  mlflow_runs.json               MLflow run ids of a search logged with --mlflow, signed (search/experiment/mlflow_runs.py)
"""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import yaml

from data_pipeline.atomic import write_file
from data_pipeline.errors import UserError
from data_pipeline.safe_files import links_below, plain_name

from search.experiment import ray_internals, storage

META = "mmsa_search.yaml"
# What `mmsa search` always writes into META and its readers rely on (name -> type).
REQUIRED_META = {"name": str, "num_samples": int, "data_dir": str, "data_fingerprint": str, "created": str}
SMALL_FILES = ("result.json", "params.json", "error.txt", META)  # what status/report need; no checkpoints


def trial_dirname(trial) -> str:
    """The folder of a Ray trial in the experiment (Ray's trial_dirname_creator)."""
    return f"trial_{trial.trial_id}"


def location(storage_dir: str, name: str) -> str:
    return storage.join(storage_dir, name)


def meta_exists(exp: str | Path) -> bool:
    fs, path = storage.filesystem(exp)
    return storage.is_file(fs, f"{path}/{META}", path)


def write_meta(exp: str | Path, meta: dict) -> None:
    fs, path = storage.filesystem(exp)
    storage.create_dir(fs, path)
    write_file(f"{path}/{META}", yaml.safe_dump(meta, sort_keys=False).encode(), fs)


def read_meta(exp) -> dict:
    """The experiment's metadata: an open Experiment's (search/selection/opened.py: read once), or read now from a path."""
    meta = getattr(exp, "meta", None)
    return meta if isinstance(meta, dict) else _load_meta(str(exp))


def _load_meta(exp: str | Path) -> dict:
    """The one reader of META: read, parsed and checked (every command gets it through an Experiment)."""
    if not meta_exists(exp):
        raise UserError(f"{exp}: not a search experiment (no {META}; `mmsa search --name NAME` creates ray_results/NAME).")
    from data_pipeline.safe_yaml import load_yaml_text

    fs, path = storage.filesystem(exp)
    raw = storage.read_bytes(fs, f"{path}/{META}", path)
    if raw is None:
        raise UserError(f"{exp}/{META}: cannot be read (not a regular file, or no permission).")
    meta = load_yaml_text(raw.decode(errors="replace"), f"{exp}/{META}")
    if not isinstance(meta, dict) or not isinstance(meta.get("spec"), dict):
        raise UserError(f"{exp}/{META}: not the metadata `mmsa search` writes (cut or edited by hand); the search "
                        "cannot be read without it.")
    wrong = [k for k, kind in REQUIRED_META.items() if not isinstance(meta.get(k), kind) or isinstance(meta.get(k), bool)]
    if wrong:  # every reader takes these as given: a missing or mistyped one would end in a KeyError/TypeError later
        raise UserError(f"{exp}/{META}: key {wrong[0]!r} is missing or not a {REQUIRED_META[wrong[0]].__name__} "
                        "(cut or edited by hand); restore the file from the search that wrote it.")
    bad = [k for k, d in (meta["spec"].get("space") or {}).items() if not _space_entry(k, d)] \
        if isinstance(meta["spec"].get("space") or {}, dict) else ["space"]
    if bad:  # status, report and export take the hyperparameters' names and kinds from here
        raise UserError(f"{exp}/{META}: spec.space entry {str(bad[0])[:60]!r} is not `section.key: {{kind: [...]}}` as "
                        "`mmsa search` writes it (edited by hand?); restore the file from the search that wrote it.")
    return meta



def _space_entry(key, dist) -> bool:
    from search.settings.space import DISTRIBUTIONS

    return isinstance(key, str) and key.count(".") == 1 and all(key.split(".")) and isinstance(dist, dict) \
        and len(dist) == 1 and next(iter(dist)) in DISTRIBUTIONS and isinstance(next(iter(dist.values())), list)


def warm_sources(meta: dict) -> list[dict]:
    """The searches this one was warm-started from (`warm_start:` of its metadata), each a dict with a string
    `experiment`; entries of any other shape (a hand-edited file) are left out."""
    entries = meta.get("warm_start")
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("experiment"), str)] \
        if isinstance(entries, list) else []


CONFIRM_RUN = "fixed_trials"  # the metadata key that marks a `mmsa confirm` run (search/commands/confirm.py writes it)


def is_confirm_run(meta: dict) -> bool:
    """THE test for an experiment that is a `mmsa confirm` run (EXP/confirm: fixed configurations with fresh seeds,
    all epochs, no ASHA), not a search."""
    return bool(meta.get(CONFIRM_RUN))


def refuse_confirm_run(meta: dict, subject: str, instead: str) -> None:
    """THE refusal of a `mmsa confirm` run where a command needs a search; `instead`: what to do."""
    if is_confirm_run(meta):
        raise UserError(f"{subject}: a `mmsa confirm` run (fixed configurations with fresh seeds), not a search; "
                        f"{instead}")


def same_data(meta: dict, other: dict) -> bool:
    """Whether two searches ran on the same data (their validation losses can then be compared)."""
    return bool(meta.get("data_fingerprint")) and meta.get("data_fingerprint") == other.get("data_fingerprint")


def ever_ran(exp: str | Path) -> bool:
    """Whether a search here got as far as Ray's first state snapshot or a trial directory. One that did not (stopped
    or failed during start-up) holds nothing worth resuming, and `mmsa search` may start it again."""
    import pyarrow.fs as pafs

    fs, path = storage.filesystem(exp)
    if not storage.is_dir(fs, path):
        return False
    for info in fs.get_file_info(pafs.FileSelector(path)):
        name = info.base_name
        if name.startswith("trial_") or ray_internals.is_trial_table(name):
            return True
    return False


def clear_start(exp: str | Path) -> None:
    """Remove what a start that never ran left behind (metadata, Ray's tuner file), keeping any other file."""
    import pyarrow.fs as pafs

    fs, path = storage.filesystem(exp)
    for info in fs.get_file_info(pafs.FileSelector(path)):
        if info.type == pafs.FileType.File and (info.base_name == META
                                                or ray_internals.is_search_start_file(info.base_name)):
            fs.delete_file(info.path)


def check_state(exp: str, log=print, trust: bool = False) -> None:
    """Put back whole copies of state files a crash cut short, and signed copies of files this user's searches did
    not write (search/experiment/state_trust.py); refuse, with what to do, when there is none. Nothing is unpickled here."""
    from search.experiment.state_backup import BACKUP_DIR, damaged, repair, verify

    fs, path = storage.filesystem(exp)
    odd = [] if storage.is_uri(exp) and not exp.startswith("file://") else links_below(path)
    if odd:
        raise UserError(f"{exp}: holds symbolic links or special files ({', '.join(odd[:3])}"
                        f"{f' and {len(odd) - 3} more' if len(odd) > 3 else ''}). Ray reads and writes through them "
                        f"when it resumes a search, outside the experiment; mmsa does not hand it such a folder. Remove "
                        f"them (`find {path} ! -type f ! -type d`), then resume again.")
    fixed = repair(fs, path)
    if fixed:
        log(f"restored {', '.join(fixed)} from {BACKUP_DIR}/: the search was killed while Ray was writing them")
    bad = damaged(fs, path)
    if bad:
        raise UserError(f"{exp}: Ray's state file(s) {', '.join(bad)} are empty or cut off (the search was killed while "
                        f"Ray was writing them) and {BACKUP_DIR}/ holds no whole copy. Finished trials stay readable with "
                        f"`mmsa status {exp}`; start a new search with `mmsa search --name NEW`.")
    restored, unsigned = verify(fs, path, trust)
    if restored:
        log(f"restored {', '.join(restored)} from {BACKUP_DIR}/: the live copies were not the ones this search wrote "
            "(changed since, or its last state snapshot)")
    if unsigned:
        raise UserError(f"{exp}: Ray's state file(s) {', '.join(unsigned)} were not written by a search of yours (no "
                        "matching signature; see docs/reliability.md, Security). Resuming unpickles them, which runs "
                        "any code they carry, so they are not loaded. If you trust where this experiment came from "
                        f"(copied from another machine or user, or made before mmsa-tune signed its state), resume "
                        f"with `mmsa resume {exp} --trust-state`.")


def local_copy(exp: str, dest: Path) -> Path:
    """A local folder with the small files of an experiment stored at a URI (s3://, gs://, file://): results,
    params, errors and Ray's experiment state; checkpoints stay where they are."""
    fs, root = storage.filesystem(exp)
    dest = Path(dest)
    for rel in storage.list_files(fs, root):
        name = rel.rsplit("/", 1)[-1]
        if "checkpoint_" not in rel and (
                name in SMALL_FILES or ray_internals.is_trial_table(name)):
            data = storage.read_bytes(fs, f"{root}/{rel}", root)
            if data is not None and plain_name(rel) is not None:  # a link, or a key like a/../../x: not copied
                write_file(dest / rel, data, root=dest)
    return dest


@contextlib.contextmanager
def local_dir(exp: str | Path):
    """The experiment as a local folder: itself, or, when it is at a URI, a temporary local copy of its small files
    that is removed on leaving the block (each `mmsa status s3://...` used to leave one behind in /tmp)."""
    if not storage.is_uri(str(exp)):
        yield Path(exp)
        return
    import tempfile

    copy = Path(tempfile.mkdtemp(prefix="mmsa-exp-"))
    try:  # removed however the block ends: a refused planted key, an unreachable bucket, Ctrl-C
        yield local_copy(str(exp), copy)
    finally:
        shutil.rmtree(copy, ignore_errors=True)
