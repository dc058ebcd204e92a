"""State: salts, pseudonyms, rate limits and counts, in memory or in Redis."""
