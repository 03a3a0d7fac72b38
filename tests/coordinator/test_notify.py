"""coordinator.notify: the channels against real local receivers, in-process.

Each test runs an asyncio loop with an aiohttp server on a free loopback port (or a real subprocess
for exec) and checks what arrived, what was retried, what was counted in
``shardlog_notification_failures`` and what was logged as lost.  Backoff and re-send intervals are
shortened so every test takes well under a second.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from coordinator.metrics import Metrics
from coordinator.notify import (
    AlertmanagerNotifier,
    ExecNotifier,
    NotifyConfigError,
    QueuedChannel,
    WebhookNotifier,
    build_notifiers,
    generator_url,
)
from tests.daemon import free_port

FAST = {"backoff_first_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 2.0}


def fired(rule: str = "errors", group: str | None = None, **extra: Any) -> dict[str, Any]:
    event = {"key": "00000000000000000001-000000", "rule": rule, "status": "firing", "severity": "high",
             "message": f"{rule}: 3 matching logs in the last 60 s (threshold 3)", "description": "db trouble",
             "triggered_at": "2024-01-01T10:00:00Z", "count": 3, "threshold": 3, "window_s": 60,
             "group_by": "source" if group is not None else None, "group": group, "query": "level:ERROR",
             "samples": [{"timestamp": "2024-01-01T09:59:59Z", "level": "ERROR", "source": "db",
                          "message": "connection\nrefused"}]}
    event.update(extra)
    return event


def resolved(rule: str = "errors", group: str | None = None) -> dict[str, Any]:
    return {"rule": rule, "group": group, "status": "resolved", "resolved_at": "2024-01-01T10:05:00Z", "count": 0,
            "severity": "high", "query": "level:ERROR", "started_at": "2024-01-01T10:00:00Z"}


def failures(metrics: Metrics, channel: str) -> float:
    value = metrics.registry.get_sample_value("shardlog_notification_failures_total", {"channel": channel})
    return value or 0.0


async def until(condition: Callable[[], bool], timeout_s: float = 5.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.005)


class Receiver:
    """An aiohttp server recording each request's JSON body; ``statuses`` are answered in turn
    (the last one repeats); ``hang`` makes every request wait until the test ends."""

    def __init__(self, statuses: tuple[int, ...] = (200,), hang: bool = False) -> None:
        self.statuses = list(statuses)
        self.hang = hang
        self.bodies: list[Any] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(json.loads(await request.read()))
        if self.hang:
            await self._release.wait()
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return web.Response(status=status, text="" if status < 300 else f"status {status} on purpose")

    async def __aenter__(self) -> "Receiver":
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._release.set()
        assert self._runner is not None
        await self._runner.cleanup()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 20.0))


# --- webhook -------------------------------------------------------------------------------------


def test_webhook_retries_after_a_500_and_counts_the_failure() -> None:
    metrics = Metrics()

    async def body() -> None:
        async with Receiver((500, 200)) as receiver:
            notifier = WebhookNotifier(receiver.url + "/hook", metrics, retries=3, **FAST)
            event = fired()
            notifier.send(event)
            event["count"] = 999  # the notification is a snapshot taken at send()
            await until(lambda: notifier.delivered == 1, what="a delivery")
            await notifier.close()
        assert receiver.bodies == [fired(), fired()]
        assert failures(metrics, "webhook") == 1 and notifier.lost == 0

    run(body)


def test_webhook_does_not_retry_a_400_and_logs_the_alert(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()

    async def body() -> None:
        async with Receiver((400,)) as receiver:
            notifier = WebhookNotifier(receiver.url, metrics, retries=3, **FAST)
            notifier.send(fired("disk-full"))
            await until(lambda: notifier.lost == 1, what="the delivery to fail")
            await notifier.close()
        assert len(receiver.bodies) == 1
        assert failures(metrics, "webhook") == 1

    with caplog.at_level(logging.ERROR, logger="shardlog.notify"):
        run(body)
    lost = [r.getMessage() for r in caplog.records if "NOT delivered" in r.getMessage()]
    assert len(lost) == 1 and "HTTP 400" in lost[0] and '"rule":"disk-full"' in lost[0], lost


def test_an_unreachable_webhook_is_retried_then_logged_as_lost(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()

    async def body() -> None:
        notifier = WebhookNotifier(f"http://127.0.0.1:{free_port()}/nothing", metrics, retries=2, **FAST)
        notifier.send(fired("api-down"))
        await until(lambda: notifier.lost == 1, what="the delivery to fail")
        await notifier.close()

    with caplog.at_level(logging.WARNING, logger="shardlog.notify"):
        run(body)
    assert failures(metrics, "webhook") == 3  # every failed attempt is counted
    messages = [r.getMessage() for r in caplog.records]
    assert any("3 attempts failed" in m and '"rule":"api-down"' in m for m in messages), messages
    # retries are logged through the throttle: the first one shows, the next is held back
    assert sum("retrying" in m for m in messages) == 1, messages


def test_send_never_waits_and_a_full_queue_loses_loudly(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()

    async def body() -> None:
        async with Receiver(hang=True) as receiver:
            notifier = WebhookNotifier(receiver.url, metrics, retries=0, queue_max_jobs=2, **FAST)
            notifier.send(fired("rule-0"))
            await until(lambda: len(receiver.bodies) == 1, what="the first request")
            started = time.monotonic()
            for i in range(1, 5):
                notifier.send(fired(f"rule-{i}"))
            assert time.monotonic() - started < 0.5  # nothing awaited the receiver
            # the first is being delivered, two wait, two were refused at once
            assert notifier.lost == 2
            await notifier.close(timeout_s=0.05)
            assert notifier.lost == 5  # the in-flight one and the two queued, logged at stop

    with caplog.at_level(logging.ERROR, logger="shardlog.notify"):
        run(body)
    lost = [r.getMessage() for r in caplog.records if "NOT delivered" in r.getMessage()]
    assert sorted(next(f"rule-{i}" for i in range(5) if f'"rule":"rule-{i}"' in m) for m in lost) == \
        [f"rule-{i}" for i in range(5)]
    assert any("already waiting" in m for m in lost) and any("stopped" in m for m in lost)


def test_send_after_close_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        notifier = WebhookNotifier("http://127.0.0.1:9/x", Metrics(), **FAST)
        await notifier.close()
        notifier.send(fired("late"))
        assert notifier.lost == 1

    with caplog.at_level(logging.ERROR, logger="shardlog.notify"):
        run(body)
    assert any("stopping" in r.getMessage() and "late" in r.getMessage() for r in caplog.records)


# --- Alertmanager ------------------------------------------------------------------------------------


def test_alertmanager_payload_resend_and_resolve() -> None:
    metrics = Metrics()

    async def body() -> None:
        async with Receiver() as receiver:
            notifier = AlertmanagerNotifier(receiver.url + "/", metrics, generator_url="http://127.0.0.1:9428",
                                            resend_every_s=0.05, **FAST)
            notifier.send(fired(group="db"))
            await until(lambda: len(receiver.bodies) >= 3, what="the alert and two re-sends")
            notifier.send(resolved(group="db"))
            await until(lambda: any("endsAt" in body[0] for body in receiver.bodies), what="the resolve")
            resolved_at = len(receiver.bodies)
            await asyncio.sleep(0.2)  # several re-send periods: nothing left to re-send
            await notifier.close()
        first = receiver.bodies[0]
        assert len(first) == 1
        alert = first[0]
        assert alert["labels"] == {"alertname": "errors", "severity": "high", "query": "level:ERROR", "group": "db"}
        assert alert["annotations"]["summary"].startswith("errors: 3 matching logs")
        assert alert["annotations"]["description"] == "db trouble"
        assert alert["annotations"]["samples"] == "2024-01-01T09:59:59Z ERROR db: connection refused"
        assert alert["startsAt"] == "2024-01-01T10:00:00Z" and "endsAt" not in alert
        assert alert["generatorURL"] == "http://127.0.0.1:9428/api/v1/query?q=level%3AERROR"
        assert receiver.bodies[1] == first  # re-sent unchanged while firing
        end = [body for body in receiver.bodies if "endsAt" in body[0]]
        assert len(end) == 1
        assert end[0][0]["labels"] == alert["labels"] and end[0][0]["endsAt"] == "2024-01-01T10:05:00Z"
        assert len(receiver.bodies) == resolved_at
        assert failures(metrics, "alertmanager") == 0

    run(body)


def test_alertmanager_resolve_without_a_known_firing_alert_has_matching_labels() -> None:
    """After a daemon restart the channel has not seen the firing event; the resolve must still
    carry the labels the firing alert had."""
    notifier = AlertmanagerNotifier("http://am:9093", Metrics(), generator_url="shardlog:///var/lib/shardlog")
    firing = notifier.to_alertmanager(fired(group="db"))
    job = notifier._jobs(resolved(group="db"))[0]
    alert = json.loads(job.body)[0]
    assert alert["labels"] == firing["labels"]
    assert alert["startsAt"] == "2024-01-01T10:00:00Z" and alert["endsAt"] == "2024-01-01T10:05:00Z"
    assert firing["generatorURL"] == "shardlog:///var/lib/shardlog"
    assert "group" not in notifier.to_alertmanager(fired())["labels"]


# --- exec ---------------------------------------------------------------------------------------------


def test_exec_gets_the_event_on_stdin_and_is_retried_on_a_failing_exit(tmp_path: Path) -> None:
    out = tmp_path / "alerts.jsonl"
    marker = tmp_path / "failed-once"
    # fails the first time (exit 3), then appends stdin and the environment to the file
    script = (f"import os, sys, pathlib; m = pathlib.Path({str(marker)!r})\n"
              "if not m.exists():\n    m.touch(); sys.exit(3)\n"
              f"open({str(out)!r}, 'ab').write(sys.stdin.buffer.read() + os.environ['SHARDLOG_ALERT_RULE'].encode())")
    metrics = Metrics()

    async def body() -> None:
        notifier = ExecNotifier([sys.executable, "-c", script], metrics, retries=2, **FAST)
        notifier.send(fired("exec-rule"))
        await until(lambda: notifier.delivered == 1, what="the command to succeed")
        await notifier.close()

    run(body)
    line, _, rule = out.read_bytes().partition(b"\n")
    assert json.loads(line) == fired("exec-rule") and rule == b"exec-rule"
    assert failures(metrics, "exec") == 1


def test_exec_timeout_kills_the_command(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()

    async def body() -> None:
        notifier = ExecNotifier("sleep 30", metrics, retries=0, timeout_s=0.2, backoff_first_s=0.01)
        started = time.monotonic()
        notifier.send(fired("slow"))
        await until(lambda: notifier.lost == 1, what="the timeout")
        assert time.monotonic() - started < 5
        await notifier.close()

    with caplog.at_level(logging.ERROR, logger="shardlog.notify"):
        run(body)
    assert any("killed" in r.getMessage() for r in caplog.records)
    assert failures(metrics, "exec") == 1


# --- configuration ------------------------------------------------------------------------------------


def test_build_notifiers_from_the_notify_table(tmp_path: Path) -> None:
    metrics = Metrics()
    built = build_notifiers({"webhook": ["http://a/1", "http://b/2"], "alertmanager": "http://am:9093",
                             "exec": "notify-send 'an alert'", "timeout": "2s", "retries": 5}, metrics,
                            http=("127.0.0.1", 9428))
    assert [type(n).__name__ for n in built] == ["WebhookNotifier", "WebhookNotifier", "AlertmanagerNotifier",
                                                 "ExecNotifier"]
    assert all(isinstance(n, QueuedChannel) and n.timeout_s == 2.0 and n.retries == 5 for n in built)
    assert built[2].generator_url == "http://127.0.0.1:9428"  # type: ignore[attr-defined]
    assert built[3].argv == ["notify-send", "an alert"]  # type: ignore[attr-defined]
    assert build_notifiers({}, metrics) == []
    assert len(build_notifiers({"webhook": "http://one"}, metrics)) == 1
    assert generator_url(None, "/var/lib/shardlog") == "shardlog:///var/lib/shardlog"
    assert generator_url(("::1", 80), None) == "http://[::1]:80"


@pytest.mark.parametrize("table, message", [
    ({"timeout": "soon"}, "timeout 'soon'"),
    ({"timeout": 0}, "more than 0"),
    ({"retries": -1}, "retries is -1"),
    ({"retries": "3"}, "retries is '3'"),
])
def test_bad_notify_settings_are_refused(table: dict[str, Any], message: str) -> None:
    with pytest.raises(NotifyConfigError, match=message):
        build_notifiers(table, Metrics())


def test_an_empty_exec_command() -> None:
    assert build_notifiers({"exec": ""}, Metrics()) == []  # not configured
    for command in ("   ", []):
        with pytest.raises(NotifyConfigError, match="exec is empty"):
            ExecNotifier(command, Metrics())
