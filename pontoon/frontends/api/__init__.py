"""The HTTP/JSON API."""
