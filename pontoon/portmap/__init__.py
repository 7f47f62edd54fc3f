"""Published ports: parsing -p, reserving host ports, flushing conntrack."""
