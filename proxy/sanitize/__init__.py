"""Sanitising stages: what is removed, replaced or generalised before forwarding."""
