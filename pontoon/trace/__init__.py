"""`pontoon trace`: where a packet goes, without LOG rules (SPEC §8).

The seed's author added LOG rules to every chain, read kernel logs and
matched `ethtool -S` peer indexes by hand. A trace does the same in one
command: it sends a probe from the source's namespace with a source port (or
ICMP id) of its choosing, marks exactly that flow with `meta nftrace set 1`
in a table of its own, reads the kernel's trace events (`nft monitor trace`)
for every hook, table, chain and rule the packets meet, reads the conntrack
entry for the NAT rewrites, asks the proxy whether it carried the
connection, and lays the devices crossed along the way from the daemon's
model. Everything it adds is removed when it ends, also on errors and ^C.
"""
