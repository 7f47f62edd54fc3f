"""pontoond: the per-host daemon (API, service, reconciliation)."""
