"""Alert notification channels: webhooks, the Prometheus Alertmanager v2 API, and an exec command.

``build_notifiers(config.notify, metrics, ...)`` turns the ``[notify]`` table into channels; the
alert service calls ``send(event)`` for every fired alert and every ``status: "resolved"`` event.

Guarantees:

* ``send`` never blocks and never raises for a delivery problem: it serializes the event (a
  snapshot: later changes to the dict do not leak into the notification) and puts a job on the
  channel's bounded queue.  One background task per channel, started on the first ``send`` (there is
  a running loop then), drains the queue in order, so a slow or dead receiver delays only its own
  channel, never ingest.
* A failed attempt (connection error, timeout, non-2xx status, non-zero exit) is counted in
  ``metrics.notification_failures{channel}``, logged through a throttled logger, and retried with
  exponential backoff up to ``retries`` times.  A 4xx answer other than 408/429 is not retried
  (the receiver will refuse the same body again).  A job that finally fails, or cannot be queued
  because the queue is full, or is still queued when the daemon stops, is logged at ERROR *with the
  alert*, so no alert is ever lost silently.
* Alertmanager: every firing alert (rule + group) is re-sent every ``resend_every_s`` while it
  fires, without ``endsAt`` (Alertmanager ends an alert ``resolve_timeout`` — 5 m by default —
  after the last update), and a resolve (``endsAt`` = resolution time, same labels) is sent when
  it ends.
* Exec: the command runs without a shell (``shlex.split`` of the configured string, or a list),
  with the event JSON plus a newline on stdin, and ``SHARDLOG_ALERT_RULE`` / ``_STATUS`` /
  ``_SEVERITY`` in its environment; a run longer than ``timeout`` is killed; exit status 0 is
  success.  Use ``sh -c '...'`` for shell syntax.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import time
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import quote

import orjson

from coordinator.metrics import Metrics
from storage.errors import ShardlogError
from storage.timefmt import format_timestamp, parse_duration

log = logging.getLogger("shardlog.notify")

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_RETRIES = 3
MAX_RETRIES = 20
#: first wait before a retry; doubled after each failed attempt up to BACKOFF_MAX_S
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
#: jobs waiting per channel; beyond this an alert is logged as lost (a receiver that has been down
#: for hours must not grow the daemon's memory without bound)
QUEUE_MAX_JOBS = 1_000
#: Alertmanager's resolve_timeout defaults to 5 m; re-sending every minute keeps a firing alert
#: alive with room for a few failed attempts
RESEND_EVERY_S = 60.0
#: at most one "attempt failed" warning per channel per this many seconds (the rest are counted)
WARN_EVERY_S = 10.0
#: how long a stopping daemon waits for queued notifications
CLOSE_WAIT_S = 5.0
#: error bodies / stderr quoted in logs
QUOTE_BYTES = 300
#: an alert quoted in a "lost" log line
LOST_QUOTE_BYTES = 4_000
#: sample lines (and characters per line) put into Alertmanager's "samples" annotation
SAMPLE_LINE_CHARS = 300


class NotifyConfigError(ShardlogError):
    code = "config_error"
    http_status = 400


class _Permanent(Exception):
    """A failure that a retry cannot fix (e.g. HTTP 400): counted and logged, not retried."""


@dataclass
class _Job:
    """One delivery: the bytes to send and the alert events they carry (for the logs)."""

    body: bytes
    events: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> str:
        names = ", ".join(f"{e.get('rule')}{'/' + str(e['group']) if e.get('group') else ''} {e.get('status')}"
                          for e in self.events[:5])
        more = f" (+{len(self.events) - 5} more)" if len(self.events) > 5 else ""
        return names + more


class _Throttle:
    """Rate limit for one kind of log line; counts what it held back."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._next_s = 0.0
        self.suppressed = 0

    def ready(self) -> int | None:
        """The number suppressed since the last line when a line may be logged now, else None."""
        now_s = time.monotonic()
        if now_s >= self._next_s:
            self._next_s = now_s + self.every_s
            held, self.suppressed = self.suppressed, 0
            return held
        self.suppressed += 1
        return None


class QueuedChannel:
    """Base of the channels: a bounded queue drained by one background task, with retries.

    State (all touched only from the event loop's thread): ``_queue`` and ``_task`` are created on
    the first ``send``; ``_current`` is the job being delivered (reported if the daemon stops
    mid-delivery)."""

    channel = "channel"

    def __init__(self, metrics: Metrics, *, timeout_s: float = DEFAULT_TIMEOUT_S, retries: int = DEFAULT_RETRIES,
                 backoff_first_s: float = BACKOFF_FIRST_S, backoff_max_s: float = BACKOFF_MAX_S,
                 queue_max_jobs: int = QUEUE_MAX_JOBS) -> None:
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_first_s = backoff_first_s
        self.backoff_max_s = backoff_max_s
        self.queue_max_jobs = queue_max_jobs
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task[None] | None = None
        self._current: _Job | None = None
        self._closed = False
        self._warn = _Throttle(WARN_EVERY_S)
        #: jobs delivered / finally failed (for tests and stats)
        self.delivered = 0
        self.lost = 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.target()}>"

    def target(self) -> str:
        return self.channel

    # --- the queue -------------------------------------------------------------------------------

    def send(self, event: dict[str, Any]) -> None:
        """Queue ``event`` for delivery; never blocks (see the module docstring)."""
        for job in self._jobs(event):
            self._enqueue(job)

    def _jobs(self, event: dict[str, Any]) -> list[_Job]:
        return [_Job(orjson.dumps(event, option=orjson.OPT_NON_STR_KEYS), [event])]

    def _enqueue(self, job: _Job) -> None:
        if self._closed:
            self._lose(job, "the daemon is stopping")
            return
        self._start()
        assert self._queue is not None
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self._lose(job, f"{self.queue_max_jobs} notifications are already waiting (the receiver is down or "
                            "slow)")

    def _start(self) -> None:
        if self._task is None:
            self._queue = asyncio.Queue(self.queue_max_jobs)
            self._task = asyncio.get_running_loop().create_task(self._worker(), name=f"notify-{self.channel}")
            self._started()

    def _started(self) -> None:
        """Hook for channels with more background work (Alertmanager's re-send timer)."""

    async def _worker(self) -> None:
        assert self._queue is not None
        while True:
            job = await self._queue.get()
            self._current = job
            try:
                await self._deliver_with_retries(job)
            except asyncio.CancelledError:
                raise  # close(): _current stays set, so the interrupted job is reported as lost
            except Exception:  # a bug here must not end the channel: later alerts still go out
                log.exception("%s: delivering %s failed unexpectedly", self.target(), job.describe())
                self._lose(job, "an internal error")
            self._current = None
            self._queue.task_done()

    async def _deliver_with_retries(self, job: _Job) -> None:
        attempts = self.retries + 1
        delay_s = self.backoff_first_s
        reason = "no attempt was made"
        for attempt in range(1, attempts + 1):
            try:
                # the channel's own timeouts apply inside; this bounds anything they miss
                await asyncio.wait_for(self._deliver(job), self.timeout_s + 1.0)
                self.delivered += 1
                return
            except asyncio.CancelledError:
                raise
            except _Permanent as exc:
                self._attempt_failed(job, attempt, attempts, str(exc), final=True)
                self._lose(job, f"{exc} (not retried: the receiver refuses this request)")
                return
            except (asyncio.TimeoutError, TimeoutError):
                reason = f"no answer within {self.timeout_s:g} s ([notify] timeout)"
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self._attempt_failed(job, attempt, attempts, reason, final=attempt == attempts)
            if attempt < attempts:
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, self.backoff_max_s)
        self._lose(job, f"{attempts} attempts failed; the last: {reason}")

    def _attempt_failed(self, job: _Job, attempt: int, attempts: int, reason: str, *, final: bool) -> None:
        self.metrics.notification_failures.labels(self.channel).inc()
        if final:
            return  # _lose logs it with the alert
        held = self._warn.ready()
        if held is not None:
            extra = f" ({held} more failures not shown)" if held else ""
            log.warning("%s: attempt %d of %d to deliver %s failed: %s; retrying%s", self.target(), attempt, attempts,
                        job.describe(), reason, extra)

    def _lose(self, job: _Job, reason: str) -> None:
        """A job that will not be delivered: always logged, with the alert it carries."""
        self.lost += 1
        body = job.body[:LOST_QUOTE_BYTES].decode("utf-8", "replace")
        cut = "…" if len(job.body) > LOST_QUOTE_BYTES else ""
        log.error("%s: notification NOT delivered (%s): %s; the alert: %s%s", self.target(), reason, job.describe(),
                  body, cut)

    async def _deliver(self, job: _Job) -> None:
        raise NotImplementedError

    # --- stop ------------------------------------------------------------------------------------

    async def close(self, timeout_s: float = CLOSE_WAIT_S) -> None:
        """Wait up to ``timeout_s`` for queued jobs, then stop; what is left is logged as lost."""
        self._closed = True
        if self._task is None or self._queue is None:
            await self._close_resources()
            return
        try:
            await asyncio.wait_for(self._queue.join(), timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            pass
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        if self._current is not None:
            self._lose(self._current, "the daemon stopped during its delivery")
            self._current = None
        while not self._queue.empty():
            self._lose(self._queue.get_nowait(), "the daemon stopped before it was sent")
        await self._close_resources()

    async def _close_resources(self) -> None:
        """Hook: close sessions and timers."""


class _HttpChannel(QueuedChannel):
    """A channel that POSTs JSON with one aiohttp session (created in the worker's loop)."""

    def __init__(self, url: str, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(metrics, **kwargs)
        self.url = url
        self._session: Any = None

    def target(self) -> str:
        return f"{self.channel} {self.url}"

    async def _post(self, url: str, body: bytes) -> None:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        headers = {"Content-Type": "application/json", "User-Agent": "shardlog"}
        async with self._session.post(url, data=body, headers=headers) as response:
            if 200 <= response.status < 300:
                await response.read()
                return
            text = (await response.read())[:QUOTE_BYTES].decode("utf-8", "replace").strip()
            message = f"HTTP {response.status} from {url}" + (f": {text}" if text else "")
            if 400 <= response.status < 500 and response.status not in (408, 429):
                raise _Permanent(message)
            raise RuntimeError(message)

    async def _close_resources(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class WebhookNotifier(_HttpChannel):
    """POST each event (fired or resolved) as JSON to ``url``."""

    channel = "webhook"

    async def _deliver(self, job: _Job) -> None:
        await self._post(self.url, job.body)


def _samples_text(samples: Any) -> str:
    lines = []
    for sample in samples or ():
        if not isinstance(sample, Mapping):
            continue
        message = " ".join(str(sample.get("message", "")).split())
        if len(message) > SAMPLE_LINE_CHARS:
            message = message[:SAMPLE_LINE_CHARS - 1] + "…"
        lines.append(f"{sample.get('timestamp', '')} {sample.get('level', '')} {sample.get('source', '')}: {message}")
    return "\n".join(lines)


class AlertmanagerNotifier(_HttpChannel):
    """``POST {url}/api/v2/alerts`` with Alertmanager's alert objects (see the module docstring).

    ``_firing`` maps (rule, group) to the alert object last sent for it; the re-send timer posts
    them all.  Labels: ``alertname`` (the rule), ``severity``, ``query``, and ``group`` (the group
    value, for rules with group_by) — exactly what a resolved event also carries, so a resolve after
    a daemon restart still matches the alert Alertmanager holds."""

    channel = "alertmanager"

    def __init__(self, url: str, metrics: Metrics, *, generator_url: str, resend_every_s: float = RESEND_EVERY_S,
                 **kwargs: Any) -> None:
        super().__init__(url.rstrip("/"), metrics, **kwargs)
        self.generator_url = generator_url
        self.resend_every_s = resend_every_s
        self._firing: dict[tuple[str, str], dict[str, Any]] = {}
        self._resend_task: asyncio.Task[None] | None = None

    @property
    def alerts_url(self) -> str:
        return f"{self.url}/api/v2/alerts"

    @staticmethod
    def labels(event: Mapping[str, Any]) -> dict[str, str]:
        labels = {"alertname": str(event.get("rule")), "severity": str(event.get("severity") or "")}
        if event.get("query"):
            labels["query"] = str(event["query"])
        if event.get("group") is not None:
            labels["group"] = str(event["group"])
        return {k: v for k, v in labels.items() if v}

    def to_alertmanager(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """The Alertmanager alert object of a fired event."""
        annotations = {"summary": str(event.get("message") or event.get("rule")),
                       "description": str(event.get("description") or event.get("message") or ""),
                       "count": str(event.get("count", "")),
                       "window": f"{event.get('window_s', '')} s",
                       "threshold": str(event.get("threshold", ""))}
        samples = _samples_text(event.get("samples"))
        if samples:
            annotations["samples"] = samples
        alert: dict[str, Any] = {"labels": self.labels(event), "annotations": annotations,
                                 "generatorURL": self.generator_url_for(event)}
        if event.get("triggered_at"):
            alert["startsAt"] = event["triggered_at"]
        return alert

    def generator_url_for(self, event: Mapping[str, Any]) -> str:
        if self.generator_url.startswith(("http://", "https://")) and event.get("query"):
            return f"{self.generator_url}/api/v1/query?q={quote(str(event['query']))}"
        return self.generator_url

    def _jobs(self, event: dict[str, Any]) -> list[_Job]:
        key = (str(event.get("rule")), "" if event.get("group") is None else str(event.get("group")))
        if event.get("status") == "resolved":
            alert = dict(self._firing.pop(key, None) or self.to_alertmanager(event))
            if "startsAt" not in alert and event.get("started_at"):
                alert["startsAt"] = event["started_at"]
            alert["endsAt"] = event.get("resolved_at") or format_timestamp(time.time_ns())
        else:
            alert = self.to_alertmanager(event)
            self._firing[key] = alert
        return [_Job(orjson.dumps([alert]), [event])]

    async def _deliver(self, job: _Job) -> None:
        await self._post(self.alerts_url, job.body)

    def _started(self) -> None:
        self._resend_task = asyncio.get_running_loop().create_task(self._resend_loop(), name="notify-am-resend")

    async def _resend_loop(self) -> None:
        """Keep firing alerts alive in Alertmanager (it ends an alert resolve_timeout after its last
        update); a resend that cannot be queued is skipped, the next one carries the same alerts."""
        while True:
            await asyncio.sleep(self.resend_every_s)
            if not self._firing or self._queue is None:
                continue
            alerts = list(self._firing.values())
            job = _Job(orjson.dumps(alerts), [{"rule": a["labels"].get("alertname"), "group": a["labels"].get("group"),
                                               "status": "firing (re-send)"} for a in alerts])
            try:
                self._queue.put_nowait(job)
            except asyncio.QueueFull:
                log.warning("%s: the queue is full; skipping this re-send of %d firing alerts", self.target(),
                            len(alerts))

    async def _close_resources(self) -> None:
        if self._resend_task is not None:
            self._resend_task.cancel()
            await asyncio.gather(self._resend_task, return_exceptions=True)
            self._resend_task = None
        await super()._close_resources()


class ExecNotifier(QueuedChannel):
    """Run a command per event with the event JSON on stdin."""

    channel = "exec"

    def __init__(self, command: str | list[str], metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(metrics, **kwargs)
        self.argv = shlex.split(command) if isinstance(command, str) else [str(part) for part in command]
        if not self.argv:
            raise NotifyConfigError("[notify] exec is empty; give a command, e.g. exec = \"/usr/local/bin/page-me\"")

    def target(self) -> str:
        return f"exec {shlex.join(self.argv)}"

    def _jobs(self, event: dict[str, Any]) -> list[_Job]:
        return [_Job(orjson.dumps(event, option=orjson.OPT_NON_STR_KEYS) + b"\n", [event])]

    async def _deliver(self, job: _Job) -> None:
        event = job.events[0] if job.events else {}
        env = dict(os.environ, SHARDLOG_ALERT_RULE=str(event.get("rule", "")),
                   SHARDLOG_ALERT_STATUS=str(event.get("status", "")),
                   SHARDLOG_ALERT_SEVERITY=str(event.get("severity") or ""))
        try:
            process = await asyncio.create_subprocess_exec(*self.argv, stdin=asyncio.subprocess.PIPE,
                                                           stdout=asyncio.subprocess.DEVNULL,
                                                           stderr=asyncio.subprocess.PIPE, env=env,
                                                           start_new_session=True)
        except OSError as exc:
            raise RuntimeError(f"cannot run {self.argv[0]!r}: {exc.strerror or exc}") from None
        try:
            _, stderr = await asyncio.wait_for(process.communicate(job.body), self.timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            process.kill()
            await process.wait()
            raise RuntimeError(f"still running after {self.timeout_s:g} s ([notify] timeout); killed") from None
        except asyncio.CancelledError:
            process.kill()
            await process.wait()
            raise
        if process.returncode != 0:
            text = stderr[-QUOTE_BYTES:].decode("utf-8", "replace").strip()
            raise RuntimeError(f"exited with status {process.returncode}" + (f": {text}" if text else ""))


# --- building them from [notify] -------------------------------------------------------------------


def generator_url(http: tuple[str, int] | None, data_dir: str | None) -> str:
    """Where an Alertmanager user is sent back to: the daemon's HTTP API, else its data dir."""
    if http is not None:
        host, port = http
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}"
    return f"shardlog://{data_dir or ''}"


def _timeout_s(value: Any) -> float:
    if value is None:
        return DEFAULT_TIMEOUT_S
    if isinstance(value, bool):
        raise NotifyConfigError(f"[notify] timeout {value!r} must be a duration such as 10s")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        try:
            seconds = parse_duration(str(value)) / 1e9
        except ShardlogError:
            raise NotifyConfigError(f"[notify] timeout {value!r} must be a duration such as 10s or 500ms") from None
    if not 0 < seconds <= 600:
        raise NotifyConfigError(f"[notify] timeout is {value!r}; it must be more than 0 and at most 600 s")
    return seconds


def _retries(value: Any) -> int:
    if value is None:
        return DEFAULT_RETRIES
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_RETRIES:
        raise NotifyConfigError(f"[notify] retries is {value!r}; it must be an integer from 0 to {MAX_RETRIES}")
    return value


def build_notifiers(config: Mapping[str, Any], metrics: Metrics, *, http: tuple[str, int] | None = None,
                    data_dir: str | None = None, **channel_options: Any) -> list[QueuedChannel]:
    """The channels of the ``[notify]`` table (``webhook`` URL or list of URLs, ``alertmanager`` URL,
    ``exec`` command, ``timeout``, ``retries``).  ``http`` / ``data_dir`` make Alertmanager's
    generatorURL; ``channel_options`` (e.g. ``backoff_first_s``) go to every channel."""
    config = config or {}
    options: dict[str, Any] = {"timeout_s": _timeout_s(config.get("timeout")),
                               "retries": _retries(config.get("retries")), **channel_options}
    notifiers: list[QueuedChannel] = []
    webhooks = config.get("webhook") or []
    for url in [webhooks] if isinstance(webhooks, str) else webhooks:
        notifiers.append(WebhookNotifier(str(url), metrics, **options))
    if config.get("alertmanager"):
        notifiers.append(AlertmanagerNotifier(str(config["alertmanager"]), metrics,
                                              generator_url=generator_url(http, data_dir), **options))
    if config.get("exec"):
        notifiers.append(ExecNotifier(config["exec"], metrics, **options))
    for notifier in notifiers:
        log.info("alert notifications go to %s", notifier.target())
    return notifiers
