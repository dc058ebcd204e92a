"""The dashboard on the admin port: the policy in words, live counts, audit records, explain."""

from proxy.observe.dashboard.app import (
    AUDIT_LIMIT,
    CONTENT_SECURITY_POLICY,
    HISTORY_INTERVAL,
    HISTORY_SIZE,
    Dashboard,
    RecentAudit,
    dashboard_app,
    no_audit,
    register,
)
from proxy.observe.dashboard.counts import Totals, read_totals
from proxy.observe.dashboard.policy_words import describe_policy
from proxy.observe.dashboard.try_beacon import (
    MAX_HAR_BEACONS,
    MAX_INPUT,
    BadInput,
    parse_explain_request,
)

__all__ = [
    "AUDIT_LIMIT",
    "CONTENT_SECURITY_POLICY",
    "HISTORY_INTERVAL",
    "HISTORY_SIZE",
    "MAX_HAR_BEACONS",
    "MAX_INPUT",
    "BadInput",
    "Dashboard",
    "RecentAudit",
    "Totals",
    "dashboard_app",
    "describe_policy",
    "no_audit",
    "parse_explain_request",
    "read_totals",
    "register",
]
