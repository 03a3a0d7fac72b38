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

import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import IO, Any, TypeVar

import click

from cli import render
from cli.connect import CliError, Connection, connect
from coordinator.api import call_retrying
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


def read_chunks(stream: IO[bytes], *, batch_lines: int,
                max_chars: int = MAX_BATCH_CHARS) -> Iterator[tuple[int, list[str], int]]:
    """``(first_line, lines, raw_bytes)`` chunks of a byte stream; lines are numbered from 1 and
    sent without terminators.  Invalid UTF-8 becomes U+FFFD rather than failing the file."""
    lines: list[str] = []
    chars = raw_bytes = 0
    first_line = 1
    for number, raw in enumerate(stream, start=1):
        if not lines:
            first_line = number
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        lines.append(text)
        chars += len(text)
        raw_bytes += len(raw)
        if len(lines) >= batch_lines or chars >= max_chars:
            yield first_line, lines, raw_bytes
            lines, chars, raw_bytes = [], 0, 0
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


def _ingest_stream(conn: Connection, stream: IO[bytes], fmt: str,
                   batch_lines: int) -> tuple[int, list[dict[str, Any]], float]:
    """Send the stream chunk by chunk.  Each chunk has its own idempotency key (run id + chunk
    number), so the retries of ``call_retrying`` after a daemon hiccup never store a line twice."""
    run_id = uuid.uuid4().hex
    accepted = 0
    rejected: list[dict[str, Any]] = []
    progress = _Progress(_input_size(stream))
    started = time.perf_counter()
    try:
        for chunk_no, (first_line, lines, raw_bytes) in enumerate(read_chunks(stream, batch_lines=batch_lines)):
            args = {"lines": lines, "format": fmt, "first_line": first_line,
                    "idempotency_key": f"cli-{run_id}-{chunk_no}"}
            try:
                result = call_retrying(conn.client, "ingest_lines", args)
            except ShardlogError as err:
                done = f"{accepted} records before line {first_line} were stored"
                raise type(conn.cli_error(err))(f"{err.message} ({done})") from None
            accepted += int(result.get("accepted", 0))
            rejected.extend(result.get("rejected", []))
            progress.advance(len(lines), raw_bytes)
    finally:
        progress.close()
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
