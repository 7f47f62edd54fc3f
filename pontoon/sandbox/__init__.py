"""Sandboxes: network namespaces and the files a container sees in /etc."""
