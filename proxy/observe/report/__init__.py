"""The transfer report: what leaves for Google, in what form, and CNIL's proxy conditions."""

from proxy.observe.report.conditions import CNIL_TITLES, Condition
from proxy.observe.report.document import render
from proxy.observe.report.forwarded import Field, NeverItem
from proxy.observe.report.sections import Collision, collision
from proxy.observe.report.transfer import Report, build_report

__all__ = [
    "CNIL_TITLES",
    "Collision",
    "Condition",
    "Field",
    "NeverItem",
    "Report",
    "build_report",
    "collision",
    "render",
]
