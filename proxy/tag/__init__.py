"""The first-party tag: Google's gtag.js fetched, rewritten to the proxy's origin, cached and
served by the proxy, and the Google endpoints the tag may call answered locally."""
