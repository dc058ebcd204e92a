"""Observe: metrics, logs, the audit trail, explain, the transfer report and the dashboard."""
