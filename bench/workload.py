"""Realistic generated logs for the benchmarks, deterministic by seed.

This module owns the synthetic workload that every benchmark (``bench_storage``, later
``bench_e2e``) feeds to shardlog and to its SQLite baseline, and the query parameters those
benchmarks ask about.  It guarantees:

- ``generate(n, seed=s, start_ns=t)`` returns the same records for the same arguments on any
  machine and Python 3.11+ (it draws only from one ``random.Random(seed)``, whose sequence is
  stable across versions for the methods used here).
- Records are in the engine's normalized shape (DESIGN §2): ``id`` (unique int, increasing in
  generation order), ``ts_ns``, ``level`` (a normalized level), ``message``, ``source``, ``tags``
  (sorted, distinct), ``metadata`` (flat: ``host``, and ``status`` / ``duration_ms`` where the
  template has them), ``thread_id``, ``request_id``, ``user_id`` (``None`` when a line has none).
- Realism: ~40 message templates (HTTP access lines, DB timeouts, auth failures, GC pauses,
  stack-trace first lines, ...) filled with varying ids, numbers, IPs and paths; 50 sources with
  Zipf-like popularity; levels INFO 70 %, DEBUG 12 %, WARN 10 %, ERROR 7 %, FATAL 1 %; 0–3 tags
  of 30; ~1,000 logs per second of event time, stamped out of order by up to ±30 s.
- ``query_params(records)`` picks the benchmark's query arguments from the data itself, so a
  rare token really is rare (≤ 5 records) and a common token really is common.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import random
import string
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import orjson

from storage.tokens import token_set

Record = dict[str, Any]

#: 2024-01-01T00:00:00Z; a fixed default so runs are comparable.  Pass a recent ``start_ns``
#: when the target applies retention or rejects old stamps (the daemon benchmark).
DEFAULT_START_NS = 1_704_067_200 * 10**9

#: Event-time spacing: 1 ms per record = ~1,000 logs per second of event time.
STEP_NS = 1_000_000
#: Stamps are shuffled by a uniform jitter of up to this much either way (out-of-order arrival).
JITTER_NS = 30 * 10**9
#: Stamps carry microsecond precision, as most shippers write them; fewer exact ties than ms.
_TS_QUANTUM_NS = 1_000

LEVEL_WEIGHTS: dict[str, float] = {"INFO": 70.0, "DEBUG": 12.0, "WARN": 10.0, "ERROR": 7.0, "FATAL": 1.0}

# ---------------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------------

SOURCES: tuple[str, ...] = (
    "api-gateway", "auth-service", "checkout", "billing", "inventory", "search", "catalog",
    "cart", "payments", "notifications", "user-profile", "recommendations", "shipping", "orders",
    "frontend", "admin-portal", "reporting", "scheduler", "etl-worker", "kafka-consumer",
    "redis-cache", "postgres-primary", "postgres-replica", "nginx-edge", "cdn-origin",
    "image-resizer", "email-sender", "sms-gateway", "fraud-detector", "pricing", "tax-service",
    "geo-service", "session-store", "feature-flags", "audit-log", "metrics-agent", "log-shipper",
    "k8s-controller", "ingress", "dns-resolver", "vault", "ldap-sync", "backup-agent",
    "ml-inference", "webhook-relay", "graphql", "mobile-bff", "partner-api", "ledger", "cron",
)

TAGS: tuple[str, ...] = (
    "prod", "web", "api", "db", "cache", "auth", "payment", "k8s", "eu-west-1", "us-east-1",
    "canary", "batch", "queue", "security", "billing", "frontend", "backend", "mobile", "internal",
    "external", "slow", "retry", "timeout", "gc", "tls", "dns", "storage", "network", "cron",
    "experiment",
)

_METHODS = ("GET", "GET", "GET", "GET", "POST", "POST", "PUT", "DELETE", "PATCH")
_ROUTES = (
    "/api/v1/users/{i}", "/api/v1/orders/{i}", "/api/v1/orders/{i}/items", "/api/v2/products/{i}",
    "/api/v1/carts/{i}/checkout", "/api/v1/search", "/health", "/login", "/logout",
    "/static/js/app.{h}.js", "/static/css/main.{h}.css", "/api/v1/payments/{i}/capture",
    "/graphql", "/api/v1/sessions", "/metrics", "/api/v1/invoices/{i}.pdf", "/api/v1/reports/{i}",
)
_TABLES = ("users", "orders", "order_items", "payments", "sessions", "products", "inventory",
           "invoices", "audit_events", "carts")
_UPSTREAMS = ("postgres-primary:5432", "redis-cache:6379", "payments.internal:443",
              "search.internal:9200", "kafka-1:9092", "ldap.corp:636", "s3.amazonaws.com:443")
_DBS = ("orders_db", "users_db", "billing_db", "analytics_db")
_JOBS = ("nightly-report", "invoice-run", "cache-warmup", "index-rebuild", "data-export",
         "session-gc", "email-digest")
_QUEUES = ("orders.created", "payments.captured", "emails.outbox", "audit.events", "webhooks.out")
_REASONS = ("deserialization error", "schema mismatch", "handler timeout", "poison message",
            "downstream unavailable")
_DECLINES = ("insufficient funds", "card expired", "do not honor", "suspected fraud")
_CLASSES = ("OrderService", "PaymentClient", "UserRepository", "CartMapper", "TokenValidator")
_METHOD_NAMES = ("getId", "toString", "getAmount", "validate", "close")
_VARS = ("order", "user", "response", "session", "config")
_PYFILES = ("/app/handlers/orders.py", "/app/services/billing.py", "/app/workers/etl.py",
            "/app/api/views.py")
_FUNCS = ("handle", "process_batch", "charge", "render", "load_user")
_MOUNTS = ("/", "/var/lib/data", "/var/log", "/tmp")
_FLAGS = ("new-checkout", "dark-mode", "fast-search", "beta-pricing", "one-click-buy")
_CHANNELS = ("prices", "orders", "chat", "presence")
_BUCKETS = ("user-uploads", "invoices-archive", "thumbnails", "backups")
_TEMPLATES_MAIL = ("welcome", "password_reset", "order_shipped", "weekly_digest")
_PROCS = ("java", "python3", "node", "postgres")
_CURRENCIES = ("EUR", "USD", "GBP")

_HEX = "0123456789abcdef"

_STATUS_BY_LEVEL: dict[str, tuple[int, ...]] = {
    "DEBUG": (200, 200, 204, 304),
    "INFO": (200, 200, 200, 200, 201, 204, 301, 302, 304),
    "WARN": (400, 401, 403, 404, 404, 409, 429),
    "ERROR": (500, 500, 502, 503, 504),
    "FATAL": (500, 503),
}


@dataclass(frozen=True)
class _Template:
    text: str
    levels: tuple[str, ...]
    weight: float
    #: The template writes an HTTP status / a duration into metadata as well.
    has_status: bool = False
    has_duration: bool = False


# Message templates.  ``{rid}`` is the record's request id, so a request id is a message token
# as well as a field, as in real access and error logs.
_TEMPLATES: tuple[_Template, ...] = (
    # HTTP / request lines: all levels, status chosen to fit the level
    _Template('{ip} - - "{method} {path} HTTP/1.1" {status} {size} {ms}ms request_id={rid}',
              ("INFO", "WARN", "ERROR"), 14, has_status=True, has_duration=True),
    _Template("Request completed method={method} path={path} status={status} duration_ms={ms} "
              "request_id={rid}", ("INFO", "WARN", "ERROR", "DEBUG"), 10, has_status=True,
              has_duration=True),
    _Template("User {user} logged in from {ip}", ("INFO",), 4),
    _Template("Session {sid} created for user {user}", ("INFO", "DEBUG"), 3),
    _Template("Cache hit for key {ckey}", ("DEBUG", "INFO"), 4),
    _Template("Cache miss for key {ckey}, loading from database", ("DEBUG", "INFO"), 3),
    _Template("Processed batch {n} of {m} records in {ms}ms", ("INFO",), 3, has_duration=True),
    _Template("Job {job} finished successfully in {secs}s", ("INFO",), 2),
    _Template("Scheduled job {job} started run {n}", ("INFO", "DEBUG"), 2),
    _Template("Connection pool stats: active={n} idle={m} waiting={k}", ("DEBUG", "INFO"), 2),
    _Template("Order {order} placed by user {user} total={amount} {currency} request_id={rid}",
              ("INFO",), 4),
    _Template("Payment {payment} authorized for order {order} amount={amount}", ("INFO",), 3),
    _Template("Sent email notification to user {user} template={mailtpl}", ("INFO",), 2),
    _Template("Health check passed for upstream {upstream} in {ms}ms", ("DEBUG", "INFO"), 3,
              has_duration=True),
    _Template("Kafka consumer group {group} committed offset {offset} on partition {k}",
              ("DEBUG", "INFO"), 2),
    _Template("GC pause young generation {ms}ms heap {heap}MB -> {heap2}MB",
              ("INFO", "DEBUG", "WARN"), 3, has_duration=True),
    _Template("Feature flag {flag} evaluated to {bool} for user {user}", ("DEBUG",), 2),
    _Template("SQL query executed in {ms}ms rows={n} table={table}", ("DEBUG",), 3,
              has_duration=True),
    _Template("Uploaded object {obj} to bucket {bucket} size={size}", ("INFO",), 1),
    _Template("Config reloaded from /etc/app/{job}.yaml version {n}", ("INFO",), 1),
    _Template("Websocket client {ip} connected channel={channel}", ("INFO", "DEBUG"), 1),
    # warnings
    _Template("Slow query on table {table} took {ms}ms request_id={rid}", ("WARN",), 4,
              has_duration=True),
    _Template("Retrying request to {upstream} attempt {k} of 5 after {ms}ms request_id={rid}",
              ("WARN",), 3, has_duration=True),
    _Template("Rate limit exceeded for client {ip} on {path}", ("WARN",), 3),
    _Template("Authentication failed for user {user} from {ip}: invalid password",
              ("WARN", "ERROR"), 3),
    _Template("Disk usage on {mount} at {pct}% on host {host}", ("WARN", "ERROR"), 1),
    _Template("Deprecated API {path} called by client {client}", ("WARN",), 1),
    _Template("Circuit breaker for {upstream} is half-open", ("WARN",), 1),
    _Template("Memory usage high: {heap}MB of 4096MB", ("WARN",), 1),
    _Template("GC pause full collection took {ms}ms", ("WARN", "ERROR"), 1, has_duration=True),
    # errors
    _Template("Database timeout after {ms}ms on {db} query request_id={rid}", ("ERROR", "WARN"), 4,
              has_duration=True),
    _Template("Connection refused to {upstream} ({ip}) request_id={rid}", ("ERROR",), 3),
    _Template('java.lang.NullPointerException: Cannot invoke "{cls}.{meth}()" because "{var}" '
              "is null", ("ERROR",), 2),
    _Template('Traceback (most recent call last): File "{pyfile}", line {n}, in {func}',
              ("ERROR",), 2),
    _Template("Failed to process message {msgid} from queue {queue}: {reason}", ("ERROR",), 2),
    _Template("Payment {payment} declined for order {order}: {decline} request_id={rid}",
              ("ERROR", "WARN"), 2),
    _Template("Unhandled exception in request handler {path} request_id={rid}", ("ERROR",), 2),
    _Template("TLS handshake failed with {ip}: certificate expired", ("ERROR",), 1),
    _Template("Deadlock detected on table {table}, transaction {txid} rolled back", ("ERROR",), 1),
    # fatal
    _Template("Out of memory: killed process {pid} ({proc}) total-vm {kb}kB", ("FATAL",), 2),
    _Template("panic: runtime error: index out of range [{n}] with length {m} goroutine {k}",
              ("FATAL",), 2),
    _Template("Shutting down: cannot connect to database {db} after {k} attempts", ("FATAL",), 2),
    _Template("Segmentation fault in worker {pid} at address 0x{addr}", ("FATAL",), 1),
)


def _zipf_cum_weights(count: int, exponent: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (rank**exponent) for rank in range(1, count + 1)))


_SOURCE_CUM = _zipf_cum_weights(len(SOURCES), 1.1)
_TAG_CUM = _zipf_cum_weights(len(TAGS), 1.0)
_LEVEL_NAMES = tuple(LEVEL_WEIGHTS)
_LEVEL_CUM = list(itertools.accumulate(LEVEL_WEIGHTS.values()))
# Number of tags per record: 0, 1, 2, 3.
_TAG_COUNT_CUM = list(itertools.accumulate((30.0, 35.0, 25.0, 10.0)))

_FORMATTER = string.Formatter()


def _fields_of(text: str) -> tuple[str, ...]:
    return tuple(name for _, name, _, _ in _FORMATTER.parse(text) if name)


# For each level: the templates allowed at it, their cumulative weights and their field names.
_BY_LEVEL: dict[str, tuple[list[_Template], list[float], list[tuple[str, ...]]]] = {}
for _level in _LEVEL_NAMES:
    _allowed = [t for t in _TEMPLATES if _level in t.levels]
    _BY_LEVEL[_level] = (
        _allowed,
        list(itertools.accumulate(t.weight for t in _allowed)),
        [_fields_of(t.text) for t in _allowed],
    )


def _pick(rng: random.Random, items: Sequence[Any], cum: list[float]) -> Any:
    # Same as rng.choices(items, cum_weights=cum)[0] without building a list per call.
    return items[bisect.bisect(cum, rng.random() * cum[-1], 0, len(cum) - 1)]


def _hex(rng: random.Random, digits: int) -> str:
    return f"{rng.getrandbits(4 * digits):0{digits}x}"


def _ip(rng: random.Random) -> str:
    if rng.random() < 0.6:
        return f"10.{rng.randrange(4)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    return f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def _path(rng: random.Random) -> str:
    route = rng.choice(_ROUTES)
    if "{i}" in route:
        route = route.replace("{i}", str(rng.randrange(1, 100_000)))
    if "{h}" in route:
        route = route.replace("{h}", _hex(rng, 8))
    return route


def _duration_ms(rng: random.Random) -> int:
    # Log-normal-ish: mostly tens of ms, a long tail into seconds.
    return min(int(rng.lognormvariate(3.0, 1.2)) + 1, 120_000)


# Field generators, keyed by placeholder name.  ``{rid}``, ``{user}``, ``{status}``, ``{ms}`` and
# ``{host}`` are filled from the record so message and fields agree.
_FIELD_GEN: dict[str, Callable[[random.Random], Any]] = {
    "ip": _ip,
    "method": lambda r: r.choice(_METHODS),
    "path": _path,
    "size": lambda r: r.randrange(0, 250_000),
    "sid": lambda r: _hex(r, 12),
    "ckey": lambda r: f"{r.choice(_TABLES)}:{r.randrange(1, 50_000)}",
    "n": lambda r: r.randrange(1, 5_000),
    "m": lambda r: r.randrange(1, 5_000),
    "k": lambda r: r.randrange(0, 64),
    "secs": lambda r: f"{r.uniform(0.1, 900):.1f}",
    "job": lambda r: r.choice(_JOBS),
    "order": lambda r: f"ORD-{r.randrange(10**7):07d}",
    "payment": lambda r: f"pay_{_hex(r, 14)}",
    "amount": lambda r: f"{r.uniform(1, 900):.2f}",
    "currency": lambda r: r.choice(_CURRENCIES),
    "mailtpl": lambda r: r.choice(_TEMPLATES_MAIL),
    "upstream": lambda r: r.choice(_UPSTREAMS),
    "group": lambda r: f"cg-{r.choice(_QUEUES)}",
    "offset": lambda r: r.randrange(10**9),
    "heap": lambda r: r.randrange(256, 4096),
    "heap2": lambda r: r.randrange(128, 2048),
    "flag": lambda r: r.choice(_FLAGS),
    "bool": lambda r: "true" if r.random() < 0.5 else "false",
    "table": lambda r: r.choice(_TABLES),
    "obj": lambda r: f"{_hex(r, 10)}.jpg",
    "bucket": lambda r: r.choice(_BUCKETS),
    "channel": lambda r: r.choice(_CHANNELS),
    "client": lambda r: f"client-{r.randrange(1, 400)}",
    "mount": lambda r: r.choice(_MOUNTS),
    "pct": lambda r: r.randrange(85, 100),
    "db": lambda r: r.choice(_DBS),
    "cls": lambda r: r.choice(_CLASSES),
    "meth": lambda r: r.choice(_METHOD_NAMES),
    "var": lambda r: r.choice(_VARS),
    "pyfile": lambda r: r.choice(_PYFILES),
    "func": lambda r: r.choice(_FUNCS),
    "msgid": lambda r: f"msg-{_hex(r, 12)}",
    "queue": lambda r: r.choice(_QUEUES),
    "reason": lambda r: r.choice(_REASONS),
    "decline": lambda r: r.choice(_DECLINES),
    "txid": lambda r: r.randrange(10**6, 10**8),
    "pid": lambda r: r.randrange(100, 65_000),
    "proc": lambda r: r.choice(_PROCS),
    "kb": lambda r: r.randrange(10**6, 10**7),
    "addr": lambda r: _hex(r, 12),
}

#: Concurrent requests whose lines interleave; a request logs 1-4 lines, so a request id is a
#: token of at most a handful of messages.
_OPEN_REQUESTS = 16
_USERS = 20_000


def iter_records(n: int, *, seed: int = 1, start_ns: int = DEFAULT_START_NS) -> Iterator[Record]:
    """Yield ``n`` records (see the module docstring), ids ``0 .. n-1`` in generation order."""
    if n < 0:
        raise ValueError(f"n is {n}; it must be >= 0")
    rng = random.Random(seed)
    user_cum = _zipf_cum_weights(_USERS, 0.9)
    users = [f"u{i:05d}" for i in range(_USERS)]
    hosts = {s: [f"{s}-{k}" for k in range(1 + (i % 4))] for i, s in enumerate(SOURCES)}
    threads = ["main"] + [f"worker-{k}" for k in range(32)]
    # Open requests: [request_id, user_id, lines_left]
    open_requests: list[list[Any]] = []
    base_ns = start_ns + JITTER_NS
    for record_id in range(n):
        level = _pick(rng, _LEVEL_NAMES, _LEVEL_CUM)
        templates, cum, field_lists = _BY_LEVEL[level]
        index = bisect.bisect(cum, rng.random() * cum[-1], 0, len(cum) - 1)
        template = templates[index]

        # Request and user: continue an open request or start a new one.
        if open_requests and rng.random() < 0.5:
            slot = rng.randrange(len(open_requests))
            request = open_requests[slot]
            request[2] -= 1
            if request[2] <= 0:
                open_requests[slot] = open_requests[-1]
                open_requests.pop()
        else:
            user = _pick(rng, users, user_cum) if rng.random() < 0.7 else None
            request = [_hex(rng, 16), user, rng.randrange(0, 4)]
            if request[2] > 0 and len(open_requests) < _OPEN_REQUESTS:
                open_requests.append(request)
        request_id: str = request[0]
        user_id: str | None = request[1]

        source = _pick(rng, SOURCES, _SOURCE_CUM)
        host = rng.choice(hosts[source])
        values: dict[str, Any] = {}
        metadata: dict[str, Any] = {"host": host}
        for name in field_lists[index]:
            if name in values:
                continue
            if name == "rid":
                values[name] = request_id
            elif name == "user":
                if user_id is None:
                    # The template names a user; the line belongs to one.
                    user_id = _pick(rng, users, user_cum)
                values[name] = user_id
            elif name == "status":
                status = rng.choice(_STATUS_BY_LEVEL[level])
                values[name] = status
                metadata["status"] = status
            elif name == "ms":
                duration = _duration_ms(rng)
                values[name] = duration
                metadata["duration_ms"] = duration
            elif name == "host":
                values[name] = host
            else:
                values[name] = _FIELD_GEN[name](rng)
        message = template.text.format_map(values)

        tag_count = _pick(rng, (0, 1, 2, 3), _TAG_COUNT_CUM)
        tags: set[str] = set()
        while len(tags) < tag_count:
            tags.add(_pick(rng, TAGS, _TAG_CUM))

        jitter_ns = rng.randrange(-JITTER_NS, JITTER_NS + 1)
        ts_ns = (base_ns + record_id * STEP_NS + jitter_ns) // _TS_QUANTUM_NS * _TS_QUANTUM_NS
        yield {
            "id": record_id,
            "ts_ns": ts_ns,
            "level": level,
            "message": message,
            "source": source,
            "tags": sorted(tags),
            "metadata": metadata,
            "thread_id": rng.choice(threads),
            "request_id": request_id,
            "user_id": user_id,
        }


def generate(n: int, *, seed: int = 1, start_ns: int = DEFAULT_START_NS) -> list[Record]:
    """``n`` records as a list; the same arguments give the same records."""
    return list(iter_records(n, seed=seed, start_ns=start_ns))


def rfc3339_ns(ts_ns: int) -> str:
    """``ts_ns`` as RFC 3339 UTC with microseconds (the workload's precision), e.g.
    ``2024-01-01T00:00:30.123456Z``."""
    seconds, rest_ns = divmod(ts_ns, 10**9)
    stamp = dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{rest_ns // 1000:06d}Z"


def to_jsonl(records: Iterable[Record]) -> list[bytes]:
    """Raw NDJSON lines (no trailing newline) as a shipper would send them: ``timestamp`` in
    RFC 3339 instead of ``ts_ns``, no ``id`` (the engine assigns ids), absent fields omitted.
    Join with ``b"\\n"`` for a request body."""
    lines = []
    for record in records:
        raw: dict[str, Any] = {"timestamp": rfc3339_ns(record["ts_ns"])}
        for key in ("level", "message", "source", "tags", "metadata", "thread_id", "request_id",
                    "user_id"):
            value = record.get(key)
            if value is not None and value != [] and value != {}:
                raw[key] = value
        lines.append(orjson.dumps(raw))
    return lines


# ---------------------------------------------------------------------------------------------
# Query parameters
# ---------------------------------------------------------------------------------------------

HOUR_NS = 3600 * 10**9
MINUTE_NS = 60 * 10**9
#: Records sampled (evenly strided) to rank tokens by frequency for the common token.
_TOKEN_SAMPLE = 20_000


@dataclass(frozen=True)
class QueryParams:
    """The arguments of the benchmark queries, chosen from the data.  Windows are
    ``[from_ns, to_ns)``: from inclusive, to exclusive, as in the CLI."""

    rare_token: str
    rare_token_records: int  # how many records hold it (a substring count, so an upper bound)
    common_token: str
    common_token_fraction: float  # share of the sampled records holding it
    hour_from_ns: int  # the WARN count and the per-minute ERROR histogram
    hour_to_ns: int
    six_hours_from_ns: int  # the source page
    six_hours_to_ns: int
    page_source: str  # a mid-popularity source
    page_offset: int = 50  # page 2 of 50 rows
    page_limit: int = 50
    histogram_interval_ns: int = MINUTE_NS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QueryParams":
        return cls(**data)


def window(min_ts_ns: int, max_ts_ns: int, width_ns: int) -> tuple[int, int]:
    """A ``[from, to)`` window of ``width_ns`` in the middle of the data, starting on a minute;
    the whole span ``[min, max + 1)`` when the data spans less than the window."""
    if max_ts_ns - min_ts_ns < width_ns:
        return min_ts_ns, max_ts_ns + 1
    middle_ns = min_ts_ns + (max_ts_ns - min_ts_ns) // 2
    from_ns = (middle_ns - width_ns // 2) // MINUTE_NS * MINUTE_NS
    return from_ns, from_ns + width_ns


def _rare_token(records: Sequence[Record]) -> tuple[str, int]:
    # A request id that is a token of at most 5 messages: request ids are random 64-bit hex and
    # a request logs a few lines, so the first candidate from the middle almost always qualifies.
    # The check is a substring count (>= the token count), so "<= 5" is a true upper bound.
    n = len(records)
    for start in range(n // 2, n):
        record = records[start]
        candidate = record["request_id"]
        if not candidate or candidate not in record["message"]:
            continue
        holders = sum(1 for r in records if candidate in r["message"])
        if 1 <= holders <= 5:
            return candidate, holders
    raise ValueError(f"no request id is a token of 1..5 messages among {n} records; "
                     "generate more records (n >= 100)")


def _common_token(records: Sequence[Record]) -> tuple[str, float]:
    # The most frequent word (letters only, >= 4 chars) that is in at most 60 % of messages and
    # in at least 10 % of ERROR messages, so "token AND level:ERROR" has work on both sides.
    stride = max(1, len(records) // _TOKEN_SAMPLE)
    sample = records[::stride]
    all_df: dict[str, int] = {}
    error_df: dict[str, int] = {}
    errors = 0
    for record in sample:
        is_error = record["level"] == "ERROR"
        errors += is_error
        for token in token_set(record["message"]):
            if len(token) < 4 or not token.isalpha():
                continue
            all_df[token] = all_df.get(token, 0) + 1
            if is_error:
                error_df[token] = error_df.get(token, 0) + 1
    candidates = [
        (count, token) for token, count in all_df.items()
        if count <= 0.6 * len(sample) and error_df.get(token, 0) >= 0.1 * max(errors, 1)
    ]
    if not candidates:
        raise ValueError(f"no common token among {len(sample)} sampled records; "
                         "generate more records (n >= 1000)")
    count, token = max(candidates, key=lambda c: (c[0], c[1]))
    return token, count / len(sample)


def query_params(records: Sequence[Record]) -> QueryParams:
    """Pick every benchmark query argument from ``records`` deterministically (a pure function
    of the records)."""
    if not records:
        raise ValueError("query_params needs at least one record")
    min_ts_ns = min(r["ts_ns"] for r in records)
    max_ts_ns = max(r["ts_ns"] for r in records)
    rare, rare_holders = _rare_token(records)
    common, common_fraction = _common_token(records)
    by_source: dict[str, int] = {}
    for record in records:
        by_source[record["source"]] = by_source.get(record["source"], 0) + 1
    # Median popularity rank, ties broken by name so the choice is stable.
    ranked = sorted(by_source, key=lambda s: (-by_source[s], s))
    hour = window(min_ts_ns, max_ts_ns, HOUR_NS)
    six_hours = window(min_ts_ns, max_ts_ns, 6 * HOUR_NS)
    return QueryParams(
        rare_token=rare,
        rare_token_records=rare_holders,
        common_token=common,
        common_token_fraction=round(common_fraction, 4),
        hour_from_ns=hour[0],
        hour_to_ns=hour[1],
        six_hours_from_ns=six_hours[0],
        six_hours_to_ns=six_hours[1],
        page_source=ranked[len(ranked) // 2],
    )


# ---------------------------------------------------------------------------------------------
# The benchmark queries and their answers by a plain scan (the oracle both engines must match)
# ---------------------------------------------------------------------------------------------

#: Query name -> what it asks.  Row queries return full records newest first; answers are
#: compared as row ids, counts, ``{value: count}`` maps or ``[value, count]`` lists.
QUERIES: dict[str, str] = {
    "rare_token": "a rare token (a request id), newest 100 rows",
    "common_error": "a common token AND level=ERROR, newest 100 rows",
    "warn_count_1h": "count of level=WARN in a 1 h window",
    "source_page2_6h": "one source's page 2 (rows 50-99) in a 6 h window, newest first",
    "count_by_source": "count by source, all records",
    "count_by_level": "count by level, all records",
    "top5_tags": "top 5 tags, all records",
    "error_per_minute_1h": "per-minute ERROR counts in a 1 h window",
}


def _newest(records: Iterable[Record]) -> list[Record]:
    return sorted(records, key=lambda r: (r["ts_ns"], r["id"]), reverse=True)


def _has_token(record: Record, token: str) -> bool:
    # Substring first: cheap, and a token is always a substring of the lower-cased message.
    message = record["message"].lower()
    return token in message and token in token_set(message)


def expected_answers(records: Sequence[Record], params: QueryParams) -> dict[str, Any]:
    """The answer to every query in ``QUERIES`` by a straightforward scan of ``records``, in
    the compared shape (row ids, counts, maps, ``[value, count]`` lists)."""
    hour = (params.hour_from_ns, params.hour_to_ns)
    six = (params.six_hours_from_ns, params.six_hours_to_ns)
    rare = _newest(r for r in records if _has_token(r, params.rare_token))[:100]
    common = _newest(
        r for r in records if r["level"] == "ERROR" and _has_token(r, params.common_token)
    )[:100]
    page = _newest(
        r for r in records if r["source"] == params.page_source and six[0] <= r["ts_ns"] < six[1]
    )[params.page_offset:params.page_offset + params.page_limit]
    by_source: dict[str, int] = {}
    by_level: dict[str, int] = {}
    by_tag: dict[str, int] = {}
    by_minute: dict[int, int] = {}
    warn = 0
    interval = params.histogram_interval_ns
    for r in records:
        by_source[r["source"]] = by_source.get(r["source"], 0) + 1
        by_level[r["level"]] = by_level.get(r["level"], 0) + 1
        for tag in r["tags"]:
            by_tag[tag] = by_tag.get(tag, 0) + 1
        in_hour = hour[0] <= r["ts_ns"] < hour[1]
        if in_hour and r["level"] == "WARN":
            warn += 1
        if in_hour and r["level"] == "ERROR":
            bucket = r["ts_ns"] // interval * interval
            by_minute[bucket] = by_minute.get(bucket, 0) + 1
    top = sorted(by_tag.items(), key=lambda item: (-item[1], item[0]))[:5]
    return {
        "rare_token": [r["id"] for r in rare],
        "common_error": [r["id"] for r in common],
        "warn_count_1h": warn,
        "source_page2_6h": [r["id"] for r in page],
        "count_by_source": dict(sorted(by_source.items())),
        "count_by_level": dict(sorted(by_level.items())),
        "top5_tags": [[tag, count] for tag, count in top],
        "error_per_minute_1h": [[bucket, count] for bucket, count in sorted(by_minute.items())],
    }
