"""The CNI front end: `pontoon-cni`, a CNI plugin that is a thin client of
pontoond. Standard library only: a runtime execs it for every container."""
