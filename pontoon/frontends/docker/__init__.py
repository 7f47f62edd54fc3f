"""The Docker front end: pontoon as a Docker remote network driver and IPAM
driver (`pontoond --docker-plugin`), a thin layer over the engine."""
