"""The advertising and audience endpoints a (rewritten) Google tag may call on the proxy.

Once every Google host in the tag names the proxy, whatever the tag decides to send arrives
here: GA4 hits at ``/g/collect`` (the pipeline's), and the rest, which is advertising,
remarketing, conversion linking, Google Signals and the tag's own diagnostics. Those are
answered the way the tag expects (``204``, or a 1x1 GIF when an image was asked for) and
never forwarded. The paths below are the ones Google's tag builds, with and without
``server_container_url`` (``/gs/ccm/collect`` is the server-container form of
``pagead2.googlesyndication.com/ccm/collect``).
"""

from __future__ import annotations

import base64
import re

ADS_ENDPOINT = re.compile(
    r"^/(?:"
    r"(?:g/|gs/|as/d/|g/d/|d/)?ccm/"  # consent mode conversion and collection pings
    r"|(?:g/|gs/)?measurement/"  # measurement/conversion
    r"|(?:gs/|d/)?pagead/"  # conversions, remarketing, form data, regclk, gen_204
    r"|ads/"  # ads/ga-audiences (Google Signals remarketing lists)
    r"|g/s/collect|ag/g/c|ga/g/c"  # Google Signals' collection
    r"|activityi?;|fls/|ddm/"  # Floodlight / Campaign Manager
    r"|travel/"  # travel/flights/click/conversion
    r"|td(?:$|/)|a$"  # the tag's own diagnostics to googletagmanager.com
    r")"
)

# The smallest transparent GIF: what an <img> beacon expects back.
GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


def is_ads_endpoint(path: str) -> bool:
    return ADS_ENDPOINT.match(path) is not None


def wants_image(accept: str) -> bool:
    """An ``<img>`` request (``Accept: image/avif,image/webp,…``), not fetch or sendBeacon."""
    return accept.startswith("image/")
