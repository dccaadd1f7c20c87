"""Answering queries: the one ``match`` protocol, opened artifacts and shard sets, filters,
calibrated confidence, the trained scorers, diagnostics and the HTTP server."""
