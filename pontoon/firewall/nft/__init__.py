"""Everything pontoon writes with nftables, through one writer (writer.py):

- host.py: the daemon's table `inet pontoon` (the nftables firewall backend);
- sandbox.py: the DNS port rewrite inside each container's namespace;
- trace.py: the nftrace marking rules of `pontoon trace`.
"""

from pontoon.firewall.nft.writer import NftError, run

__all__ = ["NftError", "run"]
