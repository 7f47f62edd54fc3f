"""The cluster side of a host: global networks and peers, over etcd."""
