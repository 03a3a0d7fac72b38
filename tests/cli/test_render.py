"""cli.render: pure rendering of query, agg, ingest and stats results (no daemon)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from cli import render


def _log(message: str = "hello", *, ts: str = "2024-01-01T14:02:00Z", level: str = "INFO",
         source: str = "db", **extra: object) -> dict[str, object]:
    log: dict[str, object] = {"id": 1, "timestamp": ts, "level": level, "message": message, "source": source,
                              "tags": [], "metadata": {}, "thread_id": None, "request_id": None, "user_id": None}
    log.update(extra)
    return log


# --- truncation -----------------------------------------------------------------------------------


def test_truncate_keeps_short_text_and_cuts_long_text_with_an_ellipsis() -> None:
    assert render.truncate("abc", 3) == "abc"
    assert render.truncate("abcd", 3) == "ab…"
    assert render.truncate("abcd", 1) == "…"
    assert render.truncate("abcd", 0) == ""


def test_one_line_replaces_control_characters() -> None:
    assert render.one_line("a\nb\tc\r\x1bd\x85e\u2028f") == "a b c  d e f"


def test_table_rows_fit_the_width_and_cut_the_message() -> None:
    long_message = "word " * 100
    result = {"total": 2, "logs": [_log(long_message), _log("short")], "next_cursor": None, "partial": False}
    text = render.render_logs_table(result, width=80)
    lines = text.splitlines()
    assert lines[0].split() == ["TIMESTAMP", "LEVEL", "SOURCE", "MESSAGE"]
    assert all(len(line) <= 80 for line in lines), text
    assert lines[1].endswith("…")
    assert lines[2].endswith("short")
    # columns line up: the message starts at the same offset in every row
    assert lines[1].index("word") == lines[2].index("short") == lines[0].index("MESSAGE")


def test_table_puts_a_multiline_message_on_one_row() -> None:
    result = {"total": 1, "logs": [_log("first\nsecond")], "next_cursor": None, "partial": False}
    lines = render.render_logs_table(result, width=120).splitlines()
    assert len(lines) == 3  # header, one row, footer
    assert lines[1].endswith("first second")


def test_table_cuts_a_long_source_to_the_column_limit() -> None:
    source = "s" * 60
    result = {"total": 1, "logs": [_log("m", source=source)], "next_cursor": None, "partial": False}
    row = render.render_logs_table(result, width=200).splitlines()[1]
    shown = row.split()[2]
    assert len(shown) == render.MAX_SOURCE_WIDTH and shown.endswith("…")


def test_footer_names_the_total_the_next_cursor_and_a_partial_answer() -> None:
    result = {"total": 7, "logs": [_log(), _log()], "next_cursor": "abc", "partial": True, "failed_shards": [1]}
    footer = render.render_logs_table(result, width=100).splitlines()[-1]
    assert footer.startswith("2 of 7 logs")
    assert "--cursor abc" in footer
    assert "PARTIAL" in footer and "shards 1" in footer


def test_empty_result_says_so_without_a_header() -> None:
    text = render.render_logs_table({"total": 0, "logs": [], "next_cursor": None, "partial": False}, width=80)
    assert text == "no logs match"


@settings(max_examples=60, deadline=None)
@given(message=st.text(max_size=300), source=st.text(max_size=40), width=st.integers(min_value=80, max_value=250))
def test_every_row_fits_any_width_that_holds_the_fixed_columns(message: str, source: str, width: int) -> None:
    # fixed columns: 30 (timestamp) + 5 (level) + 24 (max source) + 3 gaps of 2 = 65; the message
    # keeps MIN_MESSAGE_WIDTH=20 -> any width >= 85 must hold; 80..84 may overflow by design
    log = _log(message, ts="2024-01-01T14:02:00.123456789Z", source=source)
    row = render.render_logs_table({"total": 1, "logs": [log], "next_cursor": None, "partial": False},
                                   width=width).split("\n")[1]
    if width >= 85:
        assert len(row) <= width
    assert len(row.splitlines()) == 1  # no line break of any kind (\r, \x85, \u2028, ...)


# --- json / jsonl ---------------------------------------------------------------------------------


def test_query_json_has_exactly_the_design_keys_in_order() -> None:
    result = {"total": 3, "logs": [_log("é")], "next_cursor": "c1", "partial": False, "failed_shards": [0],
              "extra": 1}
    text = render.render_query_json(result)
    parsed = json.loads(text)
    assert list(parsed) == ["total", "logs", "next_cursor", "partial"]
    assert parsed == {"total": 3, "logs": [_log("é")], "next_cursor": "c1", "partial": False}
    assert "é" in text  # readable, not \u00e9
    assert "\n" not in text


def test_jsonl_prints_one_log_per_line() -> None:
    logs = [_log("a"), _log("b\nc")]
    lines = render.render_jsonl(logs).split("\n")
    assert [json.loads(line) for line in lines] == logs
    assert render.render_jsonl([]) == ""


def test_agg_json_keeps_only_the_parts_asked_for_in_design_order() -> None:
    result = {"partial": False, "time_histogram": [["2024-01-01T14:02:00Z", 2]], "total": 2,
              "group_by": {"ERROR": 2}, "failed_shards": []}
    parsed = json.loads(render.render_agg_json(result))
    assert list(parsed) == ["total", "group_by", "time_histogram", "partial"]
    assert parsed["group_by"] == {"ERROR": 2}


def test_agg_table_sorts_counts_and_labels_each_part() -> None:
    result = {"total": 6, "group_by": {"INFO": 1, "ERROR": 5}, "top": {"tags": [["api", 4], ["db", 2]]},
              "time_histogram": [["2024-01-01T14:02:00Z", 6]], "partial": False}
    lines = render.render_agg_table(result, width=80, group_by="level").splitlines()
    assert lines[0] == "total: 6"
    start = lines.index("group by level:")
    assert lines[start + 1].split() == ["LEVEL", "COUNT"]
    assert lines[start + 2].split() == ["ERROR", "5"]  # highest count first
    assert lines[start + 3].split() == ["INFO", "1"]
    top = lines.index("top tags:")
    assert lines[top + 2].split() == ["api", "4"]
    bucket = lines.index("time histogram:")
    assert lines[bucket + 2].split() == ["2024-01-01T14:02:00Z", "6"]


def test_agg_table_cuts_long_values_to_the_width() -> None:
    result = {"total": 1, "group_by": {"x" * 500: 1}, "partial": False}
    lines = render.render_agg_table(result, width=60, group_by="message").splitlines()
    assert all(len(line) <= 60 for line in lines), lines


# --- ingest and stats -----------------------------------------------------------------------------


def test_ingest_json_shape_counts_rejected_records() -> None:
    rejected = [{"line": 3, "reason": "not valid JSON", "extra": True}]
    parsed = json.loads(render.render_ingest_json(accepted=4, rejected=rejected, duration_s=2.0))
    assert list(parsed) == ["count", "accepted", "rejected", "duration_s", "logs_per_s"]
    assert parsed["count"] == 5 and parsed["accepted"] == 4
    assert parsed["rejected"] == [{"line": 3, "reason": "not valid JSON"}]
    assert parsed["duration_s"] == 2.0 and parsed["logs_per_s"] == 2.0


def test_ingest_summary_shows_at_most_ten_rejections() -> None:
    rejected = [{"line": i, "reason": f"bad {i}"} for i in range(1, 13)]
    lines = render.render_ingest_summary(accepted=12000, rejected=rejected, duration_s=1.2).splitlines()
    assert lines[0] == "ingested 12000 logs (12 rejected) in 1.2 s, 10000 logs/s"
    assert lines[1] == "line 1: bad 1"
    assert lines[10] == "line 10: bad 10"
    assert "2 more" in lines[11] and len(lines) == 12


def test_ingest_summary_with_zero_duration_does_not_divide_by_zero() -> None:
    assert render.render_ingest_summary(accepted=1, rejected=[], duration_s=0.0) == \
        "ingested 1 log (0 rejected) in 0.0 s, 0 logs/s"


def test_stats_table_shows_totals_and_one_row_per_shard() -> None:
    stats = {"total_logs": 10, "bytes_on_disk": 2048, "by_level": {"INFO": 7, "ERROR": 3}, "by_source": {},
             "by_tag": {}, "oldest": None, "newest": None, "partial": False,
             "shards": [{"shard_id": 0, "up": True, "restarts": 0, "records": 6, "blocks": 1, "bytes_on_disk": 1024},
                        {"shard_id": 1, "up": False, "restarts": 2}]}
    lines = render.render_stats(stats, width=100).splitlines()
    assert lines[0] == "total logs: 10"
    assert "2.0 KiB" in lines[1] and "205 bytes/log" in lines[1]
    assert lines[3] == "by level: INFO 7, ERROR 3"
    assert lines[-2].split() == ["0", "yes", "0", "6", "1", "1.0", "KiB"]
    assert lines[-1].split() == ["1", "NO", "2", "-", "-", "-"]


def test_human_bytes_units() -> None:
    assert render.human_bytes(10) == "10 B"
    assert render.human_bytes(1536) == "1.5 KiB"
    assert render.human_bytes(3 * 1024**3) == "3.0 GiB"


def test_read_chunks_does_not_split_a_stack_trace_across_requests() -> None:
    import io

    from cli.main import read_chunks

    text = ("2015-10-18 18:01:47,978 ERROR [main] a.B: boom\n" + "\tat a.B.c(B.java:1)\n" * 3
            + "2015-10-18 18:01:48,000 INFO [main] a.B: next\n")
    chunks = list(read_chunks(io.BytesIO(text.encode()), batch_lines=2, keep_traces=True))
    # the trace's 'at' lines stay with their first line; the next record starts a chunk
    assert [(first, len(lines)) for first, lines, _ in chunks] == [(1, 4), (5, 1)]
    plain = list(read_chunks(io.BytesIO(text.encode()), batch_lines=2))
    assert [(first, len(lines)) for first, lines, _ in plain] == [(1, 2), (3, 2), (5, 1)]
