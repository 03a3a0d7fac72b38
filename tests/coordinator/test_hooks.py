"""Daemon-side pre-ingest hooks (coordinator.hooks): config checks, the runner on its own, and a real
daemon whose hooks live in a module written to a temporary directory on its PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import textwrap
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from coordinator.config import ConfigError, load_config
from coordinator.hooks import HookRunner, parse_hook_specs
from storage.record import normalize_record
from tests.daemon import Daemon, free_port

HOOK_MODULE = textwrap.dedent('''
    """Hooks for the shardlog tests."""

    def enrich(record):
        record["metadata"]["region"] = "eu-1"
        record["tags"].append("enriched")
        return record

    def drop_debug(record):
        return None if record["level"] == "DEBUG" else record

    def explode(record):
        if "boom" in record["message"]:
            record["message"] = "half-edited"  # changed in place, then the hook fails
            raise RuntimeError("hook bug")
        return record

    def bad_return(record):
        if "badreturn" in record["message"]:
            return "not a dict"
        if "toolong" in record["message"]:
            return {**record, "message": "x" * 300000}
        return record

    def sender_shape(record):
        if "rawshape" in record["message"]:
            return {"timestamp": "2024-01-01T00:00:00Z", "message": record["message"], "level": "warning",
                    "team": "core"}
        return record

    NOT_CALLABLE = 42
''')
HOOKS = ["enrich", "drop_debug", "explode", "bad_return", "sender_shape"]


def _write_module(directory: Path) -> str:
    name = "slhooks_" + uuid.uuid4().hex[:8]  # unique: imported modules stay in sys.modules
    (directory / f"{name}.py").write_text(HOOK_MODULE)
    return name


# --- config -------------------------------------------------------------------------------------------


def test_hooks_are_read_from_the_file_and_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _write_module(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    config_file = tmp_path / "shardlog.toml"
    config_file.write_text(f'hooks = ["{module}:enrich", "{module}:drop_debug"]\n')
    assert load_config(config_file=config_file, env={}).hooks == (f"{module}:enrich", f"{module}:drop_debug")
    env = {"SHARDLOG_HOOKS": f"{module}:explode, {module}:enrich"}
    assert load_config(env=env).hooks == (f"{module}:explode", f"{module}:enrich")


def test_every_bad_hook_entry_is_reported_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _write_module(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    env = {"SHARDLOG_HOOKS": f"no_such_module_xyz:f,{module}:missing,{module}:NOT_CALLABLE,not a spec,{module}:enrich",
           "SHARDLOG_SHARDS": "999"}
    with pytest.raises(ConfigError) as caught:
        load_config(env=env)
    problems = caught.value.details["problems"]
    assert len(problems) == 5, problems  # four hook problems and the unrelated shard count
    text = " | ".join(problems)
    for fragment in ("cannot import module 'no_such_module_xyz'", f"{module}:missing", "NOT_CALLABLE",
                     "'not a spec'", "shards is 999"):
        assert fragment in text, text


def test_parse_hook_specs_keeps_the_good_entries() -> None:
    good, problems = parse_hook_specs(["a.b:c", 5, "d:e.f"])
    assert good == ("a.b:c", "d:e.f")
    assert len(problems) == 1 and problems[0].startswith("hooks entries [5] are not 'module:function'")
    assert parse_hook_specs(" a:b ,, c:d ") == (("a:b", "c:d"), [])
    assert parse_hook_specs(3)[0] == ()


# --- the runner -----------------------------------------------------------------------------------------


def keep_time(record: dict[str, Any]) -> dict[str, Any]:
    record["message"] += "!"
    return record


def rename_time(record: dict[str, Any]) -> dict[str, Any]:
    record["ts_ns"] = "soon"
    return record


class _Counter:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def labels(self, hook: str) -> "_Counter":
        self._label = hook
        return self

    def inc(self) -> None:
        self.counts[self._label] = self.counts.get(self._label, 0) + 1


def test_the_runner_keeps_exact_timestamps_and_counts_invalid_results() -> None:
    errors = _Counter()
    runner = HookRunner([f"{__name__}:keep_time", f"{__name__}:rename_time"], errors=errors)
    # 5 ns after the epoch: an int this small would be read as seconds if it were not kept exact
    records = [normalize_record({"timestamp": 5, "message": "m"}, now_ns=10**18)]
    records[0]["ts_ns"] = 5
    kept, dropped = runner.apply(records, now_ns=10**18)
    assert dropped == 0
    assert kept[0]["ts_ns"] == 5 and kept[0]["message"] == "m!"  # rename_time's result was invalid: not applied
    assert errors.counts == {f"{__name__}:rename_time": 1}


# --- a real daemon ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hooked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str, str]]:
    directory = tmp_path_factory.mktemp("hooks")
    module = _write_module(directory)
    port = free_port()
    env = {"PYTHONPATH": os.pathsep.join([str(directory), str(Path(__file__).resolve().parents[2])]),
           "SHARDLOG_HOOKS": ",".join(f"{module}:{name}" for name in HOOKS)}
    with Daemon(shards=2, http=f"127.0.0.1:{port}", env=env, name="hooks") as process:
        yield process, module, f"http://127.0.0.1:{port}"


def _logs(daemon: Daemon, marker: str) -> list[dict[str, Any]]:
    return daemon.call("query", {"q": marker, "sort": "asc", "limit": 100})["logs"]


def _counter(daemon: Daemon, name: str, hook: str) -> float:
    for family in text_string_to_metric_families(daemon.call("metrics")["text"]):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("hook") == hook:
                return sample.value
    return 0.0


def test_hooks_enrich_records_from_every_path(hooked: tuple[Daemon, str, str]) -> None:
    daemon, _, url = hooked
    marker = "e" + uuid.uuid4().hex[:10]
    answer = daemon.call("ingest", {"records": [{"message": f"rpc {marker}", "tags": ["a"]}]})
    assert answer == {"accepted": 1, "rejected": []}
    daemon.call("ingest_lines", {"lines": [f"2024-01-01 00:00:00,000 INFO [main] a.B: text {marker}"],
                                 "format": "text"})
    body = json.dumps({"message": f"http {marker}"}).encode()
    with urllib.request.urlopen(urllib.request.Request(url + "/insert/jsonline", data=body, method="POST"),
                                timeout=30) as response:
        assert json.loads(response.read())["accepted"] == 1
    logs = _logs(daemon, marker)
    assert sorted(log["message"].split()[0] for log in logs) == ["http", "rpc", "text"]
    for log in logs:
        assert log["metadata"]["region"] == "eu-1" and "enriched" in log["tags"], log
    assert [log for log in logs if log["message"].startswith("rpc")][0]["tags"] == ["a", "enriched"]


def test_a_hook_drops_records_which_are_counted_not_rejected(hooked: tuple[Daemon, str, str]) -> None:
    daemon, module, _ = hooked
    marker = "d" + uuid.uuid4().hex[:10]
    before = _counter(daemon, "shardlog_hook_dropped_total", f"{module}:drop_debug")
    records = [{"message": f"keep {marker}", "level": "info"}, {"message": f"drop {marker}", "level": "debug"},
               {"message": f"drop2 {marker}", "level": "DEBUG"}]
    assert daemon.call("ingest", {"records": records}) == {"accepted": 1, "rejected": [], "dropped": 2}
    assert [log["message"] for log in _logs(daemon, marker)] == [f"keep {marker}"]
    assert _counter(daemon, "shardlog_hook_dropped_total", f"{module}:drop_debug") == before + 2


def test_a_failing_hook_keeps_the_record_as_it_was_and_is_counted_and_logged(hooked: tuple[Daemon, str, str]) -> None:
    daemon, module, _ = hooked
    marker = "f" + uuid.uuid4().hex[:10]
    spec = f"{module}:explode"
    before = _counter(daemon, "shardlog_hook_errors_total", spec)
    records = [{"message": f"boom {i} {marker}", "source": "svc"} for i in range(5)]
    assert daemon.call("ingest", {"records": records}) == {"accepted": 5, "rejected": []}
    logs = _logs(daemon, marker)
    assert sorted(log["message"] for log in logs) == sorted(r["message"] for r in records)  # not "half-edited"
    for log in logs:  # the hooks before the failing one did apply; the ones after it too
        assert log["metadata"]["region"] == "eu-1" and log["source"] == "svc"
    assert _counter(daemon, "shardlog_hook_errors_total", spec) == before + 5
    reports = [line for line in daemon.log_text().splitlines() if f"hook {spec} raised RuntimeError: hook bug" in line]
    assert 1 <= len(reports) < 5, reports  # logged, but throttled


def test_a_hook_returning_garbage_or_an_invalid_record_changes_nothing(hooked: tuple[Daemon, str, str]) -> None:
    daemon, module, _ = hooked
    marker = "g" + uuid.uuid4().hex[:10]
    spec = f"{module}:bad_return"
    before = _counter(daemon, "shardlog_hook_errors_total", spec)
    records = [{"message": f"badreturn {marker}"}, {"message": f"toolong {marker}"}]
    assert daemon.call("ingest", {"records": records})["accepted"] == 2
    assert sorted(log["message"] for log in _logs(daemon, marker)) == sorted(r["message"] for r in records)
    assert _counter(daemon, "shardlog_hook_errors_total", spec) == before + 2


def test_a_hook_may_return_a_record_in_a_senders_shape(hooked: tuple[Daemon, str, str]) -> None:
    daemon, _, _ = hooked
    marker = "r" + uuid.uuid4().hex[:10]
    daemon.call("ingest", {"records": [{"message": f"rawshape {marker}", "level": "error"}]})
    [log] = _logs(daemon, marker)
    assert (log["timestamp"], log["level"], log["metadata"]) == ("2024-01-01T00:00:00Z", "WARN", {"team": "core"})


def test_a_daemon_with_an_unimportable_hook_refuses_to_start() -> None:
    process = Daemon(shards=1, env={"SHARDLOG_HOOKS": "no_such_module_abc:f"}, name="badhook")
    try:
        code, log_text = process.run_to_exit()
    finally:
        process.close()
    assert code == 2, log_text
    assert "cannot import module 'no_such_module_abc'" in log_text
