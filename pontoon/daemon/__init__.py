"""pontoond: the daemon process (flags, start-up composing the engine, the
runtime and the front ends), its configuration and its metrics."""
