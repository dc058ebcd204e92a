"""Ingest: a request becomes a Beacon (parsing, cookies, the client's address)."""
