"""The server: the public and admin aiohttp applications, the HTTP layer, workers."""
