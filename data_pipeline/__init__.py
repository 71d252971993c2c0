"""Reading the lab dataset, preprocessing it once, and serving fast batches.

Never imports Ray or Optuna: the search layer hands these plain numpy arrays to Ray itself.
"""
