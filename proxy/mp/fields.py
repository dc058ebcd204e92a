"""Where each Measurement Protocol field goes: the ``/g/collect`` parameter whose rule in the
compiled policy it takes, or the proxy's own treatment. One table, read by the sanitiser
(``proxy/mp/sanitise.py``) and by the transfer report."""

from __future__ import annotations

# Event parameters with a web-protocol counterpart: the counterpart's rule applies (URL
# scrubbing, title scrubbing, gtag's shapes). Every other parameter is an ``ep.<name>`` (text)
# or ``epn.<name>`` (number): kept only when allow-listed in privacy.event_params.
EVENT_PARAMS = {
    "page_location": "dl",
    "page_referrer": "dr",
    "page_title": "dt",
    "currency": "cu",
    "session_id": "sid",
    "engagement_time_msec": "_et",
    "debug_mode": "_dbg",
}
# Item fields and their two-letter keys in a ``pr<N>`` item: the item rule applies.
ITEM_FIELDS = {
    "item_id": "id",
    "item_name": "nm",
    "item_brand": "br",
    "item_category": "ca",
    "item_category2": "c2",
    "item_category3": "c3",
    "item_category4": "c4",
    "item_category5": "c5",
    "item_variant": "va",
    "price": "pr",
    "quantity": "qt",
    "coupon": "cp",
    "discount": "ds",
    "item_list_name": "ln",
    "item_list_id": "li",
    "index": "lp",
    "affiliation": "af",
    "location_id": "lo",
    "creative_name": "cn",
    "creative_slot": "cs",
    "promotion_id": "pi",
    "promotion_name": "pn",
}
NUMERIC_ITEM_FIELDS = frozenset({"price", "quantity", "discount", "index"})
# Device fields with a web counterpart; browser, OS and category are generalised like the
# User-Agent (proxy/mp/sanitise.py); the rest of ``device`` is dropped.
DEVICE_PARAMS = {"language": "ul", "screen_resolution": "sr"}
DEVICE_CATEGORIES = frozenset({"desktop", "mobile", "tablet", "smart tv"})
DEVICE_OS = frozenset({"Windows", "Macintosh", "Mac OS X", "Linux", "Chrome OS", "ChromeOS",
                       "Android", "iOS", "iPadOS"})
DEVICE_BROWSERS = frozenset({"Chrome", "Firefox", "Safari", "Edge", "Opera",
                             "Samsung Internet"})
DEVICE_DROPPED = ("operating_system_version", "model", "brand")

# The proxy's own treatment of the top-level fields, as the report states it.
TOP_LEVEL = (
    ("client_id", "replaced", "the pseudonym a `/g/collect` hit with the same `cid` gets "
     "(same salt, window and measurement id)"),
    ("user_id", "dropped", "never forwarded"),
    ("events[].name", "checked", "GA's rules (400 when broken), then the `en` rule"),
    ("events[].params", "as `ep.`/`epn.`", "the rules of their `/g/collect` counterparts"),
    ("events[].params.items", "as `pr<N>`", "the item rule: known fields only, scrubbed"),
    ("user_properties", "as `up.`/`upn.`", "allow-listed names only, balanced profile only"),
    ("timestamp_micros", "kept or dropped", "kept only within GA's window (72 h back, less "
     "`state.outbox_max_age`; a minute ahead); otherwise GA dates the events on arrival"),
    ("ip_override", "replaced", "by what `privacy.location.mode` sends for that address; "
     "without one, nothing (never the back end's own address)"),
    ("user_location", "dropped", "never forwarded; the location comes from `ip_override`"),
    ("device", "generalised", "category, OS and browser family and browser major only; "
     "`language` and `screen_resolution` as `ul` and `sr`; model, brand and OS version "
     "dropped"),
    ("user_agent", "generalised", "rebuilt as the User-Agent header is"),
    ("consent", "forced", "`ad_user_data` and `ad_personalization` DENIED, as `npa=1`"),
    ("non_personalized_ads", "forced", "`true`"),
    ("user_data", "dropped", "never forwarded (hashed e-mail, phone and address)"),
    ("analytics_consent", "read, dropped", "the back end's consent assertion; never forwarded"),
    ("any other field", "dropped", "never forwarded"),
)

# Names the trace of a Measurement Protocol request uses for the fields above: safe to write
# in the audit trail (any other name a back end sent is written as "(other)").
TRACE_NAMES = frozenset(
    """user_id user_data user_location app_instance_id analytics_consent ip_override
    user_agent consent non_personalized_ads timestamp_micros items device.category
    device.operating_system device.browser device.browser_version device.model device.brand
    device.operating_system_version""".split()
)
