"""The ``shardlog`` command (DESIGN §6): thin click commands over the coordinator's RPC ops.

Each command resolves the daemon (``cli.connect``), sends one op (docs/rpc.md), and renders the
answer (``cli.render``).  Domain errors travel as ``storage.errors`` classes and become one-line
``CliError`` / ``DaemonUnreachable`` only here, at the edge.  Exit codes: 0 ok, 1 user/query error
(or rejected records), 2 usage (click), 3 daemon unreachable.

``--socket`` and ``--data-dir`` are options of every subcommand (``shardlog query --data-dir D``).
``serve`` parses its options and hands them to ``coordinator.daemon.serve_main``; that import is
inside the command, so the query commands never load the daemon (or LMDB).
"""

from __future__ import annotations

import queue
import shutil
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any, TypeVar

import click

from cli import render
from cli.connect import CliError, Connection, connect
from coordinator.api import call_retrying, read_alerts_jsonl
from shardd.client import Client
from storage.errors import ShardlogError

F = TypeVar("F", bound=Callable[..., Any])

#: Lines per ``ingest_lines`` call (--batch): amortizes the durable commit; a retry resends little.
DEFAULT_BATCH_LINES = 5_000
#: Characters per ingest call whatever the line count, far below the 64 MiB frame limit.
MAX_BATCH_CHARS = 8 * 1024 * 1024
#: ``tail -f`` long-poll: the daemon holds the call up to this long waiting for new logs.
TAIL_WAIT_S = 5.0


def terminal_width() -> int:
    return shutil.get_terminal_size((120, 24)).columns


# --- shared options -----------------------------------------------------------------------------


def connection_options(fn: F) -> F:
    """``--socket`` / ``--data-dir``, accepted by every subcommand after its name."""
    fn = click.option("--data-dir", "data_dir", metavar="DIR", default=None,
                      help="Data dir of the daemon (its socket is DIR/shardlog.sock); env SHARDLOG_DATA_DIR.")(fn)
    fn = click.option("--socket", "socket_path", metavar="PATH", default=None,
                      help="The daemon's unix socket; env SHARDLOG_SOCKET.")(fn)
    return fn


def filter_options(fn: F) -> F:
    """The filter flags shared by query, count, agg and tail; ANDed with QUERY."""
    options = [
        click.option("--from", "from_", metavar="T", help="Inclusive start: a timestamp or relative -15m."),
        click.option("--to", "to", metavar="T", help="Exclusive end: a timestamp or relative -5m."),
        click.option("--since", metavar="DURATION", help="Only the last DURATION, e.g. 1h."),
        click.option("--level", metavar="L", help="Level equals L (ERROR, WARN, ...)."),
        click.option("--source", metavar="S", help="Source equals S."),
        click.option("--tag", metavar="T", help="Has tag T."),
        click.option("--keyword", metavar="W", help="Message has the word (or phrase) W."),
        click.option("--min-severity", "min_severity", metavar="L", help="Level at least L."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return click.argument("query", required=False, default=None)(fn)


def filter_params(query: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """The RPC params (docs/rpc.md) of QUERY and the filter flags that were given."""
    params: dict[str, Any] = {}
    if query:
        params["q"] = query
    for name, key in (("from_", "from"), ("to", "to"), ("since", "since"), ("level", "level"),
                      ("source", "source"), ("tag", "tag"), ("keyword", "keyword"),
                      ("min_severity", "min_severity")):
        value = options.get(name)
        if value is not None:
            params[key] = value
    return params


def warn(message: str) -> None:
    click.echo(f"shardlog: warning: {message}", err=True)


def warn_partial(result: dict[str, Any]) -> None:
    if result.get("partial"):
        failed = result.get("failed_shards")
        which = f"shards {', '.join(map(str, failed))}" if failed else "some shards"
        warn(f"partial result: {which} did not answer in time; retry for a complete answer")


# --- the group ----------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """shardlog: a log analytics daemon for one log host, and its client.

    Start the daemon with `shardlog serve`, then ingest, query, count, aggregate and tail logs.
    """


# --- serve --------------------------------------------------------------------------------------


@cli.command()
@connection_options
@click.option("--shards", type=click.IntRange(min=1), default=None,
              help="Shard processes (fixed when the data dir is created; default: CPU count).")
@click.option("--config", "config_file", metavar="FILE", type=click.Path(dir_okay=False), default=None,
              help="TOML config file.")
@click.option("--http", metavar="HOST:PORT", default=None, help='HTTP listener (default 127.0.0.1:9428; "" disables).')
@click.option("--tcp", metavar="HOST:PORT", default=None, help="JSON-lines TCP listener.")
@click.option("--syslog", metavar="HOST:PORT", default=None, help="Syslog TCP+UDP listener.")
@click.option("--retention", metavar="DURATION", default=None, help='Drop logs older than this, e.g. 30d ("" keeps all).')
def serve(socket_path: str | None, data_dir: str | None, shards: int | None, config_file: str | None,
          http: str | None, tcp: str | None, syslog: str | None, retention: str | None) -> None:
    """Run the daemon in the foreground (Ctrl+C or SIGTERM stops it)."""
    from coordinator.daemon import serve_main  # the daemon stack loads only for `serve`

    flags: dict[str, Any] = {"data_dir": data_dir, "shards": shards, "config": config_file, "http": http,
                             "tcp": tcp, "syslog": syslog, "retention": retention}
    if socket_path is not None:
        flags["socket"] = socket_path
    sys.exit(serve_main(flags))


# --- ingest -------------------------------------------------------------------------------------


def read_chunks(stream: IO[bytes], *, batch_lines: int, max_chars: int = MAX_BATCH_CHARS,
                keep_traces: bool = False) -> Iterator[tuple[int, list[str], int]]:
    """``(first_line, lines, raw_bytes)`` chunks of a byte stream; lines are numbered from 1 and
    sent without terminators.  Invalid UTF-8 becomes U+FFFD rather than failing the file.  With
    ``keep_traces`` (text formats) a full chunk is cut only before a line that starts a record, so a
    stack trace is not split across two requests (up to twice the chunk size)."""
    from coordinator.textlog import continues_record

    lines: list[str] = []
    chars = raw_bytes = 0
    first_line = 1
    for number, raw in enumerate(stream, start=1):
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        full = len(lines) >= batch_lines or chars >= max_chars
        if full and (not keep_traces or not continues_record(text)
                     or len(lines) >= 2 * batch_lines or chars >= 2 * max_chars):
            yield first_line, lines, raw_bytes
            lines, chars, raw_bytes = [], 0, 0
        if not lines:
            first_line = number
        lines.append(text)
        chars += len(text)
        raw_bytes += len(raw)
    if lines:
        yield first_line, lines, raw_bytes


class _Progress:
    """A progress bar on stderr when stderr is a terminal, else nothing.  Counts bytes when the
    input's size is known, lines otherwise."""

    def __init__(self, total_bytes: int | None) -> None:
        self.by_bytes = total_bytes is not None
        self.bar: Any = None
        if sys.stderr.isatty():
            if total_bytes is not None:
                self.bar = click.progressbar(length=total_bytes, label="ingesting", file=sys.stderr)
            else:  # unknown length (a pipe): the bar shows the line count
                # a generator has no length hint, so click shows a position instead of a percentage
                self.bar = click.progressbar((x for x in ()), label="ingesting (lines)", show_pos=True,
                                             file=sys.stderr)
            self.bar.__enter__()

    def advance(self, lines: int, raw_bytes: int) -> None:
        if self.bar is not None:
            self.bar.update(raw_bytes if self.by_bytes else lines)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _input_size(stream: IO[bytes]) -> int | None:
    try:
        if stream.seekable():
            position = stream.tell()
            size = stream.seek(0, 2)
            stream.seek(position)
            return size - position
    except (OSError, ValueError):
        pass
    return None


@cli.command()
@connection_options
@click.argument("file", default="-", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--format", "fmt", type=click.Choice(["jsonl", "text", "auto"]), default="auto", show_default=True,
              help="jsonl: one JSON object per line; text: each line is a message; auto: JSON if it starts with {.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option("--batch", "batch_lines", type=click.IntRange(min=1, max=100_000), default=DEFAULT_BATCH_LINES,
              show_default=True, help="Lines per request.")
def ingest(socket_path: str | None, data_dir: str | None, file: str, fmt: str, as_json: bool,
           batch_lines: int) -> None:
    """Store the logs of FILE (or stdin, "-"), one record per line.  Exit 1 if any line was rejected
    (the others are stored)."""
    with connect(socket_path, data_dir) as conn:
        stream = click.open_file(file, "rb")
        with stream:
            accepted, rejected, duration_s = _ingest_stream(conn, stream, fmt, batch_lines)
    if as_json:
        click.echo(render.render_ingest_json(accepted=accepted, rejected=rejected, duration_s=duration_s))
    else:
        click.echo(render.render_ingest_summary(accepted=accepted, rejected=rejected, duration_s=duration_s,
                                                width=terminal_width()))
    if rejected:
        first = rejected[0]
        raise CliError(f"{len(rejected)} of {accepted + len(rejected)} records were rejected (first: line "
                       f"{first.get('line')}: {first.get('reason')}); fix those lines and ingest them again")


#: chunks `shardlog ingest` keeps in flight: the coordinator normalizes one while the shards
#: commit another (one at a time left each side idle half the time)
INGEST_IN_FLIGHT = 3


def _ingest_stream(conn: Connection, stream: IO[bytes], fmt: str,
                   batch_lines: int) -> tuple[int, list[dict[str, Any]], float]:
    """Send the stream chunk by chunk, up to INGEST_IN_FLIGHT at once (each on its own connection).
    Each chunk has its own idempotency key (run id + chunk number), so the retries of
    ``call_retrying`` after a daemon hiccup never store a line twice.  After a chunk fails no new
    one is sent; the error names exactly which lines were not stored."""
    run_id = uuid.uuid4().hex
    accepted = 0
    rejected: list[dict[str, Any]] = []
    failed: list[tuple[int, int, ShardlogError]] = []  # (first line, last line, error)
    progress = _Progress(_input_size(stream))
    started = time.perf_counter()
    idle: queue.SimpleQueue[Client] = queue.SimpleQueue()
    idle.put(conn.client)
    extra: list[Client] = []

    def send(args: dict[str, Any]) -> Any:
        try:
            client = idle.get_nowait()
        except queue.Empty:
            client = Client(conn.client.path, timeout_s=conn.client.timeout_s)
            extra.append(client)
        try:
            return call_retrying(client, "ingest_lines", args)
        finally:
            idle.put(client)

    def collect(item: tuple[Future[Any], int, int, int]) -> None:
        nonlocal accepted
        future, first_line, n_lines, raw_bytes = item
        try:
            result = future.result()
        except ShardlogError as err:
            failed.append((first_line, first_line + n_lines - 1, err))
            return
        accepted += int(result.get("accepted", 0))
        rejected.extend(result.get("rejected", []))  # chunks are collected in order: lines stay sorted
        progress.advance(n_lines, raw_bytes)

    next_line = None  # the first line never sent, once a failure stopped sending
    try:
        with ThreadPoolExecutor(max_workers=INGEST_IN_FLIGHT, thread_name_prefix="ingest") as pool:
            pending: deque[tuple[Future[Any], int, int, int]] = deque()
            for chunk_no, (first_line, lines, raw_bytes) in enumerate(read_chunks(stream, batch_lines=batch_lines,
                                                                                keep_traces=fmt != "jsonl")):
                if failed:
                    next_line = first_line
                    break
                args = {"lines": lines, "format": fmt, "first_line": first_line,
                        "idempotency_key": f"cli-{run_id}-{chunk_no}"}
                pending.append((pool.submit(send, args), first_line, len(lines), raw_bytes))
                while len(pending) >= INGEST_IN_FLIGHT or (pending and pending[0][0].done()):
                    collect(pending.popleft())
            while pending:
                collect(pending.popleft())
    finally:
        progress.close()
        for client in extra:
            client.close()
    if failed:
        err = failed[0][2]
        lost = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b, _ in failed)
        rest = f"; lines from {next_line} on were not sent" if next_line is not None else ""
        raise type(conn.cli_error(err))(f"{err.message} ({accepted} records were stored; lines {lost} were not"
                                        f"{rest}; send those lines again)") from None
    return accepted, rejected, time.perf_counter() - started


# --- query / count / agg / tail -----------------------------------------------------------------


@cli.command()
@connection_options
@filter_options
@click.option("--limit", type=click.IntRange(min=0), default=None, help="Logs to show (default 100).")
@click.option("--page", type=click.IntRange(min=1), default=None, help="Page number (with --page-size).")
@click.option("--page-size", "page_size", type=click.IntRange(min=1), default=None, help="Logs per page.")
@click.option("--cursor", default=None, help="Continue after the page that printed this next cursor.")
@click.option("--sort", type=click.Choice(["asc", "desc"]), default=None, help="Time order (default desc).")
@click.option("--output", "-o", type=click.Choice(["table", "json", "jsonl"]), default="table", show_default=True)
def query(socket_path: str | None, data_dir: str | None, query: str | None, limit: int | None,
          page: int | None, page_size: int | None, cursor: str | None, sort: str | None, output: str,
          **filters: Any) -> None:
    """Search logs.  QUERY uses the query language (e.g. 'level:ERROR timeout source:db')."""
    params = filter_params(query, filters)
    for key, value in (("limit", limit), ("page", page), ("page_size", page_size), ("cursor", cursor),
                       ("sort", sort)):
        if value is not None:
            params[key] = value
    with connect(socket_path, data_dir) as conn:
        result = conn.call("query", params)
    if output == "json":
        click.echo(render.render_query_json(result))
    elif output == "jsonl":
        if result.get("logs"):
            click.echo(render.render_jsonl(result["logs"]))
    else:
        click.echo(render.render_logs_table(result, width=terminal_width()))
    if output != "table":
        warn_partial(result)


@cli.command()
@connection_options
@filter_options
def count(socket_path: str | None, data_dir: str | None, query: str | None, **filters: Any) -> None:
    """Print the number of matching logs."""
    with connect(socket_path, data_dir) as conn:
        result = conn.call("count", filter_params(query, filters))
    click.echo(str(result["count"]))
    warn_partial(result)


@cli.command()
@connection_options
@filter_options
@click.option("--group-by", "group_by", metavar="F", default=None, help="Count per value of field F.")
@click.option("--histogram", metavar="F", default=None, help="Histogram of field F (values and counts).")
@click.option("--top", "top", metavar="F=N", multiple=True, help="The N most frequent values of F (e.g. tags=5).")
@click.option("--interval", metavar="DURATION", default=None, help="Time histogram with this bucket size, e.g. 1m.")
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table", show_default=True)
def agg(socket_path: str | None, data_dir: str | None, query: str | None, group_by: str | None,
        histogram: str | None, top: tuple[str, ...], interval: str | None, output: str, **filters: Any) -> None:
    """Aggregate matching logs: group-by counts, histograms, top-N values, time histograms."""
    params = filter_params(query, filters)
    if group_by is not None:
        params["group_by"] = group_by
    if histogram is not None:
        params["histogram"] = histogram
    if top:
        for item in top:
            name, sep, number = item.partition("=")
            if not sep or not name or not number.isdigit():
                raise click.BadParameter(f"{item!r} must be FIELD=N, e.g. tags=5", param_hint="--top")
        # the RPC takes "tags:5,source:3" (docs/rpc.md)
        params["top"] = ",".join(item.replace("=", ":", 1) for item in top)
    if interval is not None:
        params["interval"] = interval
    with connect(socket_path, data_dir) as conn:
        result = conn.call("aggregate", params)
    if output == "json":
        click.echo(render.render_agg_json(result))
        warn_partial(result)
    else:
        click.echo(render.render_agg_table(result, width=terminal_width(), group_by=group_by, histogram=histogram))


@cli.command()
@connection_options
@filter_options
@click.option("-n", "--lines", "lines", type=click.IntRange(min=0, max=10_000), default=10, show_default=True,
              help="Show the newest N matching logs first.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new matching logs until Ctrl+C.")
@click.option("--output", "-o", type=click.Choice(["table", "jsonl"]), default="table", show_default=True)
def tail(socket_path: str | None, data_dir: str | None, query: str | None, lines: int, follow: bool, output: str,
         **filters: Any) -> None:
    """Print the newest matching logs (oldest first); with -f, keep printing new ones."""
    params = filter_params(query, filters)
    params["limit"] = lines
    with connect(socket_path, data_dir) as conn:
        result = conn.call("tail", params)
        logs = result.get("logs") or []
        width = terminal_width()
        source_width = render.source_width_for(logs) if logs else render.MAX_SOURCE_WIDTH // 2
        # Fixed widths: logs printed later must line up with these.
        row_widths = {"timestamp_width": render.MAX_TIMESTAMP_WIDTH, "level_width": 5, "source_width": source_width}

        def show(batch: list[dict[str, Any]]) -> None:
            for log in batch:
                if output == "jsonl":
                    click.echo(render.to_json(log))
                else:
                    click.echo(render.render_log_row(log, width=width, **row_widths))

        show(logs)
        if not follow:
            return
        cursor = result.get("cursor")
        try:
            while True:
                result = conn.call("tail", {**params, "cursor": cursor, "wait_s": TAIL_WAIT_S},
                                   timeout_s=TAIL_WAIT_S + 30.0)
                show(result.get("logs") or [])
                sys.stdout.flush()
                cursor = result.get("cursor", cursor)
        except KeyboardInterrupt:
            return  # Ctrl+C is how -f ends: exit 0


# --- alerts -------------------------------------------------------------------------------------

#: ``alerts watch`` long-poll: the daemon holds the call up to this long waiting for alert events.
WATCH_WAIT_S = 10.0
#: History entries per ``alerts export`` (the daemon keeps at most this many).
EXPORT_LIMIT = 100_000
#: Alerts per ``alerts_import`` call, far below the frame limit even with five sample logs each.
IMPORT_BATCH = 1_000


def _duration_text(seconds: int | None) -> str:
    """120 -> "2m", 90 -> "90s", 7200 -> "2h": the largest unit that divides the duration."""
    if seconds is None:
        return "-"
    if seconds == 0:
        return "0"
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], *, width: int) -> str:
    """Left-aligned columns; the last column is cut so a row fits ``width``."""
    cells = [header] + [tuple(render.one_line(cell) for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header) - 1)]
    lines = []
    for row in cells:
        head = render.GAP.join(cell.ljust(w) for cell, w in zip(row, widths))
        prefix = head + render.GAP if widths else ""
        lines.append((prefix + render.truncate(row[-1], max(width - len(prefix), 20))).rstrip())
    return "\n".join(lines)


def render_rules_table(rules: list[dict[str, Any]], *, width: int) -> str:
    if not rules:
        return "no alert rules; add one with: shardlog alerts add NAME --query Q --threshold N --window 5m"
    header = ("NAME", "ENABLED", "SEVERITY", "THRESHOLD", "WINDOW", "COOLDOWN", "GROUP BY", "FIRING", "QUERY")
    rows = []
    for rule in rules:
        firing = rule.get("firing") or []
        if rule.get("group_by"):
            firing_text = ",".join(firing) if firing else "-"
        else:
            firing_text = "yes" if firing else "-"
        rows.append((str(rule["name"]), "yes" if rule.get("enabled") else "no", str(rule.get("severity")),
                     str(rule.get("threshold")), _duration_text(rule.get("window_s")),
                     _duration_text(rule.get("cooldown_s")), str(rule.get("group_by") or "-"), firing_text,
                     str(rule.get("query") or '""')))
    return _table(header, rows, width=width)


def render_history_table(alerts: list[dict[str, Any]], *, width: int) -> str:
    if not alerts:
        return "no alerts"
    header = ("TRIGGERED AT", "SEVERITY", "RULE", "GROUP", "COUNT", "MESSAGE")
    rows = [(str(a.get("triggered_at") or "-"), str(a.get("severity") or "-"), str(a.get("rule")),
             "-" if a.get("group") is None else str(a["group"]), str(a.get("count", "-")), str(a.get("message") or ""))
            for a in alerts]
    return _table(header, rows, width=width)


def render_alert_event(event: dict[str, Any], *, width: int) -> str:
    """One line per event of ``alerts watch``: fired alerts and resolutions."""
    where = f"/{event['group']}" if event.get("group") is not None else ""
    if event.get("status") == "resolved":
        text = (f"{event.get('resolved_at', '')} RESOLVED {event.get('severity') or '-'} {event.get('rule')}{where}: "
                f"{event.get('count', 0)} matching logs in the window now")
    else:
        text = (f"{event.get('triggered_at', '')} FIRING {event.get('severity') or '-'} {event.get('rule')}{where}: "
                f"{event.get('message', '')}")
    return render.truncate(render.one_line(text), width)


@cli.group()
def alerts() -> None:
    """Alert rules, the alert history, and alerts as they fire.

    A rule fires when at least THRESHOLD logs matching its query arrived within WINDOW (per value of
    --group-by, if given), then stays quiet for COOLDOWN.
    """


@alerts.command("add")
@connection_options
@click.argument("name")
@click.option("--query", "-q", "query", required=True, metavar="Q",
              help="Logs that count, in the query language (e.g. 'level:ERROR timeout'); \"\" counts every log.")
@click.option("--threshold", type=int, default=None, metavar="N", help="Fire at N matching logs in the window "
              "(default 1).")
@click.option("--window", metavar="DURATION", default=None, help="Sliding window, e.g. 2m (default 5m).")
@click.option("--cooldown", metavar="DURATION", default=None, help="Quiet time after firing, e.g. 10m (default "
              "10m; 0 for none).")
@click.option("--severity", type=click.Choice(["low", "medium", "high", "critical"], case_sensitive=False),
              default=None, help="Default medium.")
@click.option("--group-by", "group_by", metavar="F", default=None, help="Count and fire per value of field F "
              "(e.g. source, host, meta.region).")
@click.option("--description", metavar="D", default=None, help="Free text carried by the alerts.")
@click.option("--replace", is_flag=True, help="Replace a rule of the same name instead of refusing.")
def alerts_add(socket_path: str | None, data_dir: str | None, name: str, query: str, threshold: int | None,
               window: str | None, cooldown: str | None, severity: str | None, group_by: str | None,
               description: str | None, replace: bool) -> None:
    """Add the alert rule NAME."""
    rule: dict[str, Any] = {"name": name, "query": query}
    for key, value in (("threshold", threshold), ("window", window), ("cooldown", cooldown),
                       ("severity", severity), ("group_by", group_by), ("description", description)):
        if value is not None:
            rule[key] = value.lower() if key == "severity" else value
    with connect(socket_path, data_dir) as conn:
        added = conn.call("alerts_add", {"rule": rule, "replace": replace})
    group = f", per {added['group_by']}" if added.get("group_by") else ""
    click.echo(f"{'saved' if replace else 'added'} alert rule {added['name']!r}: {added['query'] or '(every log)'}"
               f" — {added['threshold']} in {_duration_text(added['window_s'])}{group}, cooldown "
               f"{_duration_text(added['cooldown_s'])}, severity {added['severity']}")


@alerts.command("list")
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print the rules as one JSON array.")
def alerts_list(socket_path: str | None, data_dir: str | None, as_json: bool) -> None:
    """List the alert rules and which are firing."""
    with connect(socket_path, data_dir) as conn:
        rules = conn.call("alerts_list")["rules"]
    click.echo(render.to_json(rules) if as_json else render_rules_table(rules, width=terminal_width()))


@alerts.command("remove")
@connection_options
@click.argument("name")
def alerts_remove(socket_path: str | None, data_dir: str | None, name: str) -> None:
    """Remove the alert rule NAME (its history stays)."""
    with connect(socket_path, data_dir) as conn:
        conn.call("alerts_remove", {"name": name})
    click.echo(f"removed alert rule {name!r}")


@alerts.command("enable")
@connection_options
@click.argument("name")
def alerts_enable(socket_path: str | None, data_dir: str | None, name: str) -> None:
    """Enable the alert rule NAME."""
    with connect(socket_path, data_dir) as conn:
        conn.call("alerts_enable", {"name": name})
    click.echo(f"enabled alert rule {name!r}")


@alerts.command("disable")
@connection_options
@click.argument("name")
def alerts_disable(socket_path: str | None, data_dir: str | None, name: str) -> None:
    """Disable the alert rule NAME (it stops counting; enable starts a fresh window)."""
    with connect(socket_path, data_dir) as conn:
        conn.call("alerts_disable", {"name": name})
    click.echo(f"disabled alert rule {name!r}")


@alerts.command("history")
@connection_options
@click.option("--since", metavar="T", default=None, help="Only alerts fired at or after T (e.g. -1h, 2024-01-01).")
@click.option("--limit", type=click.IntRange(min=1, max=EXPORT_LIMIT), default=1000, show_default=True,
              help="The newest N alerts.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per alert and line (JSON lines).")
def alerts_history(socket_path: str | None, data_dir: str | None, since: str | None, limit: int,
                   as_json: bool) -> None:
    """Show fired alerts, oldest first."""
    args: dict[str, Any] = {"limit": limit}
    if since is not None:
        args["since"] = since
    with connect(socket_path, data_dir) as conn:
        history = conn.call("alerts_history", args)["alerts"]
    if as_json:
        if history:
            click.echo("\n".join(render.to_json(alert) for alert in history))
    else:
        click.echo(render_history_table(history, width=terminal_width()))


@alerts.command("export")
@connection_options
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
def alerts_export(socket_path: str | None, data_dir: str | None, file: str) -> None:
    """Write the alert history to FILE as JSON lines ("-" for stdout)."""
    with connect(socket_path, data_dir) as conn:
        history = conn.call("alerts_history", {"limit": EXPORT_LIMIT})["alerts"]
    text = "".join(render.to_json(alert) + "\n" for alert in history)
    if file == "-":
        click.echo(text, nl=False)
        return
    try:
        with open(file, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as err:
        raise CliError(f"cannot write {file}: {err.strerror}; check the path and permissions") from None
    click.echo(f"exported {len(history)} alerts to {file}")


@alerts.command("import")
@connection_options
@click.argument("file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
def alerts_import(socket_path: str | None, data_dir: str | None, file: str) -> None:
    """Add the alerts of FILE (JSON lines, as `alerts export` writes) to the history.  Every line is
    checked first: one bad line imports nothing.  An alert already there (same key) is not doubled."""
    with click.open_file(file, "r", encoding="utf-8", errors="replace") as handle:
        try:
            items = read_alerts_jsonl(handle, file)
        except ShardlogError as err:
            raise CliError(err.message) from None
    imported = 0
    with connect(socket_path, data_dir) as conn:
        for start in range(0, len(items), IMPORT_BATCH):
            imported += int(conn.call("alerts_import", {"alerts": items[start:start + IMPORT_BATCH]})["imported"])
    click.echo(f"imported {imported} alerts from {file}")


@alerts.command("watch")
@connection_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event and line (JSON lines).")
def alerts_watch(socket_path: str | None, data_dir: str | None, as_json: bool) -> None:
    """Print alerts as they fire (and resolve) until Ctrl+C."""
    with connect(socket_path, data_dir) as conn:
        cursor = conn.call("alerts_watch")["cursor"]
        click.echo("watching alerts (Ctrl+C to stop)", err=True)
        width = terminal_width()
        try:
            while True:
                answer = conn.call("alerts_watch", {"cursor": cursor, "wait_s": WATCH_WAIT_S},
                                   timeout_s=WATCH_WAIT_S + 30.0)
                for event in answer.get("events") or []:
                    click.echo(render.to_json(event) if as_json else render_alert_event(event, width=width))
                sys.stdout.flush()
                # a restarted daemon counts events from 0 again: follow its cursor
                cursor = answer.get("cursor", cursor)
        except KeyboardInterrupt:
            return  # Ctrl+C is how watch ends: exit 0


# --- stats / metrics ----------------------------------------------------------------------------


@cli.command()
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's stats as JSON.")
def stats(socket_path: str | None, data_dir: str | None, as_json: bool) -> None:
    """Show totals, per-level / source / tag counts and per-shard state."""
    with connect(socket_path, data_dir) as conn:
        result = conn.call("stats")
    if as_json:
        click.echo(render.to_json(result))
    else:
        click.echo(render.render_stats(result, width=terminal_width()))


@cli.command()
@connection_options
def metrics(socket_path: str | None, data_dir: str | None) -> None:
    """Print the daemon's metrics in the Prometheus text format."""
    with connect(socket_path, data_dir) as conn:
        result = conn.call("metrics")
    click.echo(str(result.get("text", "")), nl=False)


def main() -> None:
    """The console script ``shardlog``."""
    cli(prog_name="shardlog")


if __name__ == "__main__":
    main()
