"""The Measurement Protocol body: JSON checked against GA's rules into an ``MpRequest``.

Every error names its field in GA's validation-message shape (``/debug/mp/collect`` answers
with the list, ``/mp/collect`` with a 400). A message quotes field paths the back end wrote,
never a value, and goes back to that back end only: never to logs, metrics or the audit.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import msgspec

MAX_EVENTS = 25
MAX_PARAMS = 25
MAX_USER_PROPERTIES = 25
MAX_ITEMS = 200
MAX_MESSAGES = 20  # validation messages returned at most; the rest are the same mistakes
NAME_LIMIT = 40  # event and parameter names
USER_PROPERTY_NAME_LIMIT = 24
CLIENT_ID_LIMIT = 256
# GA's reserved names (Measurement Protocol reference, "Reserved names").
RESERVED_EVENT_NAMES = frozenset(
    """ad_activeview ad_click ad_exposure ad_query ad_reward adunit_exposure app_background
    app_clear_data app_exception app_remove app_store_refund app_store_subscription_cancel
    app_store_subscription_convert app_store_subscription_renew app_update app_upgrade
    dynamic_link_app_open dynamic_link_app_update dynamic_link_first_open error first_open
    first_visit in_app_purchase notification_dismiss notification_foreground notification_open
    notification_receive os_update session_start session_start_with_rollout user_engagement
    """.split()
)
RESERVED_PREFIXES = ("_", "firebase_", "ga_", "google_", "gtag.")
RESERVED_PARAM_NAMES = frozenset({"firebase_conversion"})
RESERVED_USER_PROPERTIES = frozenset(
    "first_open_time first_visit_time last_deep_link_referrer user_id first_open_after_install"
    .split()
)
CONSENT_FIELD = "analytics_consent"  # the back end's assertion; never forwarded
DEVICE_FIELDS = frozenset(
    """category language screen_resolution operating_system operating_system_version model
    brand browser browser_version""".split()
)

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

Scalar = str | int | float
Item = dict[str, Scalar]
ParamValue = Scalar | list[Item]


@dataclass(frozen=True, slots=True)
class ValidationMessage:
    field_path: str
    description: str
    code: str  # GA's validationCode: VALUE_INVALID, VALUE_REQUIRED, NAME_INVALID, ...

    def to_json(self) -> dict[str, str]:
        return {
            "fieldPath": self.field_path,
            "description": self.description,
            "validationCode": self.code,
        }


class InvalidRequest(ValueError):
    """The body breaks GA's rules. ``str()`` is a fixed code, never the input."""

    def __init__(self, messages: list[ValidationMessage]) -> None:
        super().__init__("invalid_request")
        self.messages = messages[:MAX_MESSAGES]


@dataclass(frozen=True, slots=True)
class MpEvent:
    name: str
    params: dict[str, ParamValue]


@dataclass(frozen=True, slots=True)
class MpRequest:
    """What the proxy reads of a valid body. ``present``: every top-level field given."""

    client_id: str
    events: tuple[MpEvent, ...]
    user_properties: dict[str, Scalar] = field(default_factory=dict)
    timestamp_micros: int | None = None
    consent: str | None = None  # the back end's analytics consent assertion, as written
    ip_override: str | None = None
    user_agent: str | None = None
    device: dict[str, Scalar] = field(default_factory=dict)
    present: tuple[str, ...] = ()


def parse(body: bytes) -> MpRequest:
    """Decode and check ``body``; raise ``InvalidRequest`` listing what is wrong."""
    try:
        data = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        message = ValidationMessage("", "the body is not JSON", "VALUE_INVALID")
        raise InvalidRequest([message]) from None
    return _Checker().request(data)


class _Checker:
    def __init__(self) -> None:
        self.messages: list[ValidationMessage] = []

    def fail(self, path: str, description: str, code: str = "VALUE_INVALID") -> None:
        self.messages.append(ValidationMessage(path, description, code))

    def request(self, data: Any) -> MpRequest:
        if not isinstance(data, dict):
            raise InvalidRequest([ValidationMessage("", "the body must be a JSON object",
                                                    "VALUE_INVALID")])
        client_id = data.get("client_id")
        if client_id is None:
            why = ("app streams (app_instance_id) are not supported: client_id is required"
                   if "app_instance_id" in data else "client_id is required")
            self.fail("client_id", why, "VALUE_REQUIRED")
        elif not isinstance(client_id, str) or not 0 < len(client_id) <= CLIENT_ID_LIMIT:
            self.fail("client_id", f"a string of 1 to {CLIENT_ID_LIMIT} characters")
        for key in ("user_id", "ip_override", "user_agent", CONSENT_FIELD):
            if key in data and not isinstance(data[key], str):
                self.fail(key, "must be a string")
        events = self.events(data.get("events"))
        properties = self.user_properties(data.get("user_properties"))
        stamp = self.timestamp(data.get("timestamp_micros"))
        device = self.device(data.get("device"))
        for key in ("consent", "user_location", "user_data"):
            if key in data and not isinstance(data[key], dict):
                self.fail(key, "must be an object")
        if self.messages:
            raise InvalidRequest(self.messages)
        return MpRequest(
            client_id=str(client_id),
            events=events,
            user_properties=properties,
            timestamp_micros=stamp,
            consent=data.get(CONSENT_FIELD),
            ip_override=data.get("ip_override"),
            user_agent=data.get("user_agent"),
            device=device,
            present=tuple(str(k) for k in data),
        )

    def events(self, events: Any) -> tuple[MpEvent, ...]:
        if events is None:
            self.fail("events", "at least one event is required", "VALUE_REQUIRED")
            return ()
        if not isinstance(events, list) or not events:
            self.fail("events", "a non-empty array of events")
            return ()
        if len(events) > MAX_EVENTS:
            self.fail("events", f"at most {MAX_EVENTS} events a request", "EXCEEDED_MAX_ENTITIES")
            return ()
        return tuple(self.event(f"events[{i}]", e) for i, e in enumerate(events))

    def event(self, path: str, event: Any) -> MpEvent:
        if not isinstance(event, dict):
            self.fail(path, "an event must be an object")
            return MpEvent("", {})
        name = event.get("name")
        if name is None:
            self.fail(f"{path}.name", "the event name is required", "VALUE_REQUIRED")
        elif not isinstance(name, str):
            self.fail(f"{path}.name", "must be a string", "NAME_INVALID")
        elif self.name_ok(f"{path}.name", name, NAME_LIMIT) and (
            name in RESERVED_EVENT_NAMES or name.startswith(RESERVED_PREFIXES)
        ):
            self.fail(f"{path}.name", "a name GA reserves", "NAME_RESERVED")
        params = event.get("params", {})
        if not isinstance(params, dict):
            self.fail(f"{path}.params", "must be an object")
            params = {}
        if len(params) > MAX_PARAMS:
            self.fail(f"{path}.params", f"at most {MAX_PARAMS} parameters an event",
                      "EXCEEDED_MAX_ENTITIES")
        checked: dict[str, ParamValue] = {}
        for key, value in params.items():
            where = f"{path}.params.{key}"
            if not self.name_ok(where, key, NAME_LIMIT):
                continue
            if key in RESERVED_PARAM_NAMES or key.startswith(RESERVED_PREFIXES):
                self.fail(where, "a parameter name GA reserves", "NAME_RESERVED")
            elif key == "items":
                checked[key] = self.items(where, value)
            elif key == "debug_mode" and isinstance(value, bool):
                checked[key] = int(value)
            elif self.scalar(where, value):
                checked[key] = value
        return MpEvent(name if isinstance(name, str) else "", checked)

    def items(self, path: str, items: Any) -> list[Item]:
        if not isinstance(items, list):
            self.fail(path, "an array of items")
            return []
        if len(items) > MAX_ITEMS:
            self.fail(path, f"at most {MAX_ITEMS} items an event", "EXCEEDED_MAX_ENTITIES")
            return []
        out: list[Item] = []
        for i, item in enumerate(items):
            where = f"{path}[{i}]"
            if not isinstance(item, dict):
                self.fail(where, "an item must be an object")
                continue
            checked: Item = {}
            for key, value in item.items():
                if self.name_ok(f"{where}.{key}", key, NAME_LIMIT) and self.scalar(
                    f"{where}.{key}", value
                ):
                    checked[key] = value
            out.append(checked)
        return out

    def user_properties(self, properties: Any) -> dict[str, Scalar]:
        if properties is None:
            return {}
        if not isinstance(properties, dict):
            self.fail("user_properties", "must be an object")
            return {}
        if len(properties) > MAX_USER_PROPERTIES:
            self.fail("user_properties", f"at most {MAX_USER_PROPERTIES} user properties",
                      "EXCEEDED_MAX_ENTITIES")
        out: dict[str, Scalar] = {}
        for key, wrapped in properties.items():
            where = f"user_properties.{key}"
            if not self.name_ok(where, key, USER_PROPERTY_NAME_LIMIT):
                continue
            if key in RESERVED_USER_PROPERTIES or key.startswith(RESERVED_PREFIXES):
                self.fail(where, "a user property name GA reserves", "NAME_RESERVED")
                continue
            if not isinstance(wrapped, dict) or "value" not in wrapped:
                self.fail(where, 'a user property is an object {"value": ...}')
                continue
            value = wrapped["value"]
            if value is not None and self.scalar(f"{where}.value", value):
                out[key] = value
        return out

    def timestamp(self, stamp: Any) -> int | None:
        if stamp is None:
            return None
        if isinstance(stamp, str) and stamp.isdigit() and len(stamp) <= 19:
            stamp = int(stamp)
        if isinstance(stamp, bool) or not isinstance(stamp, int) or stamp < 0:
            self.fail("timestamp_micros", "microseconds since the Unix epoch, an integer")
            return None
        return stamp

    def device(self, device: Any) -> dict[str, Scalar]:
        if device is None:
            return {}
        if not isinstance(device, dict):
            self.fail("device", "must be an object")
            return {}
        out: dict[str, Scalar] = {}
        for key, value in device.items():
            if key not in DEVICE_FIELDS:
                continue  # not a device field GA knows: dropped
            if self.scalar(f"device.{key}", value):
                out[key] = value
        return out

    def name_ok(self, path: str, name: str, limit: int) -> bool:
        if len(name) > limit:
            self.fail(path, f"a name of at most {limit} characters", "NAME_INVALID")
            return False
        if not _NAME.fullmatch(name) and not name.startswith("_"):
            self.fail(path, "letters, digits and underscores, starting with a letter",
                      "NAME_INVALID")
            return False
        return True

    def scalar(self, path: str, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.fail(path, "must be a string or a number")
            return False
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(path, "must be a finite number")
            return False
        return True
