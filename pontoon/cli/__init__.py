"""`pontoon`, the command-line client of pontoond's API."""
