"""Looking after a store without a terminal: lookups, inventories, verify, gc, sign, reports.

Above the decorator (it names functions as ``@fleche`` does), below the CLI,
which is a thin shell over it.  Upkeep never follows a symbolic link and never
touches a path outside the store.

Inside: ``_lookup`` (what users type: ages, sizes, conditions, names),
``_scan`` (the inventory of a store), ``_verify``, ``_gc``, ``_sign``,
``_report`` (``fleche stats --plot``).
"""

from fleche.upkeep._gc import apply_gc, plan_gc, refuse_read_only_gc
from fleche.upkeep._lookup import (
    AmbiguousError,
    ParseError,
    find_digest,
    find_function,
    jsonable,
    parse_age,
    parse_assignment,
    parse_condition,
    parse_cutoff,
    parse_filter,
    parse_size,
    parse_terms,
    parse_value,
    query,
    query_result,
)
from fleche.upkeep._report import (
    FunctionUsage,
    StoreReport,
    build_report,
    report_format,
    report_html,
    write_report,
)
from fleche.upkeep._scan import has_marker, read_records, scan, stats
from fleche.upkeep._sign import sign
from fleche.upkeep._verify import VerifyReport, verify

__all__ = [
    "AmbiguousError",
    "FunctionUsage",
    "ParseError",
    "StoreReport",
    "VerifyReport",
    "apply_gc",
    "build_report",
    "find_digest",
    "find_function",
    "has_marker",
    "jsonable",
    "parse_age",
    "parse_assignment",
    "parse_condition",
    "parse_cutoff",
    "parse_filter",
    "parse_terms",
    "parse_size",
    "parse_value",
    "plan_gc",
    "query",
    "query_result",
    "read_records",
    "refuse_read_only_gc",
    "report_format",
    "report_html",
    "scan",
    "sign",
    "stats",
    "verify",
    "write_report",
]
