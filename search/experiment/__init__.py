"""What an experiment folder holds and how it is read and written safely: its layout and metadata, storage (local or
URI), the one-writer lease, signed Ray state, whole copies of state and trial files, Ray's file facts and the test
seams. Imports only search.settings."""


def __getattr__(name: str):
    # Before the packages this name was the module now in layout.py; Ray pickled search.experiment.trial_dirname
    # into existing experiments, so its names are served here too.
    import importlib

    layout = importlib.import_module(f"{__name__}.layout")
    try:
        return getattr(layout, name)
    except AttributeError:
        raise AttributeError(f"module 'search.experiment' has no attribute {name!r}") from None
