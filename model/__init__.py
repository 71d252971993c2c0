"""The fusion classifier and the one training loop. Never imports Ray or Optuna."""
