"""The shardlog CLI against a real daemon (the session ``daemon`` fixture in tests/conftest.py).

Each test writes logs under its own unique source, so tests sharing the daemon do not see each
other's data.  Commands run in-process with click's CliRunner; stdout and stderr are checked apart.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cli import connect as connect_mod
from cli.main import cli, read_chunks
from coordinator.config import SOCKET_POINTER, socket_path_for
from tests.daemon import Daemon as DaemonProcess

WIDTH = 100


def run(daemon: DaemonProcess | None, *args: str, input: str | bytes | None = None,
        env: dict[str, str] | None = None) -> Result:
    """``shardlog <args> [--data-dir D]`` in-process, with a fixed terminal width."""
    argv = list(args)
    if daemon is not None:
        argv += ["--data-dir", str(daemon.data_dir)]
    runner = CliRunner()
    full_env = {"COLUMNS": str(WIDTH), "SHARDLOG_SOCKET": "", "SHARDLOG_DATA_DIR": "", **(env or {})}
    return runner.invoke(cli, argv, input=input, env=full_env, catch_exceptions=False)


def unique_source() -> str:
    return "src-" + uuid.uuid4().hex[:12]


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def records_for(source: str, n: int, *, level: str = "info", minute: int = 0) -> list[dict[str, Any]]:
    """n records one second apart from 2024-01-01T10:<minute>:00Z, messages "event <i>"."""
    return [{"timestamp": f"2024-01-01T10:{minute:02d}:{i:02d}Z", "level": level, "message": f"event {i}",
             "source": source, "tags": ["t-even" if i % 2 == 0 else "t-odd"]} for i in range(n)]


def ingest_records(daemon: DaemonProcess, tmp_path: Path, records: list[Any]) -> Result:
    path = write_jsonl(tmp_path / f"in-{uuid.uuid4().hex[:6]}.jsonl", records)
    result = run(daemon, "ingest", str(path), "--format", "jsonl")
    assert result.exit_code == 0, result.output
    return result


def query_json(daemon: DaemonProcess, *args: str) -> dict[str, Any]:
    result = run(daemon, "query", *args, "--output", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# --- ingest ---------------------------------------------------------------------------------------


def test_ingest_file_prints_a_summary_and_stores_every_line(daemon: DaemonProcess, tmp_path: Path) -> None:
    source = unique_source()
    result = ingest_records(daemon, tmp_path, records_for(source, 3))
    assert result.stdout.startswith("ingested 3 logs (0 rejected) in "), result.output
    assert result.stdout.rstrip().endswith("logs/s")
    assert result.stderr == ""
    assert query_json(daemon, "--source", source)["total"] == 3


def test_ingest_json_reports_a_bad_line_by_number_and_exits_1(daemon: DaemonProcess, tmp_path: Path) -> None:
    source = unique_source()
    good = records_for(source, 3)
    # line 2 is not JSON; line 4 is blank (not a record); lines 1, 3, 5 are stored
    path = tmp_path / "mixed.jsonl"
    path.write_text(f"{json.dumps(good[0])}\n{{not json\n{json.dumps(good[1])}\n\n{json.dumps(good[2])}\n")
    result = run(daemon, "ingest", str(path), "--json")
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert list(summary) == ["count", "accepted", "rejected", "duration_s", "logs_per_s"]
    assert summary["count"] == 4 and summary["accepted"] == 3
    assert [item["line"] for item in summary["rejected"]] == [2]
    assert "JSON" in summary["rejected"][0]["reason"]
    assert summary["duration_s"] > 0 and summary["logs_per_s"] > 0
    assert len(result.stderr.strip().splitlines()) == 1 and "line 2" in result.stderr
    assert query_json(daemon, "--source", source)["total"] == 3  # the good lines are stored


def test_ingest_summary_lists_rejected_lines_for_people(daemon: DaemonProcess, tmp_path: Path) -> None:
    source = unique_source()
    path = write_jsonl(tmp_path / "bad.jsonl", [records_for(source, 1)[0], "[1, 2]", "oops"])
    result = run(daemon, "ingest", str(path), "--format", "jsonl")
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("ingested 1 log (2 rejected)")
    assert lines[1].startswith("line 2: ") and lines[2].startswith("line 3: ")
    assert result.stderr.startswith("shardlog: 2 of 3 records were rejected")


def test_ingest_numbers_lines_across_batches(daemon: DaemonProcess, tmp_path: Path) -> None:
    """With --batch 2, line 5 travels in the third request; its rejection still says line 5."""
    source = unique_source()
    records: list[Any] = records_for(source, 6)
    records[4] = "not json either"
    path = write_jsonl(tmp_path / "batched.jsonl", records)
    result = run(daemon, "ingest", str(path), "--format", "jsonl", "--batch", "2", "--json")
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert [item["line"] for item in summary["rejected"]] == [5]
    assert summary["accepted"] == 5
    assert query_json(daemon, "--source", source)["total"] == 5


def test_ingest_keeps_chunks_in_flight_and_a_failed_chunk_names_the_lines_not_stored(
        daemon: DaemonProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks travel several at a time; when one fails for good, no new chunk is sent, the error says
    which lines were not stored, and exactly the others are in the daemon."""
    import cli.main as cli_main
    from storage.errors import BadRequest

    source = unique_source()
    path = write_jsonl(tmp_path / "chunks.jsonl", records_for(source, 40))
    real_call = cli_main.call_retrying

    def failing_call(client: Any, op: str, args: dict[str, Any], **kwargs: Any) -> Any:
        if args.get("first_line") == 9:  # the third chunk of 4 lines: lines 9-12
            raise BadRequest("this chunk is refused by the test")
        return real_call(client, op, args, **kwargs)

    monkeypatch.setattr(cli_main, "call_retrying", failing_call)
    result = run(daemon, "ingest", str(path), "--format", "jsonl", "--batch", "4")
    assert result.exit_code == 1, result.output
    message = result.output
    assert "this chunk is refused by the test" in message and "lines 9-12 were not" in message, message
    stored = query_json(daemon, "--source", source, "--limit", "100")
    lines = {int(log["message"].split()[-1]) + 1 for log in stored["logs"]}  # "event i" is line i + 1
    assert f"{len(lines)} records were stored" in message, message
    chunks = {(line - 1) // 4 for line in lines}
    # lines 1-8 went before the failure was known; chunks after it stored only if already in flight,
    # and each of them whole
    assert {0, 1} <= chunks and 2 not in chunks, sorted(lines)
    assert lines == {line for chunk in chunks for line in range(4 * chunk + 1, 4 * chunk + 5)}, sorted(lines)
    assert max(chunks) <= 2 + cli_main.INGEST_IN_FLIGHT - 1, sorted(lines)
    last_sent = max(chunks | {2})
    if last_sent < 9:
        assert f"lines from {4 * (last_sent + 1) + 1} on were not sent" in message, message


def test_ingest_text_from_stdin_keeps_each_line_as_a_message(daemon: DaemonProcess) -> None:
    marker = uuid.uuid4().hex
    text = f"first {marker}\nsecond {marker} {{not json}}\n"
    result = run(daemon, "ingest", "-", "--format", "text", "--json", input=text)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accepted"] == 2
    found = query_json(daemon, marker, "--sort", "asc")
    assert [log["message"] for log in found["logs"]] == [f"first {marker}", f"second {marker} {{not json}}"]


def test_ingest_of_a_missing_file_is_a_usage_error(daemon: DaemonProcess, tmp_path: Path) -> None:
    result = run(daemon, "ingest", str(tmp_path / "absent.jsonl"))
    assert result.exit_code == 2


def test_read_chunks_numbers_lines_and_respects_the_batch_size() -> None:
    import io

    stream = io.BytesIO(b"a\r\nb\n\nd\xff\ne")
    chunks = list(read_chunks(stream, batch_lines=2))
    assert [(first, lines) for first, lines, _ in chunks] == [(1, ["a", "b"]), (3, ["", "d\ufffd"]), (5, ["e"])]
    assert sum(raw for _, _, raw in chunks) == len(b"a\r\nb\n\nd\xff\ne")


# --- query ----------------------------------------------------------------------------------------


def test_query_table_shows_the_logs_newest_first_with_a_footer(daemon: DaemonProcess, tmp_path: Path) -> None:
    source = unique_source()
    ingest_records(daemon, tmp_path, records_for(source, 3, level="error"))
    result = run(daemon, "query", f"source:{source}")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["TIMESTAMP", "LEVEL", "SOURCE", "MESSAGE"]
    assert [line.split()[0] for line in lines[1:4]] == ["2024-01-01T10:00:02Z", "2024-01-01T10:00:01Z",
                                                         "2024-01-01T10:00:00Z"]
    assert lines[1].split()[1:] == ["ERROR", source, "event", "2"]
    assert lines[4] == "3 of 3 logs"
    assert all(len(line) <= WIDTH for line in lines)


def test_query_json_and_jsonl_shapes(daemon: DaemonProcess, tmp_path: Path) -> None:
    source = unique_source()
    ingest_records(daemon, tmp_path, records_for(source, 2))
    parsed = query_json(daemon, "--source", source, "--sort", "asc")
    assert list(parsed) == ["total", "logs", "next_cursor", "partial"]
    assert parsed["total"] == 2 and parsed["next_cursor"] is None and parsed["partial"] is False
    first = parsed["logs"][0]
    assert set(first) == {"id", "timestamp", "level", "message", "source", "tags", "metadata", "thread_id",
                          "request_id", "user_id"}
    assert (first["timestamp"], first["level"], first["message"], first["tags"]) == \
        ("2024-01-01T10:00:00Z", "INFO", "event 0", ["t-even"])

    result = run(daemon, "query", "--source", source, "--sort", "asc", "--output", "jsonl")
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in result.stdout.splitlines()] == parsed["logs"]


def test_query_pages_with_the_cursor_until_none_is_left(daemon: DaemonProcess, tmp_path: Path) -> None:
    source = unique_source()
    ingest_records(daemon, tmp_path, records_for(source, 5))
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10):  # 5 logs in pages of 2: three pages, the loop must end well before 10
        args = ["--source", source, "--limit", "2"] + (["--cursor", cursor] if cursor else [])
        page = query_json(daemon, *args)
        assert page["total"] == 5
        seen.extend(log["message"] for log in page["logs"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"event {i}" for i in (4, 3, 2, 1, 0)]


def test_query_page_and_page_size(daemon: DaemonProcess, tmp_path: Path) -> None:
    source = unique_source()
    ingest_records(daemon, tmp_path, records_for(source, 5))
    page = query_json(daemon, "--source", source, "--page", "2", "--page-size", "2", "--sort", "asc")
    assert [log["message"] for log in page["logs"]] == ["event 2", "event 3"]


def test_query_filter_flags_and_time_bounds(daemon: DaemonProcess, tmp_path: Path) -> None:
    source = unique_source()
    records = records_for(source, 4) + records_for(source, 2, level="error", minute=5)
    records[-1]["message"] = "disk timeout"
    ingest_records(daemon, tmp_path, records)
    assert query_json(daemon, "--source", source, "--level", "ERROR")["total"] == 2
    assert query_json(daemon, "--source", source, "--min-severity", "warn", "--keyword", "timeout")["total"] == 1
    assert query_json(daemon, "--source", source, "--tag", "t-odd")["total"] == 3  # i = 1, 3 and 1
    # --from inclusive, --to exclusive
    window = query_json(daemon, "--source", source, "--from", "2024-01-01T10:00:01Z", "--to", "2024-01-01T10:00:03Z",
                        "--sort", "asc")
    assert [log["timestamp"] for log in window["logs"]] == ["2024-01-01T10:00:01Z", "2024-01-01T10:00:02Z"]


def test_bad_query_exits_1_with_one_line_naming_the_column(daemon: DaemonProcess) -> None:
    result = run(daemon, "query", "level:ERROR (timeout")
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("shardlog: ")
    assert "column" in lines[0]


def test_bad_cursor_is_a_user_error(daemon: DaemonProcess) -> None:
    result = run(daemon, "query", "--cursor", "not-a-cursor!")
    assert result.exit_code == 1
    assert "cursor" in result.stderr and len(result.stderr.splitlines()) == 1


def test_usage_errors_exit_2(daemon: DaemonProcess) -> None:
    assert run(daemon, "query", "--limit", "-1").exit_code == 2
    assert run(daemon, "query", "--output", "yaml").exit_code == 2
    assert run(daemon, "agg", "--top", "tags").exit_code == 2
    assert run(None, "nosuchcommand").exit_code == 2


# --- count / agg / tail / stats / metrics ---------------------------------------------------------


def test_count_prints_only_the_number(daemon: DaemonProcess, tmp_path: Path) -> None:
    source = unique_source()
    ingest_records(daemon, tmp_path, records_for(source, 3) + records_for(source, 1, level="error", minute=1))
    result = run(daemon, "count", f"source:{source}")
    assert result.exit_code == 0, result.output
    assert result.stdout == "4\n"
    assert run(daemon, "count", "level:ERROR", "--source", source).stdout == "1\n"


def test_agg_json_and_table(daemon: DaemonProcess, tmp_path: Path) -> None:
    source = unique_source()
    # 3 INFO at 10:00:0x (tags even, odd, even), 2 ERROR at 10:05:0x (even, odd)
    ingest_records(daemon, tmp_path, records_for(source, 3) + records_for(source, 2, level="error", minute=5))
    result = run(daemon, "agg", "--source", source, "--group-by", "level", "--top", "tags=1", "--interval", "1m",
                 "--output", "json")
    assert result.exit_code == 0, result.output
    parsed = json.loads(result.stdout)
    assert list(parsed) == ["total", "group_by", "top", "time_histogram", "partial"]
    assert parsed["total"] == 5
    assert parsed["group_by"] == {"INFO": 3, "ERROR": 2}
    assert parsed["top"] == {"tags": [["t-even", 3]]}
    assert parsed["time_histogram"] == [["2024-01-01T10:00:00Z", 3], ["2024-01-01T10:05:00Z", 2]]

    table = run(daemon, "agg", "--source", source, "--group-by", "level")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0] == "total: 5"
    assert lines[1] == "group by level:"
    assert [line.split() for line in lines[3:5]] == [["INFO", "3"], ["ERROR", "2"]]


def test_tail_without_follow_prints_the_newest_oldest_first(daemon: DaemonProcess, tmp_path: Path) -> None:
    source = unique_source()
    ingest_records(daemon, tmp_path, records_for(source, 4))
    result = run(daemon, "tail", "--source", source, "-n", "2")
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()
    assert [row.split()[0] for row in rows] == ["2024-01-01T10:00:02Z", "2024-01-01T10:00:03Z"]
    as_json = run(daemon, "tail", "--source", source, "-n", "1", "--output", "jsonl")
    assert [json.loads(line)["message"] for line in as_json.stdout.splitlines()] == ["event 3"]


def test_stats_and_metrics(daemon: DaemonProcess, tmp_path: Path) -> None:
    source = unique_source()
    ingest_records(daemon, tmp_path, records_for(source, 2))
    result = run(daemon, "stats", "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["total_logs"] >= 2 and stats["by_source"][source] == 2
    assert [shard["shard_id"] for shard in stats["shards"]] == [0, 1]
    table = run(daemon, "stats")
    assert table.exit_code == 0 and table.stdout.startswith("total logs: ")
    metrics = run(daemon, "metrics")
    assert metrics.exit_code == 0, metrics.output
    assert "# TYPE" in metrics.stdout and "shardlog_" in metrics.stdout


# --- finding the daemon ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["query"], ["count"], ["stats"], ["metrics"], ["tail"], ["agg"]])
def test_unreachable_daemon_exits_3_with_the_start_hint(tmp_path: Path, command: list[str]) -> None:
    data_dir = tmp_path / "nodaemon"
    result = run(None, *command, "--data-dir", str(data_dir))
    assert result.exit_code == 3
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"shardlog: cannot reach the daemon at {data_dir}/shardlog.sock (")
    assert lines[0].endswith(f"; start it with: shardlog serve --data-dir {data_dir}")


def test_unreachable_daemon_on_ingest_exits_3_before_reading(tmp_path: Path) -> None:
    result = run(None, "ingest", "-", "--data-dir", str(tmp_path), input="x\n")
    assert result.exit_code == 3 and "start it with" in result.stderr


def test_environment_variables_find_the_daemon(daemon: DaemonProcess) -> None:
    by_socket = run(None, "count", env={"SHARDLOG_SOCKET": str(daemon.socket_path)})
    assert by_socket.exit_code == 0, by_socket.output
    by_dir = run(None, "count", env={"SHARDLOG_DATA_DIR": str(daemon.data_dir)})
    assert by_dir.exit_code == 0, by_dir.output
    assert int(by_dir.stdout) >= 0
    # flags beat the environment
    flagged = run(None, "count", "--socket", str(daemon.socket_path), env={"SHARDLOG_SOCKET": "/nonexistent.sock"})
    assert flagged.exit_code == 0, flagged.output


def test_resolve_target_precedence(tmp_path: Path) -> None:
    env = {"SHARDLOG_SOCKET": "/e/s.sock", "SHARDLOG_DATA_DIR": "/e/dir"}
    resolve = connect_mod.resolve_target
    assert resolve("/f/shardlog.sock", "/f/dir", env).socket_path == Path("/f/shardlog.sock")
    assert resolve("/f/shardlog.sock", None, env).data_dir == Path("/f")  # DIR/shardlog.sock names DIR
    assert resolve(None, "/f/dir", env).socket_path == Path("/f/dir/shardlog.sock")
    assert resolve(None, None, env) == connect_mod.Target(Path("/e/s.sock"), None)
    assert resolve(None, None, {"SHARDLOG_DATA_DIR": "/e/dir"}).socket_path == Path("/e/dir/shardlog.sock")
    default = resolve(None, None, {})
    assert default.socket_path == socket_path_for(default.data_dir or Path("?"))


def test_a_long_data_dir_finds_the_socket_recorded_in_it(tmp_path: Path) -> None:
    long_dir = tmp_path / ("x" * 120)
    long_dir.mkdir()
    (long_dir / SOCKET_POINTER).write_text("/tmp/elsewhere/shardlog.sock\n")
    target = connect_mod.resolve_target(None, str(long_dir), {})
    assert target.socket_path == Path("/tmp/elsewhere/shardlog.sock")
    assert target.data_dir == long_dir


# --- serve ----------------------------------------------------------------------------------------


def test_serve_passes_its_options_to_serve_main_and_exits_with_its_code(monkeypatch: pytest.MonkeyPatch) -> None:
    import coordinator.daemon

    seen: list[dict[str, Any]] = []

    def fake_serve_main(flags: dict[str, Any]) -> int:
        seen.append(dict(flags))
        return 3

    monkeypatch.setattr(coordinator.daemon, "serve_main", fake_serve_main)
    result = run(None, "serve", "--data-dir", "/tmp/x", "--shards", "4", "--http", "", "--retention", "7d")
    assert result.exit_code == 3
    assert seen == [{"data_dir": "/tmp/x", "shards": 4, "config": None, "http": "", "tcp": None, "syslog": None,
                     "retention": "7d"}]
    assert run(None, "serve", "--shards", "0").exit_code == 2


def test_tail_follow_prints_new_logs_and_ctrl_c_exits_0(daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """-f long-polls ``tail`` with the cursor it got.  A log ingested after the first answer is
    printed by the next poll; Ctrl+C (KeyboardInterrupt during a poll) ends the command with exit 0."""
    source = unique_source()
    real_call = connect_mod.Connection.call
    polls: list[dict[str, Any]] = []

    def call(self: connect_mod.Connection, op: str, args: dict[str, Any] | None = None, **kw: Any) -> Any:
        if op == "tail" and args and args.get("cursor"):
            polls.append(dict(args))
            if len(polls) == 1:  # a log arrives while tail -f is waiting
                daemon.call("ingest", {"records": [{"message": "arrived later", "source": source}]})
            else:
                raise KeyboardInterrupt
        return real_call(self, op, args, **kw)

    monkeypatch.setattr(connect_mod.Connection, "call", call)
    result = run(daemon, "tail", "-f", "--source", source, "--output", "jsonl")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["message"] for line in result.stdout.splitlines()] == ["arrived later"]
    assert len(polls) == 2 and polls[0]["wait_s"] > 0 and polls[0]["source"] == source
    assert polls[1]["cursor"] != polls[0]["cursor"]  # the second poll continues after the new log
