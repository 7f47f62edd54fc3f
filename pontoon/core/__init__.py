"""The core records and address helpers every other part builds on."""
