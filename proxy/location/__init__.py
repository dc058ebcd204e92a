"""Location: the visitor's place (geo lookup, consent regimes, mesh cells, location modes)."""
