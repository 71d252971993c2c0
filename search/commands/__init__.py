"""The mmsa subcommands built on a search: confirm, refine, export, report, status, demo. Imports every package above;
search/cli.py parses the command line and calls them."""
