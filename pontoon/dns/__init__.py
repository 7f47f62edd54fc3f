"""The embedded DNS resolver: container names on shared networks, the rest
forwarded upstream. One component of the daemon for every container."""
