"""Container processes: started through a tiny shell shim that outlives the daemon."""
