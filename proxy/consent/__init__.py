"""Consent: each source's reading (Consent Mode, CMP cookies, TCF, bridge) and their gate."""
