"""What can be set and what is reported: the space file (space.py), the per-epoch report schema and trial states
(schema.py), every command option declared once (cli_flags.py). Imports nothing else of search/."""
