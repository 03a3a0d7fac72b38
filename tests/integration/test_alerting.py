"""Alerting end to end with the real daemon (DESIGN §5, issue 4).

* Threshold, window, cooldown, resolve and group_by semantics on the shared session daemon; each
  test's rules match only its own logs (a unique token in the query).  The engine evaluates an
  ingest's counts before the ingest is acknowledged, so "did not fire" is checked right after the
  ack, against the rule's window count, without waiting.
* Restart safety with kill -9 of the coordinator on a daemon of its own: history intact, no re-fire
  inside the cooldown, windows rebuilt from the shards ("two before the restart and one after fire
  a threshold of 3"); rules from the config file ([[alerts]]).
* Notifications from a daemon with a [notify] table: a local HTTP server receiving webhooks (the
  first answer is a 500, so the retry is exercised), an exec command writing its stdin to a file,
  the metrics, and the HTTP API /api/v1/alerts/...
* The real Prometheus Alertmanager (Debian's prometheus-alertmanager), checked through its own API;
  skipped with the reason when the binary is not installed.
* The Python API: add_alert_rule, notification hooks, get_alerts, persist / load.
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from coordinator.api import AlertRule, AlertSeverity, LogAnalyticsEngine
from storage.timefmt import parse_timestamp
from tests.daemon import Daemon, free_port, short_root
from tests.helpers import S_NS, wait_for

#: a firing alert must reach a receiver well within this (the daemon's tick is 1 s)
DELIVERY_TIMEOUT_S = 20.0


def token() -> str:
    return "probe" + uuid.uuid4().hex[:10]


def logs(word: str, n: int, *, level: str = "ERROR", source: str = "app", ts_ns: int | None = None
         ) -> list[dict[str, Any]]:
    ts_ns = time.time_ns() if ts_ns is None else ts_ns
    return [{"timestamp": ts_ns, "level": level, "message": f"{word} failure number {i}", "source": source}
            for i in range(n)]


def ingest(daemon: Daemon, records: list[dict[str, Any]]) -> None:
    answer = daemon.call("ingest", {"records": records})
    assert answer["accepted"] == len(records), answer


def add_rule(daemon: Daemon, **rule: Any) -> dict[str, Any]:
    return daemon.call("alerts_add", {"rule": rule, "replace": True})


def fired(daemon: Daemon, rule: str) -> list[dict[str, Any]]:
    return [a for a in daemon.call("alerts_history", {"limit": 100_000})["alerts"] if a["rule"] == rule]


def rule_info(daemon: Daemon, name: str) -> dict[str, Any]:
    return next(r for r in daemon.call("alerts_list")["rules"] if r["name"] == name)


def at_least(n: int, items: list[Any]) -> list[Any] | None:
    """``items`` once it has ``n`` entries (a ``wait_for`` condition)."""
    return items if len(items) >= n else None


def watch_cursor(daemon: Daemon) -> int:
    return int(daemon.call("alerts_watch")["cursor"])


def wait_event(daemon: Daemon, cursor: int, rule: str, status: str, timeout_s: float = DELIVERY_TIMEOUT_S
               ) -> dict[str, Any]:
    """Long-poll ``alerts_watch`` from ``cursor`` until an event of ``rule`` with ``status``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = daemon.call("alerts_watch", {"cursor": cursor, "wait_s": 2.0})
        for event in answer["events"]:
            if event["rule"] == rule and event["status"] == status:
                return event
        cursor = answer["cursor"]
    raise AssertionError(f"no {status} event of rule {rule!r} within {timeout_s} s")


# --- semantics on the shared daemon -------------------------------------------------------------------


def test_threshold_fires_once_with_evidence_then_cooldown_holds(daemon: Daemon) -> None:
    word, name = token(), "threshold-" + token()
    add_rule(daemon, name=name, query=f"level:ERROR {word}", threshold=3, window="10m", cooldown="1h",
             severity="high", description="too many failures")
    ingest(daemon, logs(word, 2) + logs(word, 5, level="INFO"))
    assert fired(daemon, name) == []
    assert rule_info(daemon, name)["window_count"] == {"": 2}
    ingest(daemon, logs(word, 1, source="late"))
    alerts = fired(daemon, name)
    assert len(alerts) == 1
    alert = alerts[0]
    assert (alert["count"], alert["threshold"], alert["window_s"], alert["severity"]) == (3, 3, 600, "high")
    assert alert["query"] == f"level:ERROR {word}" and alert["description"] == "too many failures"
    assert alert["group"] is None and alert["message"].startswith(f"{name}: 3 matching logs")
    assert len(alert["samples"]) == 3 and all(word in s["message"] and s["level"] == "ERROR" for s in alert["samples"])
    assert alert["samples"][0]["source"] == "late"  # newest first
    ingest(daemon, logs(word, 4))
    info = rule_info(daemon, name)
    assert info["window_count"] == {"": 7} and info["firing"] == [""]
    assert len(fired(daemon, name)) == 1  # inside the cooldown


def test_logs_older_than_the_window_do_not_count(daemon: Daemon) -> None:
    word, name = token(), "window-" + token()
    add_rule(daemon, name=name, query=word, threshold=3, window="1m", cooldown="1h")
    ingest(daemon, logs(word, 3, ts_ns=time.time_ns() - 120 * S_NS))  # event time 2 min ago
    assert fired(daemon, name) == []
    assert rule_info(daemon, name)["window_count"] in ({}, {"": 0})
    ingest(daemon, logs(word, 3))
    assert [a["count"] for a in fired(daemon, name)] == [3]


def test_cooldown_expiry_fires_again_while_the_condition_holds(daemon: Daemon) -> None:
    word, name = token(), "refire-" + token()
    add_rule(daemon, name=name, query=word, threshold=2, window="10m", cooldown="1s")
    ingest(daemon, logs(word, 2))
    assert len(fired(daemon, name)) == 1
    # no new log: the 1 s tick fires again once the cooldown is over and the window still holds 2
    alerts = wait_for(lambda: at_least(2, fired(daemon, name)), DELIVERY_TIMEOUT_S,
                      "the rule to fire again after its cooldown")
    first, second = (parse_timestamp(a["triggered_at"]) for a in alerts[:2])
    assert first is not None and second is not None and second - first >= 1 * S_NS


def test_an_alert_resolves_when_its_window_empties(daemon: Daemon) -> None:
    word, name = token(), "resolve-" + token()
    add_rule(daemon, name=name, query=word, threshold=1, window="2s", cooldown="1h")
    cursor = watch_cursor(daemon)
    ingest(daemon, logs(word, 1))
    assert wait_event(daemon, cursor, name, "firing")["count"] == 1
    event = wait_event(daemon, cursor, name, "resolved")
    assert event["count"] == 0 and event["group"] is None and event["started_at"]
    assert rule_info(daemon, name)["firing"] == []


def test_group_by_fires_per_value_with_its_own_cooldown(daemon: Daemon) -> None:
    word, name = token(), "group-" + token()
    add_rule(daemon, name=name, query=word, threshold=2, window="10m", cooldown="1h", group_by="source")
    ingest(daemon, logs(word, 2, source="db") + logs(word, 1, source="api"))
    assert [(a["group"], a["count"]) for a in fired(daemon, name)] == [("db", 2)]
    ingest(daemon, logs(word, 1, source="api") + logs(word, 3, source="db"))
    alerts = fired(daemon, name)
    assert [(a["group"], a["count"]) for a in alerts] == [("db", 2), ("api", 2)]
    assert "source=api" in alerts[1]["message"] and alerts[1]["group_by"] == "source"
    assert all(s["source"] == "api" for s in alerts[1]["samples"])
    info = rule_info(daemon, name)
    assert info["firing"] == ["api", "db"] and info["window_count"] == {"api": 2, "db": 5}


def test_disabled_rules_do_not_count_and_removed_rules_are_gone(daemon: Daemon) -> None:
    word, name = token(), "disabled-" + token()
    add_rule(daemon, name=name, query=word, threshold=1, window="10m")
    daemon.call("alerts_disable", {"name": name})
    ingest(daemon, logs(word, 3))
    assert fired(daemon, name) == [] and rule_info(daemon, name)["enabled"] is False
    daemon.call("alerts_enable", {"name": name})
    ingest(daemon, logs(word, 1))
    assert [a["count"] for a in fired(daemon, name)] == [1]  # a fresh window: the disabled logs are not in it
    daemon.call("alerts_remove", {"name": name})
    assert all(r["name"] != name for r in daemon.call("alerts_list")["rules"])
    assert len(fired(daemon, name)) == 1  # history stays


# --- kill -9 of the coordinator ------------------------------------------------------------------------


def write_config(path: Path, text: str) -> list[str]:
    path.write_text(text)
    return ["--config", str(path)]


@pytest.mark.slow
def test_kill_9_keeps_history_cooldown_and_rebuilds_windows() -> None:
    root = short_root("sla")
    window_word, cooldown_word = token(), token()
    config = f"""
[[alerts]]
name = "restart-window"
query = "level:ERROR {window_word}"
threshold = 3
window = "10m"
cooldown = "1h"

[[alerts]]
name = "restart-cooldown"
query = "{cooldown_word}"
threshold = 1
window = "10m"
cooldown = "1h"
severity = "critical"
"""
    args = write_config(root / "alerts.toml", config)
    daemon = Daemon(root / "d", shards=2, extra_args=args, name="alert-restart")
    try:
        with daemon.logs_on_failure():
            daemon.start()
            assert {"restart-window", "restart-cooldown"} <= {r["name"] for r in daemon.call("alerts_list")["rules"]}
            ingest(daemon, logs(window_word, 2) + logs(cooldown_word, 1))
            before = daemon.call("alerts_history")["alerts"]
            assert [(a["rule"], a["severity"]) for a in before] == [("restart-cooldown", "critical")]
            daemon.stats()  # records the shard pids, so close() can reap them whatever happens
            daemon.kill()
            daemon.start()  # waits until every shard answers: the windows are rebuilt by then

            assert daemon.call("alerts_history")["alerts"] == before  # intact after kill -9
            assert rule_info(daemon, "restart-window")["window_count"] == {"": 2}  # rebuilt from the shards
            assert rule_info(daemon, "restart-cooldown")["firing"] == [""]
            ingest(daemon, logs(cooldown_word, 2))
            assert len(fired(daemon, "restart-cooldown")) == 1  # inside its cooldown: no re-fire
            ingest(daemon, logs(window_word, 1))
            # two matching logs before the restart and one after fire a threshold of 3
            assert [a["count"] for a in fired(daemon, "restart-window")] == [3]
    finally:
        daemon.close()
        shutil.rmtree(root, ignore_errors=True)


# --- notifications: webhook, exec, metrics, HTTP API ---------------------------------------------------


class WebhookReceiver:
    """A local HTTP server (stdlib) recording JSON bodies; the first request gets a 500."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        self.statuses: list[int] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    status = 500 if not receiver.statuses else 200
                    receiver.statuses.append(status)
                    receiver.bodies.append(json.loads(body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def received(self, rule: str) -> list[tuple[int, Any]]:
        with self.lock:
            return [(status, body) for status, body in zip(self.statuses, self.bodies) if body.get("rule") == rule]


@pytest.fixture(scope="module")
def notifying() -> Iterator[tuple[Daemon, WebhookReceiver, Path]]:
    """A daemon with HTTP, a webhook (to a local receiver) and an exec notifier (appends stdin to a file)."""
    root = short_root("sln")
    receiver = WebhookReceiver()
    exec_out = root / "exec-out.jsonl"
    config = f"""
[notify]
webhook = ["{receiver.url}"]
exec = "sh -c 'cat >> {exec_out}'"
timeout = "5s"
retries = 3
"""
    args = write_config(root / "notify.toml", config)
    daemon = Daemon(root / "d", shards=2, http=f"127.0.0.1:{free_port()}", extra_args=args, name="notify")
    try:
        with daemon.logs_on_failure():
            daemon.start()
            yield daemon, receiver, exec_out
            # a graceful stop closes the notifiers (their queues are drained, bounded) and exits 0
            assert daemon.stop() == 0, daemon.log_tail()
    finally:
        daemon.close()
        receiver.close()
        shutil.rmtree(root, ignore_errors=True)


def metric(text: str, name: str, labels: str = "") -> float:
    """A sample's value from Prometheus text (0 when absent)."""
    prefix = f"{name}{{{labels}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return 0.0


def test_webhook_retried_after_a_500_exec_gets_stdin_and_metrics_count(
        notifying: tuple[Daemon, WebhookReceiver, Path]) -> None:
    daemon, receiver, exec_out = notifying
    word, name = token(), "notify-" + token()
    add_rule(daemon, name=name, query=word, threshold=2, window="10m", cooldown="1h", severity="high")
    ingest(daemon, logs(word, 2))
    [alert] = fired(daemon, name)
    deliveries = wait_for(lambda: at_least(2, receiver.received(name)), DELIVERY_TIMEOUT_S,
                          "the webhook to be retried after its 500")
    assert [status for status, _ in deliveries] == [500, 200]
    assert deliveries[1][1] == alert  # the same alert JSON, as stored in history

    def exec_lines() -> list[dict[str, Any]]:
        text = exec_out.read_text() if exec_out.exists() else ""
        return [event for event in map(json.loads, text.splitlines()) if event["rule"] == name]

    assert wait_for(exec_lines, DELIVERY_TIMEOUT_S, "the exec notifier to write the alert") == [alert]
    text = daemon.call("metrics")["text"]
    assert metric(text, "shardlog_alerts_fired_total", f'rule="{name}",severity="high"') == 1
    assert metric(text, "shardlog_notification_failures_total", 'channel="webhook"') >= 1
    assert metric(text, "shardlog_alert_rules_firing") >= 1


def http_call(daemon: Daemon, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    assert daemon.http is not None
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(f"http://{daemon.http}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_http_alerts_api(notifying: tuple[Daemon, WebhookReceiver, Path]) -> None:
    daemon, _, _ = notifying
    name = "http-" + token()
    quoted = urllib.parse.quote(name)
    rule = {"name": name, "query": "level:ERROR timeout", "threshold": 5, "window": "2m", "cooldown": "10m",
            "severity": "critical", "group_by": "source", "description": "over HTTP"}
    status, created = http_call(daemon, "POST", "/api/v1/alerts/rules", rule)
    assert status == 201 and created["window_s"] == 120 and created["group_by"] == "source"
    status, error = http_call(daemon, "POST", "/api/v1/alerts/rules", rule)
    assert status == 400 and "exists" in error["message"]
    status, replaced = http_call(daemon, "POST", "/api/v1/alerts/rules?replace=true", {**rule, "threshold": 6})
    assert status == 200 and replaced["threshold"] == 6
    status, listed = http_call(daemon, "GET", "/api/v1/alerts/rules")
    assert status == 200 and name in [r["name"] for r in listed["rules"]]
    status, one = http_call(daemon, "GET", f"/api/v1/alerts/rules/{quoted}")
    assert status == 200 and one["threshold"] == 6 and one["firing"] == []
    assert http_call(daemon, "POST", f"/api/v1/alerts/rules/{quoted}/disable")[1]["enabled"] is False
    assert http_call(daemon, "POST", f"/api/v1/alerts/rules/{quoted}/enable")[1]["enabled"] is True
    status, history = http_call(daemon, "GET", "/api/v1/alerts/history?since=-1h&limit=5")
    assert status == 200 and isinstance(history["alerts"], list) and len(history["alerts"]) <= 5
    assert http_call(daemon, "DELETE", f"/api/v1/alerts/rules/{quoted}") == (200, {"removed": name})
    status, error = http_call(daemon, "DELETE", f"/api/v1/alerts/rules/{quoted}")
    assert status == 404 and name in error["message"]
    assert http_call(daemon, "GET", f"/api/v1/alerts/rules/{quoted}")[0] == 404
    # bad input is a 400 with the reason, never a 500
    status, error = http_call(daemon, "POST", "/api/v1/alerts/rules", {**rule, "threshold": 0})
    assert status == 400 and "threshold" in error["message"]
    assert http_call(daemon, "POST", "/api/v1/alerts/rules", b"{not json")[0] == 400
    assert http_call(daemon, "POST", "/api/v1/alerts/rules", [1, 2])[0] == 400
    assert http_call(daemon, "GET", "/api/v1/alerts/history?limit=many")[0] == 400
    assert http_call(daemon, "GET", "/api/v1/alerts/history?since=yesterday-ish")[0] == 400


# --- the real Alertmanager --------------------------------------------------------------------------------


def alertmanager_binary() -> str | None:
    return shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    binary = alertmanager_binary()
    if binary is None:
        pytest.skip("prometheus-alertmanager is not installed (Debian package prometheus-alertmanager; "
                    ".ci/run installs it with apt-get)")
    config = tmp_path / "alertmanager.yml"
    config.write_text("route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n")
    port = free_port()
    log_path = tmp_path / "alertmanager.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen([binary, f"--config.file={config}", f"--storage.path={tmp_path / 'data'}",
                                    f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                                   stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"alertmanager exited with {process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, socket.timeout):
            return False

    try:
        wait_for(ready, 30.0, "alertmanager to be ready")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def am_alerts(url: str, name: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=5) as response:
        return [a for a in json.loads(response.read()) if a["labels"].get("alertname") == name]


@pytest.mark.slow
def test_alertmanager_receives_the_alert_and_its_resolution(alertmanager: str, tmp_path: Path) -> None:
    root = short_root("slm")
    port = free_port()
    args = write_config(root / "am.toml", f'[notify]\nalertmanager = "{alertmanager}"\ntimeout = "5s"\n')
    daemon = Daemon(root / "d", shards=1, http=f"127.0.0.1:{port}", extra_args=args, name="alertmanager")
    word, name = token(), "am-" + token()
    try:
        with daemon.logs_on_failure():
            daemon.start()
            add_rule(daemon, name=name, query=f"level:ERROR {word}", threshold=2, window="3s", cooldown="1h",
                     severity="critical", group_by="source", description="sent to alertmanager")
            cursor = watch_cursor(daemon)
            ingest(daemon, logs(word, 2, source="db"))
            [alert] = wait_for(lambda: am_alerts(alertmanager, name), DELIVERY_TIMEOUT_S,
                               "the alert to reach alertmanager")
            assert alert["labels"] == {"alertname": name, "severity": "critical", "query": f"level:ERROR {word}",
                                       "group": "db"}
            annotations = alert["annotations"]
            assert annotations["summary"].startswith(f"{name} for source=db: 2 matching logs")
            assert annotations["description"] == "sent to alertmanager"
            assert annotations["samples"].count(word) == 2 and "ERROR db:" in annotations["samples"]
            assert alert["generatorURL"].startswith(f"http://127.0.0.1:{port}/api/v1/query?q=")
            assert alert["status"]["state"] == "active"
            starts_ns = parse_timestamp(alert["startsAt"])
            triggered_ns = parse_timestamp(fired(daemon, name)[0]["triggered_at"])
            assert starts_ns is not None and triggered_ns is not None
            assert abs(starts_ns - triggered_ns) < 1_000_000  # alertmanager keeps milliseconds
            # the 3 s window empties: the daemon resolves the alert and tells alertmanager
            wait_event(daemon, cursor, name, "resolved")
            wait_for(lambda: not am_alerts(alertmanager, name), DELIVERY_TIMEOUT_S,
                     "alertmanager to drop the resolved alert")
            text = daemon.call("metrics")["text"]
            assert metric(text, "shardlog_notification_failures_total", 'channel="alertmanager"') == 0
    finally:
        daemon.close()
        shutil.rmtree(root, ignore_errors=True)


# --- the Python API ---------------------------------------------------------------------------------------


def test_python_api_rules_hooks_history_and_files(daemon: Daemon, tmp_path: Path) -> None:
    word, name = token(), "api-" + token()
    received: list[dict[str, Any]] = []
    got_one = threading.Event()

    def broken_hook(alert: dict[str, Any]) -> None:
        raise RuntimeError("a hook that always fails")

    def hook(alert: dict[str, Any]) -> None:
        if alert["rule"] == name:
            received.append(alert)
            got_one.set()

    engine = LogAnalyticsEngine.connect(str(daemon.socket_path))
    try:
        engine.add_alert_rule(AlertRule(name=name, description="from python", conditions={"level": "ERROR",
                                        "keyword": word}, severity=AlertSeverity.HIGH, threshold=2,
                                        time_window=timedelta(minutes=5), cooldown=timedelta(hours=1)))
        info = rule_info(daemon, name)
        assert (info["window_s"], info["cooldown_s"], info["severity"], info["threshold"]) == (300, 3600, "high", 2)
        engine.add_alert_notification_hook(broken_hook)  # logged, and the next hook still runs
        engine.add_alert_notification_hook(hook)
        started = datetime.now(timezone.utc)
        assert engine.ingest_logs(logs(word, 2)) == 2
        assert got_one.wait(DELIVERY_TIMEOUT_S), "the notification hook was not called"
        assert [(a["rule"], a["count"], a["description"]) for a in received] == [(name, 2, "from python")]

        mine = engine.get_alerts(rule_name=name)
        assert [a["key"] for a in mine] == [received[0]["key"]]
        assert engine.get_alerts(rule_name=name, severity="low") == []
        assert engine.get_alerts(rule_name=name, severity=AlertSeverity.HIGH, start_time=started - timedelta(
            minutes=1), end_time=datetime.now(timezone.utc) + timedelta(minutes=1)) == mine
        assert engine.get_alerts(rule_name=name, end_time=started - timedelta(minutes=1)) == []

        path = tmp_path / "alerts.jsonl"
        engine.persist_alerts_to_file(path)
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert [a for a in lines if a["rule"] == name] == mine
        other = "imported-" + token()
        (tmp_path / "in.jsonl").write_text(json.dumps({**mine[0], "rule": other, "key": None}) + "\n\n")
        engine.load_alerts_from_file(tmp_path / "in.jsonl")
        assert [a["message"] for a in engine.get_alerts(rule_name=other)] == [mine[0]["message"]]
        (tmp_path / "bad.jsonl").write_text('{"rule": "x"}\nnot json\n')
        with pytest.raises(Exception, match="line 2"):
            engine.load_alerts_from_file(tmp_path / "bad.jsonl")
        watcher = engine._alert_watcher
        assert watcher is not None and watcher.is_alive()
    finally:
        engine.close()
    assert not watcher.is_alive()  # close() stops the hook thread
