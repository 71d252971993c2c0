"""Ray Tune and Optuna: the cluster, the searcher and scheduler, driver callbacks, the ASHA replay, launching and
resuming a search. Imports the packages above."""
