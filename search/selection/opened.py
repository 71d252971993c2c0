"""One experiment opened once per command and passed down instead of its path (search, resume, status, export,
report, confirm, refine): its metadata is read and checked once (search/experiment/layout.py `_load_meta`, the one reader),
its trials once (search/selection/results.py), its lease each time it is asked. It sits above results.py, which reads the
trials, so search/experiment/layout.py, below both, never imports the trial readers."""
from __future__ import annotations

from pathlib import Path

from search.experiment import layout as experiment

from search.experiment import storage
from search.experiment.lock import holder, read_lease
from search.selection.results import load_trials


class Experiment:
    """One experiment, opened once per command and passed down instead of its path: where it is (as the caller named
    it), its filesystem, its metadata (read and checked once, on first use), its trials (read once, on first use)
    and who holds its lease now. A resume used to read META once per function it went through."""

    def __init__(self, location: str | Path):
        self.path = str(location)
        self.fs, self.root = storage.filesystem(self.path)
        self._meta: dict | None = None
        self._trials: list | None = None
        self._children: dict[str, Experiment] = {}

    @classmethod
    def open(cls, exp: str | Path | Experiment, normalize: bool = False) -> Experiment:
        """exp itself when it is open already; otherwise the experiment at that path (normalized: absolute)."""
        if isinstance(exp, Experiment):
            return exp
        return cls(storage.normalize(exp) if normalize else exp)

    def __str__(self) -> str:  # messages and f-strings name the experiment by its path
        return self.path

    def __fspath__(self) -> str:  # a local one may be passed where a path is taken
        return self.path

    def __repr__(self) -> str:
        return f"Experiment({self.path!r})"

    @property
    def meta(self) -> dict:
        """META, refused (UserError) when absent or not what `mmsa search` writes."""
        if self._meta is None:
            self._meta = experiment._load_meta(self.path)
        return self._meta

    def exists(self) -> bool:
        return self._meta is not None or experiment.meta_exists(self.path)

    @property
    def trials(self) -> list:
        """Its trials as they were at the first use (search/selection/results.py load_trials); after a run, `fresh_trials`."""
        if self._trials is None:
            self.fresh_trials()
        return self._trials

    def fresh_trials(self) -> list:
        """The trials read again (they change while a search runs); the metadata is not read again."""
        self._trials = load_trials(self)
        return self._trials

    def lease(self):
        """Who is writing it now (search/experiment/lock.py holder), or None; read each time: it changes."""
        return holder(read_lease(storage.normalize(self.path)))

    def child(self, name: str) -> Experiment:
        """The experiment in the folder NAME inside this one (EXP/confirm), opened once."""
        if name not in self._children:
            self._children[name] = Experiment(storage.join(self.path, name))
        return self._children[name]

    def storage_dir(self) -> str:
        """The folder (or URI) that holds it: Ray's storage_path."""
        return self.path.rstrip("/").rsplit("/", 1)[0] if storage.is_uri(self.path) else str(Path(self.path).resolve().parent)
