"""The daemon's one configuration object, built once at the edge and validated once.

Precedence: command-line flags > ``SHARDLOG_*`` environment variables > the TOML file (``--config``)
> defaults.  Every problem found is reported together in one ``ConfigError``.

TOML keys (all optional; the environment variable is ``SHARDLOG_`` + the upper-cased key):

    data_dir = "/var/lib/shardlog"   # default: $XDG_DATA_HOME/shardlog or ~/.local/share/shardlog
    shards = 2                       # default: CPU count; fixed when the data dir is created
    http = "127.0.0.1:9428"          # "" disables HTTP
    tcp = ""                         # JSON-lines TCP listener, e.g. "127.0.0.1:5170"
    syslog = ""                      # syslog TCP+UDP listener (issue: shippers)
    retention = "30d"                # drop blocks older than this; "" keeps everything
    token = ""                       # bearer token; required to listen on a non-loopback address
    query_timeout = "30s"            # per-request deadline across all shards
    max_batch_records = 100000       # records in one ingest request
    parse_in = "shards"              # where records are parsed: "shards" or "coordinator"
    max_body_bytes = 67108864        # HTTP / TCP request body limit
    block_records = 1024             # records per sealed block
    max_store_bytes = 1099511627776  # per shard store size cap (StoreFull beyond)
    log_level = "INFO"
    hooks = ["myhooks:enrich"]       # pre-ingest hooks, module:function (coordinator.hooks)
    [limits]                         # per-record limits, DESIGN §2
    max_message_bytes = 262144
    ...
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from coordinator.hooks import check_hooks, parse_hook_specs
from storage.errors import ShardlogError
from storage.record import Limits
from storage.timefmt import parse_duration

#: sun_path is 108 bytes on Linux, including the terminating NUL
MAX_SOCKET_PATH = 107
SOCKET_NAME = "shardlog.sock"
#: written into the data dir when the socket had to live elsewhere (long data dir path)
SOCKET_POINTER = "socket.path"


class ConfigError(ShardlogError):
    code = "config_error"
    http_status = 400


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "shardlog"


def short_runtime_dir(data_dir: Path) -> Path:
    """A short private directory for sockets when the data dir path is too long for sun_path."""
    digest = hashlib.blake2b(str(data_dir.resolve()).encode(), digest_size=6).hexdigest()
    return Path("/tmp") / f"shardlog-{os.getuid()}-{digest}"


def socket_path_for(data_dir: Path) -> Path:
    """Where the daemon of ``data_dir`` listens (and where the CLI looks)."""
    direct = data_dir / SOCKET_NAME
    if len(os.fsencode(str(direct.absolute()))) <= MAX_SOCKET_PATH:
        return direct.absolute()
    pointer = data_dir / SOCKET_POINTER
    try:
        recorded = pointer.read_text().strip()
        if recorded:
            return Path(recorded)
    except OSError:
        pass
    return short_runtime_dir(data_dir) / SOCKET_NAME


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{what} {text!r} must be HOST:PORT, e.g. 127.0.0.1:9428")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Config:
    data_dir: Path = field(default_factory=default_data_dir)
    #: None: the data dir's manifest count, or the CPU count for a new data dir
    shards: int | None = None
    http: tuple[str, int] | None = ("127.0.0.1", 9428)
    tcp: tuple[str, int] | None = None
    syslog: tuple[str, int] | None = None
    retention_ns: int | None = None
    token: str | None = None
    query_timeout_s: float = 30.0
    ingest_timeout_s: float = 60.0
    max_batch_records: int = 100_000
    max_body_bytes: int = 64 * 1024 * 1024
    #: records accepted by the coordinator but not yet acknowledged by every shard
    max_inflight_records: int = 400_000
    block_records: int = 1024
    seal_after_s: float = 1.0
    max_store_bytes: int = 1 << 40
    limits: Limits = field(default_factory=Limits)
    log_level: str = "INFO"
    socket_path: Path | None = None
    #: [[alerts]] tables: rules (re)defined at every start, kept with those added at run time
    alert_rules: tuple[dict[str, Any], ...] = ()
    #: [notify]: webhook = [urls], alertmanager = url, exec = command
    notify: dict[str, Any] = field(default_factory=dict)
    #: pre-ingest hooks, "module:function" each, run in this order (coordinator.hooks)
    hooks: tuple[str, ...] = ()
    #: where ingested records are parsed and normalized: "shards" (JSON texts routed unparsed, each
    #: shard parses its share; docs/design.md "Ingest") or "coordinator" (DESIGN §3's flow)
    parse_in: str = "shards"

    @property
    def socket(self) -> Path:
        return self.socket_path or socket_path_for(self.data_dir)


_DURATION_KEYS = {"retention": "retention_ns", "query_timeout": "query_timeout_s", "ingest_timeout": "ingest_timeout_s",
                  "seal_after": "seal_after_s"}
_INT_KEYS = ("shards", "max_batch_records", "max_body_bytes", "max_inflight_records", "block_records",
             "max_store_bytes")
_ADDR_KEYS = ("http", "tcp", "syslog")
_TEXT_KEYS = ("data_dir", "token", "log_level", "socket")
#: key -> its allowed values
_CHOICE_KEYS = {"parse_in": ("shards", "coordinator")}
#: tables/arrays only the config file can give
_FILE_ONLY_KEYS = {"limits", "alerts", "notify"}
KNOWN_KEYS = set(_DURATION_KEYS) | set(_INT_KEYS) | set(_ADDR_KEYS) | set(_TEXT_KEYS) | set(_CHOICE_KEYS) \
    | _FILE_ONLY_KEYS | {"hooks"}


def load_config(*, config_file: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None,
                flags: Mapping[str, Any] | None = None) -> Config:
    """Merge file, environment and flags (None flag values mean "not given") and validate."""
    env = os.environ if env is None else env
    problems: list[str] = []
    raw: dict[str, Any] = {}
    if config_file is not None:
        try:
            with open(config_file, "rb") as handle:
                file_values = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}; check the path") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from exc
        for key, value in file_values.items():
            if key not in KNOWN_KEYS:
                problems.append(f"unknown key {key!r} in {config_file}; known keys: {', '.join(sorted(KNOWN_KEYS))}")
            else:
                raw[key] = value
    for key in KNOWN_KEYS - _FILE_ONLY_KEYS:
        value = env.get("SHARDLOG_" + key.upper())
        if value is not None:
            raw[key] = value
    for key, value in (flags or {}).items():
        if value is not None:
            raw[key] = value

    values: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            if key in _DURATION_KEYS:
                target = _DURATION_KEYS[key]
                if value in ("", None, 0, "0") and key == "retention":
                    values[target] = None
                    continue
                ns = parse_duration(str(value)) if not isinstance(value, (int, float)) or isinstance(value, bool) \
                    else int(value * 1e9)
                values[target] = ns if target.endswith("_ns") else ns / 1e9
            elif key in _INT_KEYS:
                number = int(value)
                if number < 1 or isinstance(value, bool) or (isinstance(value, float) and value != number):
                    raise ValueError(f"{key} must be a positive integer, got {value!r}")
                values[key] = number
            elif key in _ADDR_KEYS:
                values[key] = None if value in ("", None, False) else parse_hostport(str(value), key)
            elif key == "data_dir":
                values["data_dir"] = Path(str(value)).expanduser()
            elif key == "socket":
                values["socket_path"] = Path(str(value)).expanduser() if value else None
            elif key == "token":
                values["token"] = str(value) or None
            elif key in _CHOICE_KEYS:
                if value not in _CHOICE_KEYS[key]:
                    raise ValueError(f"{key} {value!r} must be one of {', '.join(_CHOICE_KEYS[key])}")
                values[key] = value
            elif key == "log_level":
                level = str(value).upper()
                if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
                    raise ValueError(f"log_level {value!r} must be one of DEBUG, INFO, WARNING, ERROR")
                values["log_level"] = level
            elif key == "limits":
                if not isinstance(value, dict):
                    raise ValueError("[limits] must be a table")
                known = {f.name for f in fields(Limits)}
                unknown = set(value) - known
                if unknown:
                    raise ValueError(f"unknown [limits] keys {sorted(unknown)}; known: {sorted(known)}")
                values["limits"] = Limits(**{k: int(v) for k, v in value.items()})
            elif key == "alerts":
                values["alert_rules"] = _alert_rules(value)
            elif key == "notify":
                values["notify"] = _notify(value)
            elif key == "hooks":
                values["hooks"], hook_problems = parse_hook_specs(value)
                problems.extend(hook_problems)
        except (ValueError, TypeError, ShardlogError) as exc:
            problems.append(str(getattr(exc, "message", exc)))

    # validate what did parse too, so one start reports every problem, not one round at a time
    config = Config(**values)
    problems.extend(validate(config))
    if problems:
        raise ConfigError("invalid configuration: " + "; ".join(problems), problems=problems)
    return config


def _alert_rules(value: Any) -> tuple[dict[str, Any], ...]:
    from coordinator.alerts import Rule  # pure module; imported here to keep config light

    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ValueError("alerts must be an array of tables: [[alerts]] name = ... query = ...")
    problems = []
    for rule in value:
        try:
            Rule.from_dict(rule)
        except ShardlogError as exc:
            problems.append(f"[[alerts]] {rule.get('name', '?')!r}: {exc.message}")
    if problems:
        raise ValueError("; ".join(problems))
    return tuple(value)


def _notify(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("[notify] must be a table with webhook, alertmanager and/or exec")
    unknown = set(value) - {"webhook", "alertmanager", "exec", "timeout", "retries"}
    if unknown:
        raise ValueError(f"unknown [notify] keys {sorted(unknown)}; known: alertmanager, exec, retries, timeout, webhook")
    webhooks = value.get("webhook", [])
    if isinstance(webhooks, str):
        webhooks = [webhooks]
    for url in list(webhooks) + ([value["alertmanager"]] if value.get("alertmanager") else []):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"[notify] URL {url!r} must start with http:// or https://")
    return {**value, "webhook": list(webhooks)}


def validate(config: Config) -> list[str]:
    problems = []
    if config.shards is not None and config.shards > 256:
        problems.append(f"shards is {config.shards}; the limit is 256")
    if not 1 <= config.block_records <= 65535:
        problems.append(f"block_records is {config.block_records}; it must be 1..65535")
    for name in _ADDR_KEYS:
        addr = getattr(config, name)
        if addr is not None and not is_loopback(addr[0]) and not config.token:
            problems.append(f"{name} listens on {addr[0]}, which is not loopback, and no token is configured; "
                            "set token (SHARDLOG_TOKEN) or listen on 127.0.0.1")
    # imports the hook modules: a typo fails the start, not every ingest
    problems.extend(check_hooks(config.hooks))
    return problems
