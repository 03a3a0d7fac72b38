"""Finding the daemon, talking to it, and turning its errors into one-line CLI errors.

This module owns the CLI's side of DESIGN §6 "finding the daemon" and the exit codes:

* the socket is ``--socket PATH``, else ``--data-dir DIR``'s socket, else ``$SHARDLOG_SOCKET``,
  else ``$SHARDLOG_DATA_DIR``'s socket, else the default data dir's socket.  A data dir's socket is
  ``coordinator.config.socket_path_for`` (``DIR/shardlog.sock``, or the short path recorded in
  ``DIR/socket.path`` when DIR is too long for a unix socket);
* exit 1 for any ``storage.errors`` error the daemon sends back (``BadQuery``, ``BadRequest``, ...);
  exit 3 when the daemon cannot be reached (nothing listens, the socket is missing, the connection
  dropped), with a hint saying how to start it;
* every error is ONE line on stderr, ``shardlog: <message>``; ``CliError`` is raised only by the
  command layer (``cli.main``), the rest of the code raises ``storage.errors`` classes.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import click

from coordinator.config import SOCKET_NAME, default_data_dir, socket_path_for
from shardd.client import Client
from storage.errors import ShardlogError, ShardUnavailable

ENV_SOCKET = "SHARDLOG_SOCKET"
ENV_DATA_DIR = "SHARDLOG_DATA_DIR"

EXIT_USER_ERROR = 1
EXIT_UNREACHABLE = 3

#: How long to wait for the daemon to accept a connection before calling it unreachable; a live
#: daemon accepts in microseconds, a wedged one should not hang the CLI.
PROBE_TIMEOUT_S = 5.0
#: Per-call deadline.  Queries are bounded by the daemon's own query_timeout (30 s by default);
#: this is a little longer so the daemon's answer (maybe ``partial: true``) wins the race.
CALL_TIMEOUT_S = 65.0


class CliError(click.ClickException):
    """A user or query error: exit 1, one line on stderr."""

    exit_code = EXIT_USER_ERROR

    def __init__(self, message: str) -> None:
        # One line whatever the message holds: scripts grep stderr, people read the first line.
        super().__init__(" ".join(message.split()))

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"shardlog: {self.format_message()}", file=file, err=file is None)


class DaemonUnreachable(CliError):
    """The daemon is not running or does not answer: exit 3."""

    exit_code = EXIT_UNREACHABLE


@dataclass(frozen=True)
class Target:
    """Where the daemon should be, and the data dir to name in the "start it with" hint."""

    socket_path: Path
    #: None when only a socket path is known and it does not look like ``DIR/shardlog.sock``
    data_dir: Path | None

    def start_hint(self) -> str:
        if self.data_dir is None:
            return (f"start it with: shardlog serve --data-dir DIR (the daemon of DIR listens on "
                    f"DIR/{SOCKET_NAME}), or pass --socket of a running daemon")
        return f"start it with: shardlog serve --data-dir {self.data_dir}"


def resolve_target(socket_option: str | None, data_dir_option: str | None,
                   env: Mapping[str, str] | None = None) -> Target:
    """The daemon's socket by the DESIGN §6 precedence: flags, then environment, then the default."""
    env = os.environ if env is None else env
    if socket_option:
        return _target_for_socket(socket_option)
    if data_dir_option:
        return _target_for_data_dir(data_dir_option)
    if env.get(ENV_SOCKET):
        return _target_for_socket(env[ENV_SOCKET])
    if env.get(ENV_DATA_DIR):
        return _target_for_data_dir(env[ENV_DATA_DIR])
    return _target_for_data_dir(str(default_data_dir()))


def _target_for_data_dir(text: str) -> Target:
    data_dir = Path(text).expanduser()
    return Target(socket_path_for(data_dir), data_dir)


def _target_for_socket(text: str) -> Target:
    path = Path(text).expanduser()
    # DIR/shardlog.sock is a data dir's own socket, so the hint can name DIR.
    return Target(path, path.parent if path.name == SOCKET_NAME else None)


def unreachable(target: Target, reason: str) -> DaemonUnreachable:
    return DaemonUnreachable(f"cannot reach the daemon at {target.socket_path} ({reason}); {target.start_hint()}")


def probe(target: Target, *, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise ``DaemonUnreachable`` naming the reason ("connection refused", "no such file or
    directory") when nothing accepts connections on the target's socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        sock.connect(os.fspath(target.socket_path))
    except TimeoutError:
        raise unreachable(target, f"no answer within {timeout_s:g} s") from None
    except OSError as err:
        reason = (err.strerror or str(err)).lower()
        raise unreachable(target, reason) from None
    finally:
        sock.close()


class Connection:
    """One CLI invocation's connection to the daemon.

    ``call_raw`` raises ``storage.errors`` classes (for code that retries); ``call`` raises
    ``CliError`` / ``DaemonUnreachable`` ready to print.
    """

    def __init__(self, target: Target, *, timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.target = target
        self.client = Client(target.socket_path, timeout_s=timeout_s)

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def call_raw(self, op: str, args: dict[str, Any] | None = None, *, timeout_s: float | None = None) -> Any:
        return self.client.call(op, args or {}, timeout_s=timeout_s)

    def call(self, op: str, args: dict[str, Any] | None = None, *, timeout_s: float | None = None) -> Any:
        try:
            return self.call_raw(op, args, timeout_s=timeout_s)
        except ShardlogError as err:
            raise self.cli_error(err) from None

    def cli_error(self, err: ShardlogError) -> CliError:
        """The exit-code class of ``err``.  Only a failure of our own connection (the client tags
        those with our socket path) means "unreachable"; a ``ShardUnavailable`` the daemon sends
        back about one of its shards is a daemon answer, exit 1."""
        if isinstance(err, ShardUnavailable) and err.details.get("path") == self.client.path:
            return DaemonUnreachable(f"the daemon at {self.target.socket_path} did not answer: {err.message}")
        return CliError(err.message)


def connect(socket_option: str | None, data_dir_option: str | None) -> Connection:
    """Resolve, probe (exit 3 with the hint when nothing listens) and return a connection."""
    target = resolve_target(socket_option, data_dir_option)
    probe(target)
    return Connection(target)
