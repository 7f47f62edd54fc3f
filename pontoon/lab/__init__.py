"""Simulated hosts on one machine: network namespaces running their own
pontoond. Used by `pontoon lab`, the demo, the tests and the benchmarks."""

from pontoon.lab.hosts import SimHost, connect_hosts, netns_inode

__all__ = ["SimHost", "connect_hosts", "netns_inode"]
