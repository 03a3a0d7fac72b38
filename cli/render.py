"""Rendering command results for people (tables) and for scripts (json / jsonl).

This module owns every byte the CLI prints on stdout.  It is pure: functions take the result
objects of the coordinator's RPC ops (docs/rpc.md) and a terminal width, and return text without
a trailing newline.  Nothing here talks to a socket or reads the environment, so the shapes are
tested without a daemon.

Guarantees:

* ``query --output json`` prints exactly ``{"total", "logs", "next_cursor", "partial"}`` (DESIGN §6),
  whatever extra keys the daemon adds; ``jsonl`` prints one log object per line.
* ``agg --output json`` prints the parts that were asked for in the order of DESIGN §6
  (``total``, ``group_by``, ``histogram``, ``top``, ``time_histogram``) plus ``partial``.
* ``ingest --json`` prints exactly ``{"count", "accepted", "rejected", "duration_s", "logs_per_s"}``.
* A table row never exceeds ``width`` characters when the fixed columns fit; messages and long
  sources are cut with an ellipsis and control characters become spaces, so one log is one line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

#: Length of an RFC 3339 UTC timestamp with nanoseconds (2024-01-01T14:02:00.123456789Z).
MAX_TIMESTAMP_WIDTH = 30
#: Marks text cut to fit the terminal.
ELLIPSIS = "…"
#: A source wider than this is cut: the message is what people read.
MAX_SOURCE_WIDTH = 24
#: The message column keeps at least this many characters even on a very narrow terminal (the
#: row then wraps, which beats showing no message at all).
MIN_MESSAGE_WIDTH = 20
#: Rejection lines shown after the people's ingest summary; --json lists them all.
MAX_REJECTIONS_SHOWN = 10
#: Space between table columns.
GAP = "  "

#: C0 and C1 controls and the Unicode line / paragraph separators: anything a terminal or
#: ``str.splitlines`` would treat as a line break or an escape.
_CONTROL_TO_SPACE = {code: " " for code in (*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)}


def to_json(value: Any) -> str:
    """Compact-ish JSON on one line; non-ASCII kept readable (stdout is UTF-8 text)."""
    return json.dumps(value, ensure_ascii=False)


def one_line(text: str) -> str:
    """``text`` with newlines, tabs and other control characters replaced by spaces."""
    return text.translate(_CONTROL_TO_SPACE)


def truncate(text: str, width: int) -> str:
    """``text`` cut to at most ``width`` characters, ending in an ellipsis when cut."""
    if width <= 0:
        return ""
    if len(text) <= width:
        return text
    return text[: width - 1] + ELLIPSIS


# --- logs ---------------------------------------------------------------------------------------


def source_width_for(logs: Sequence[Mapping[str, Any]]) -> int:
    """The source column width for these logs: the longest source, at least the header's width,
    at most ``MAX_SOURCE_WIDTH``."""
    longest = max((len(one_line(str(log.get("source") or ""))) for log in logs), default=0)
    return min(max(longest, len("SOURCE")), MAX_SOURCE_WIDTH)


def _level_width(logs: Sequence[Mapping[str, Any]]) -> int:
    return max([len("LEVEL")] + [len(str(log.get("level") or "")) for log in logs])


def _timestamp_width(logs: Sequence[Mapping[str, Any]]) -> int:
    return max([len("TIMESTAMP")] + [len(str(log.get("timestamp") or "")) for log in logs])


def render_log_row(log: Mapping[str, Any], *, width: int, timestamp_width: int = 0, level_width: int = 5,
                   source_width: int = len("SOURCE")) -> str:
    """One log as one table line: timestamp, level, source, message (cut to fit ``width``)."""
    timestamp = str(log.get("timestamp") or "").ljust(timestamp_width)
    level = str(log.get("level") or "").ljust(level_width)
    source = truncate(one_line(str(log.get("source") or "")), source_width).ljust(source_width)
    fixed = len(timestamp) + len(level) + len(source) + 3 * len(GAP)
    message = truncate(one_line(str(log.get("message") or "")), max(width - fixed, MIN_MESSAGE_WIDTH))
    return GAP.join((timestamp, level, source, message)).rstrip()


def render_logs_table(result: Mapping[str, Any], *, width: int) -> str:
    """A query result as a table with a header and a footer naming the total and the next cursor."""
    logs: list[Mapping[str, Any]] = list(result.get("logs") or [])
    lines: list[str] = []
    if logs:
        widths = {"timestamp_width": _timestamp_width(logs), "level_width": _level_width(logs),
                  "source_width": source_width_for(logs)}
        header = {"timestamp": "TIMESTAMP", "level": "LEVEL", "source": "SOURCE", "message": "MESSAGE"}
        lines.append(render_log_row(header, width=width, **widths))
        lines.extend(render_log_row(log, width=width, **widths) for log in logs)
    lines.append(render_query_footer(result))
    return "\n".join(lines)


def render_query_footer(result: Mapping[str, Any]) -> str:
    logs = result.get("logs") or []
    total = result.get("total", len(logs))
    noun = "log" if total == 1 else "logs"
    footer = f"{len(logs)} of {total} {noun}" if logs or total else "no logs match"
    cursor = result.get("next_cursor")
    if cursor:
        footer += f"; next page: --cursor {cursor}"
    if result.get("partial"):
        failed = result.get("failed_shards")
        which = f"shards {', '.join(map(str, failed))}" if failed else "some shards"
        footer += f"; PARTIAL: {which} did not answer, so logs may be missing"
    return footer


def query_json_object(result: Mapping[str, Any]) -> dict[str, Any]:
    """Exactly the DESIGN §6 keys, in order."""
    return {
        "total": result.get("total"),
        "logs": list(result.get("logs") or []),
        "next_cursor": result.get("next_cursor"),
        "partial": bool(result.get("partial", False)),
    }


def render_query_json(result: Mapping[str, Any]) -> str:
    return to_json(query_json_object(result))


def render_jsonl(logs: Sequence[Mapping[str, Any]]) -> str:
    """One log object per line (no trailing newline; empty string for no logs)."""
    return "\n".join(to_json(dict(log)) for log in logs)


# --- aggregations -------------------------------------------------------------------------------

#: DESIGN §6 order of the parts of ``agg --output json``.
AGG_KEYS = ("total", "group_by", "histogram", "top", "time_histogram")


def agg_json_object(result: Mapping[str, Any]) -> dict[str, Any]:
    """The parts the daemon returned (only those asked for) in DESIGN order, plus ``partial``."""
    out: dict[str, Any] = {key: result[key] for key in AGG_KEYS if key in result}
    out["partial"] = bool(result.get("partial", False))
    return out


def render_agg_json(result: Mapping[str, Any]) -> str:
    return to_json(agg_json_object(result))


def _count_table(pairs: Sequence[Sequence[Any]], *, width: int, value_header: str) -> list[str]:
    """Two columns, value and count, indented by two spaces; values cut to fit ``width``."""
    if not pairs:
        return ["  (none)"]
    count_width = max(len("COUNT"), *(len(str(pair[1])) for pair in pairs))
    longest = max(len(value_header), *(len(one_line(str(pair[0]))) for pair in pairs))
    value_width = max(min(longest, width - 2 - len(GAP) - count_width), len(value_header))
    rows = [f"  {value_header.ljust(value_width)}{GAP}{'COUNT'.rjust(count_width)}"]
    for value, count in pairs:
        shown = truncate(one_line(str(value)), value_width).ljust(value_width)
        rows.append(f"  {shown}{GAP}{str(count).rjust(count_width)}")
    return rows


def _by_count(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    """Highest count first; ties by value so the output is stable."""
    return sorted(counts.items(), key=lambda item: (-item[1], str(item[0])))


def render_agg_table(result: Mapping[str, Any], *, width: int, group_by: str | None = None,
                     histogram: str | None = None) -> str:
    """An aggregation result for people: the total, then one small table per part."""
    lines = [f"total: {result.get('total', 0)}"]
    if "group_by" in result:
        lines.append(f"group by {group_by or 'field'}:")
        lines.extend(_count_table(_by_count(result["group_by"]), width=width, value_header=(group_by or "VALUE").upper()))
    if "histogram" in result:
        lines.append(f"histogram of {histogram or 'field'}:")
        lines.extend(_count_table(_by_count(result["histogram"]), width=width,
                                  value_header=(histogram or "VALUE").upper()))
    for field, pairs in (result.get("top") or {}).items():
        lines.append(f"top {field}:")
        lines.extend(_count_table(pairs, width=width, value_header=field.upper()))
    if "time_histogram" in result:
        lines.append("time histogram:")
        lines.extend(_count_table(result["time_histogram"], width=width, value_header="BUCKET"))
    if result.get("partial"):
        lines.append("PARTIAL: some shards did not answer, so counts may be low")
    return "\n".join(lines)


# --- ingest -------------------------------------------------------------------------------------


def logs_per_s(accepted: int, duration_s: float) -> float:
    return accepted / duration_s if duration_s > 0 else 0.0


def ingest_json_object(*, accepted: int, rejected: Sequence[Mapping[str, Any]], duration_s: float) -> dict[str, Any]:
    """DESIGN §6: ``count`` is every record read (accepted + rejected; blank lines are not records)."""
    return {
        "count": accepted + len(rejected),
        "accepted": accepted,
        "rejected": [{"line": item.get("line"), "reason": item.get("reason")} for item in rejected],
        "duration_s": round(duration_s, 6),
        "logs_per_s": round(logs_per_s(accepted, duration_s), 1),
    }


def render_ingest_json(*, accepted: int, rejected: Sequence[Mapping[str, Any]], duration_s: float) -> str:
    return to_json(ingest_json_object(accepted=accepted, rejected=rejected, duration_s=duration_s))


def render_ingest_summary(*, accepted: int, rejected: Sequence[Mapping[str, Any]], duration_s: float,
                          width: int = 10_000) -> str:
    """``ingested 12000 logs (3 rejected) in 1.2 s, 10000 logs/s`` and up to 10 rejection lines."""
    noun = "log" if accepted == 1 else "logs"
    rate = logs_per_s(accepted, duration_s)
    lines = [f"ingested {accepted} {noun} ({len(rejected)} rejected) in {duration_s:.1f} s, {rate:.0f} logs/s"]
    for item in rejected[:MAX_REJECTIONS_SHOWN]:
        lines.append(truncate(f"line {item.get('line')}: {one_line(str(item.get('reason')))}", width))
    if len(rejected) > MAX_REJECTIONS_SHOWN:
        lines.append(f"... and {len(rejected) - MAX_REJECTIONS_SHOWN} more rejected lines (use --json to list all)")
    return "\n".join(lines)


# --- stats --------------------------------------------------------------------------------------


def human_bytes(size_bytes: int | float) -> str:
    value = float(size_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _top_counts(counts: Mapping[str, int], limit: int = 10) -> str:
    pairs = _by_count(counts)
    text = ", ".join(f"{value} {count}" for value, count in pairs[:limit])
    if len(pairs) > limit:
        text += f", … ({len(pairs) - limit} more)"
    return text or "-"


def render_stats(stats: Mapping[str, Any], *, width: int) -> str:
    """The daemon's stats for people: totals, the biggest levels / sources / tags, one row per shard."""
    total = int(stats.get("total_logs") or 0)
    size_bytes = int(stats.get("bytes_on_disk") or 0)
    per_log = f" ({size_bytes / total:.0f} bytes/log)" if total else ""
    lines = [
        f"total logs: {total}",
        f"on disk: {human_bytes(size_bytes)}{per_log}",
        f"time range: {stats.get('oldest') or '-'} .. {stats.get('newest') or '-'}",
        truncate(f"by level: {_top_counts(stats.get('by_level') or {})}", width),
        truncate(f"by source: {_top_counts(stats.get('by_source') or {})}", width),
        truncate(f"by tag: {_top_counts(stats.get('by_tag') or {})}", width),
    ]
    shards = list(stats.get("shards") or [])
    if shards:
        lines.append("shards:")
        header = ("SHARD", "UP", "RESTARTS", "RECORDS", "BLOCKS", "DISK")
        rows = [header] + [
            (str(s.get("shard_id")), "yes" if s.get("up") else "NO", str(s.get("restarts", 0)),
             "-" if s.get("records") is None else str(s.get("records")),
             "-" if s.get("blocks") is None else str(s.get("blocks")),
             "-" if s.get("bytes_on_disk") is None else human_bytes(s["bytes_on_disk"]))
            for s in shards
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines.extend("  " + GAP.join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows)
    if stats.get("partial"):
        lines.append("PARTIAL: some shards did not answer, so totals may be low")
    return "\n".join(lines)
