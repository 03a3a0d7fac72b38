"""``shardlog alerts ...`` against the shared real daemon (tests/conftest.py).

Commands run in-process with click's CliRunner (stdout and stderr apart), except ``alerts watch``,
which runs as a real process so Ctrl+C (SIGINT) ends it the way it ends for a person.  Rule names and
the words their queries match are unique per test, so tests sharing the daemon do not meet.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any

from click.testing import CliRunner, Result

from cli.main import cli
from tests.daemon import REPO_ROOT
from tests.daemon import Daemon as DaemonProcess

WIDTH = 120


def run(daemon: DaemonProcess | None, *args: str, input: str | None = None) -> Result:
    argv = list(args) + (["--data-dir", str(daemon.data_dir)] if daemon is not None else [])
    env = {"COLUMNS": str(WIDTH), "SHARDLOG_SOCKET": "", "SHARDLOG_DATA_DIR": ""}
    return CliRunner().invoke(cli, argv, input=input, env=env, catch_exceptions=False)


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert result.stderr == ""
    return result.stdout


def one_line_error(result: Result, code: int, *needles: str) -> None:
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shardlog: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def fire(daemon: DaemonProcess, word: str, n: int = 1) -> None:
    records = [{"level": "ERROR", "message": f"{word} broke {i}", "source": "cli-test"} for i in range(n)]
    assert daemon.call("ingest", {"records": records})["accepted"] == n


def rules_json(daemon: DaemonProcess) -> dict[str, dict[str, Any]]:
    return {rule["name"]: rule for rule in json.loads(ok(run(daemon, "alerts", "list", "--json")))}


def test_add_list_enable_disable_remove(daemon: DaemonProcess) -> None:
    name = unique("cli-rule")
    out = ok(run(daemon, "alerts", "add", name, "--query", "level:ERROR timeout", "--threshold", "5", "--window",
                 "2m", "--cooldown", "10m", "--severity", "HIGH", "--group-by", "source", "--description", "db down"))
    assert out.strip() == (f"added alert rule {name!r}: level:ERROR timeout — 5 in 2m, per source, cooldown 10m, "
                           "severity high")
    rule = rules_json(daemon)[name]
    assert (rule["threshold"], rule["window_s"], rule["cooldown_s"], rule["severity"], rule["group_by"],
            rule["description"], rule["enabled"]) == (5, 120, 600, "high", "source", "db down", True)
    table = ok(run(daemon, "alerts", "list")).splitlines()
    assert table[0].split() == ["NAME", "ENABLED", "SEVERITY", "THRESHOLD", "WINDOW", "COOLDOWN", "GROUP", "BY",
                                "FIRING", "QUERY"]
    row = next(line for line in table if line.startswith(name))
    assert row.split()[:8] == [name, "yes", "high", "5", "2m", "10m", "source", "-"]
    assert row.endswith("level:ERROR timeout") and all(len(line) <= WIDTH for line in table)

    assert ok(run(daemon, "alerts", "disable", name)).strip() == f"disabled alert rule {name!r}"
    assert rules_json(daemon)[name]["enabled"] is False
    assert ok(run(daemon, "alerts", "enable", name)).strip() == f"enabled alert rule {name!r}"
    assert rules_json(daemon)[name]["enabled"] is True

    one_line_error(run(daemon, "alerts", "add", name, "--query", "x"), 1, "exists")
    assert "saved" in ok(run(daemon, "alerts", "add", name, "--query", "x", "--replace"))
    assert rules_json(daemon)[name]["threshold"] == 1  # replaced whole: defaults again

    assert ok(run(daemon, "alerts", "remove", name)).strip() == f"removed alert rule {name!r}"
    assert name not in rules_json(daemon)
    for command in ("remove", "enable", "disable"):
        one_line_error(run(daemon, "alerts", command, name), 1, f"no alert rule named {name!r}")


def test_add_refuses_bad_rules(daemon: DaemonProcess) -> None:
    name = unique("cli-bad")
    one_line_error(run(daemon, "alerts", "add", name, "--query", "level:ERROR (oops"), 1, "column")
    one_line_error(run(daemon, "alerts", "add", name, "--query", "x", "--threshold", "0"), 1, "threshold")
    one_line_error(run(daemon, "alerts", "add", name, "--query", "x", "--window", "soon"), 1, "soon")
    one_line_error(run(daemon, "alerts", "add", name, "--query", "x", "--group-by", "timestamp"), 1, "timestamp")
    one_line_error(run(daemon, "alerts", "add", name, "--query", "x | stats count()"), 1, "pipes")
    # usage errors are click's: exit 2
    assert run(daemon, "alerts", "add", name).exit_code == 2  # no --query
    assert run(daemon, "alerts", "add", name, "--query", "x", "--threshold", "many").exit_code == 2
    assert run(daemon, "alerts", "add", name, "--query", "x", "--severity", "urgent").exit_code == 2
    assert run(daemon, "alerts", "frobnicate").exit_code == 2
    assert name not in rules_json(daemon)


def test_history_table_json_since_export_and_import(daemon: DaemonProcess, tmp_path: Path) -> None:
    name, word = unique("cli-hist"), unique("word").replace("-", "")
    ok(run(daemon, "alerts", "add", name, "--query", word, "--threshold", "2", "--severity", "critical"))
    fire(daemon, word, 2)

    lines = ok(run(daemon, "alerts", "history", "--json")).splitlines()
    mine = [alert for alert in map(json.loads, lines) if alert["rule"] == name]  # JSON lines
    assert len(mine) == 1 and mine[0]["count"] == 2 and mine[0]["severity"] == "critical"
    table = ok(run(daemon, "alerts", "history", "--since", "-1h")).splitlines()
    assert table[0].split() == ["TRIGGERED", "AT", "SEVERITY", "RULE", "GROUP", "COUNT", "MESSAGE"]
    row = next(line for line in table if name in line)
    assert row.split()[1:5] == ["critical", name, "-", "2"] and row.split()[0] == mine[0]["triggered_at"]
    assert ok(run(daemon, "alerts", "history", "--since", "2200-01-01")).strip() == "no alerts"
    one_line_error(run(daemon, "alerts", "history", "--since", "the dawn of time"), 1, "the dawn of time")
    assert run(daemon, "alerts", "history", "--limit", "0").exit_code == 2

    exported = tmp_path / "alerts.jsonl"
    out = ok(run(daemon, "alerts", "export", str(exported)))
    assert out.startswith("exported ") and str(exported) in out
    assert [a for a in map(json.loads, exported.read_text().splitlines()) if a["rule"] == name] == mine

    renamed = unique("cli-imported")
    to_import = tmp_path / "in.jsonl"
    to_import.write_text(json.dumps({**mine[0], "rule": renamed, "key": None}) + "\n\n")
    assert ok(run(daemon, "alerts", "import", str(to_import))).strip() == f"imported 1 alerts from {to_import}"
    again = [a for a in map(json.loads, ok(run(daemon, "alerts", "history", "--json")).splitlines())
             if a["rule"] == renamed]
    assert [a["message"] for a in again] == [mine[0]["message"]]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"rule": unique("never")}) + "\n{broken\n")
    one_line_error(run(daemon, "alerts", "import", str(bad)), 1, "line 2", "nothing was imported")
    bad.write_text('{"rule": 5}\n')
    one_line_error(run(daemon, "alerts", "import", str(bad)), 1, "line 1")
    assert run(daemon, "alerts", "import", str(tmp_path / "missing.jsonl")).exit_code == 2
    one_line_error(run(daemon, "alerts", "export", str(tmp_path / "no-dir" / "x.jsonl")), 1, "cannot write")


def test_unreachable_daemon_exits_3(tmp_path: Path) -> None:
    result = run(None, "alerts", "list", "--data-dir", str(tmp_path / "nothing"))
    one_line_error(result, 3, "cannot reach the daemon")


def _lines(stream: IO[str], into: "queue.Queue[str]") -> None:
    for line in stream:
        into.put(line)


def test_watch_prints_alerts_as_they_fire_until_ctrl_c(daemon: DaemonProcess) -> None:
    name, word = unique("cli-watch"), unique("word").replace("-", "")
    ok(run(daemon, "alerts", "add", name, "--query", word, "--severity", "low"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDLOG_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["COLUMNS"] = "300"  # the line is cut to the terminal width
    process = subprocess.Popen([sys.executable, "-m", "cli.main", "alerts", "watch", "--data-dir",
                                str(daemon.data_dir)], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    out: queue.Queue[str] = queue.Queue()
    err: queue.Queue[str] = queue.Queue()
    readers = [threading.Thread(target=_lines, args=(stream, into), daemon=True)
               for stream, into in ((process.stdout, out), (process.stderr, err))]
    for reader in readers:
        reader.start()
    try:
        assert "watching alerts" in err.get(timeout=30)  # it has its cursor: what fires now is shown
        fire(daemon, word)
        deadline = time.monotonic() + 30
        line = ""
        while name not in line:
            line = out.get(timeout=max(deadline - time.monotonic(), 0.01))
        assert " FIRING low " in line and f"{name}: 1 matching logs" in line
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        for reader in readers:  # the pipes reach EOF once the process is gone
            reader.join(30)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
