"""The search layer and the `mmsa` command line. The only package that imports Ray or Optuna."""
