"""The privacy audit trail: what happened to a beacon, recorded without its personal values."""

from proxy.observe.audit.reader import TailError, admin_url, format_record, tail
from proxy.observe.audit.record import (
    MEMO_SIZE,
    OTHER,
    Record,
    RecordBuilder,
    decode_entries,
    known_names,
    query_tid,
)
from proxy.observe.audit.trail import (
    STREAM_KEY,
    AuditTrail,
    AuditUnavailable,
    MemoryAuditTrail,
    RedisAuditTrail,
    make_audit,
    make_audit_redis,
    parse_page,
)

__all__ = [
    "MEMO_SIZE",
    "OTHER",
    "STREAM_KEY",
    "AuditTrail",
    "AuditUnavailable",
    "MemoryAuditTrail",
    "Record",
    "RecordBuilder",
    "RedisAuditTrail",
    "TailError",
    "admin_url",
    "decode_entries",
    "format_record",
    "known_names",
    "make_audit",
    "make_audit_redis",
    "parse_page",
    "query_tid",
    "tail",
]
