"""Alert rules and their evaluation from window counts merged centrally (DESIGN §5).

Shards count each rule's matches per second of event time while committing a batch
(``storage.rule_match``); the counts ride back on the ingest acknowledgement and ``observe`` adds
them to one ``WindowCounts`` per rule and group.  A rule fires when the sum over
``(now - window, now]`` reaches its threshold and the rule (group) is out of cooldown; a 1 s
``tick`` also evaluates, so resolution and cooldown expiry do not wait for the next log.

Restart safety: rules, per-rule/group state (last fired, cooldown until, firing) and the alert
history live in the coordinator's state store (``storage.state``).  An alert and the state change
that produced it are committed in one durable transaction *before* anyone is notified.  After a
restart the open windows are rebuilt from the shards' per-second counts (``rebuild``), so two
matching logs before a restart and one after still reach a threshold of 3.

The engine is synchronous and transport-free: the service feeds it and sends what it returns.
"""

from __future__ import annotations

import itertools
import json
import re
import zlib
import logging
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from storage import query as q
from storage import querytext
from storage.aggregate import resolve_field
from storage.alert_window import WindowCounts
from storage.errors import BadQuery, NotFound
from storage.filters import filters_to_node
from storage.record import to_public
from storage.rule_match import RuleSpec
from storage.timefmt import format_timestamp, parse_duration, parse_timestamp

if TYPE_CHECKING:  # the state store opens LMDB; this module stays importable without it
    from storage.state import StateStore

log = logging.getLogger("shardlog.alerts")

NS_PER_S = 1_000_000_000
MAX_RULES = 1_000
#: alert history entries kept in the state store
HISTORY_KEEP = 100_000
SAMPLES = 5


class Severity(str, Enum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


def _seconds(value: Any, name: str) -> int:
    """A duration given as seconds (number) or text ('2m')."""
    if isinstance(value, bool):
        raise BadQuery(f"{name} {value!r} is not a duration; e.g. 2m, 90s, 1h")
    if isinstance(value, (int, float)):
        seconds = int(value)
    else:
        seconds = parse_duration(str(value)) // NS_PER_S
    if seconds < 1:
        raise BadQuery(f"{name} is {value!r}; it must be at least 1 s")
    return seconds


@dataclass(frozen=True)
class Rule:
    name: str
    query: str
    threshold: int = 1
    window_s: int = 300
    cooldown_s: int = 600
    severity: Severity = Severity.MEDIUM
    description: str = ""
    group_by: str | None = None
    enabled: bool = True
    node: q.Node = field(default=q.MatchAll(), compare=False, repr=False)

    @staticmethod
    def from_dict(data: Mapping[str, Any], *, now_ns: int | None = None) -> "Rule":
        """Build and validate a rule from user input (CLI, HTTP, config file, Python API).
        ``conditions`` (the seed's filter dict or a query string) is accepted for ``query``."""
        if not isinstance(data, Mapping):
            raise BadQuery(f"an alert rule must be an object, got {type(data).__name__}")
        known = {"name", "query", "conditions", "threshold", "window", "window_s", "time_window", "cooldown",
                 "cooldown_s", "severity", "description", "group_by", "enabled"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadQuery(f"unknown alert rule keys {unknown}; known: {sorted(known)}")
        name = data.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 200 or "\n" in name:
            raise BadQuery(f"alert rule name {name!r} must be a non-empty single-line string of at most 200 chars")
        now_ns = time.time_ns() if now_ns is None else now_ns
        query = data.get("query")
        conditions = data.get("conditions")
        if query is None and isinstance(conditions, str):
            query = conditions
        if query is None and isinstance(conditions, Mapping):
            query = querytext.format_query(filters_to_node(conditions, now_ns=now_ns))
        if query is None:
            query = ""
        if not isinstance(query, str):
            raise BadQuery(f"rule {name!r}: query must be a query string, got {type(query).__name__}")
        parsed = querytext.parse_query(query, now_ns=now_ns)
        if parsed.pipes:
            raise BadQuery(f"rule {name!r}: a rule's query cannot have pipes ('|'); use group_by instead")
        if q.time_bounds(parsed.filter) != (None, None):
            raise BadQuery(f"rule {name!r}: a rule's query cannot have a time window (_time:...); use window")
        threshold = data.get("threshold", 1)
        if not isinstance(threshold, int) or isinstance(threshold, bool) or not 1 <= threshold <= 10**9:
            raise BadQuery(f"rule {name!r}: threshold {threshold!r} must be an integer from 1 to 1000000000")
        window = data.get("window", data.get("window_s", data.get("time_window", 300)))
        cooldown = data.get("cooldown", data.get("cooldown_s", 600))
        window_s = _seconds(window, "window")
        if window_s > 7 * 86_400:
            raise BadQuery(f"rule {name!r}: window is {window_s} s; the limit is 7 days")
        cooldown_s = _seconds(cooldown, "cooldown") if cooldown not in (0, "0", "0s") else 0
        severity_text = str(data.get("severity", "medium")).lower()
        try:
            severity = Severity(severity_text)
        except ValueError:
            raise BadQuery(f"rule {name!r}: severity {severity_text!r} must be low, medium, high or critical") from None
        group_by = data.get("group_by") or None
        if group_by is not None:
            resolve_field(str(group_by))
        enabled = data.get("enabled", True)
        if not isinstance(enabled, bool):
            raise BadQuery(f"rule {name!r}: enabled must be true or false")
        description = data.get("description") or ""
        return Rule(name=name.strip(), query=query, threshold=threshold, window_s=window_s, cooldown_s=cooldown_s,
                    severity=severity, description=str(description), group_by=group_by, enabled=enabled,
                    node=parsed.filter)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "query": self.query, "threshold": self.threshold, "window_s": self.window_s,
                "cooldown_s": self.cooldown_s, "severity": self.severity.value, "description": self.description,
                "group_by": self.group_by, "enabled": self.enabled}

    def spec(self) -> RuleSpec:
        return RuleSpec(self.name, self.node, self.group_by)


@dataclass
class GroupState:
    """Persisted per rule and group value."""

    last_fired_ns: int | None = None
    cooldown_until_ns: int = 0
    firing: bool = False
    last_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"last_fired_ns": self.last_fired_ns, "cooldown_until_ns": self.cooldown_until_ns,
                "firing": self.firing, "last_count": self.last_count}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> "GroupState":
        return GroupState(data.get("last_fired_ns"), int(data.get("cooldown_until_ns") or 0),
                          bool(data.get("firing")), int(data.get("last_count") or 0))


_HISTORY_KEY = re.compile(r"\d{20}-\d{6}")


def _sample_key(record: Mapping[str, Any]) -> tuple[int, int]:
    return record["ts_ns"], record.get("id") or 0


def _state_key(rule: str, group: str) -> str:
    return f"{rule}\x00{group}"


class AlertEngine:
    def __init__(self, state: "StateStore", *, clock: Callable[[], int] = time.time_ns) -> None:
        self.state = state
        self.clock = clock
        self.rules: dict[str, Rule] = {}
        self.windows: dict[tuple[str, str], WindowCounts] = {}
        self.groups: dict[tuple[str, str], GroupState] = {}
        self.samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._fired_since_trim = 0
        self._seq = itertools.count()
        #: None: state writes happen at once; a list: they are queued here (see ``_commit``)
        self.deferred: list[Callable[[], None]] | None = None
        self._load()

    # --- rules ---------------------------------------------------------------------------------

    def _load(self) -> None:
        for _, data in self.state.items("rules"):
            try:
                rule = Rule.from_dict(data)
            except BadQuery as exc:  # a rule that no longer parses must not stop the daemon
                log.error("alert rule %r from the state store is invalid and is skipped: %s", data.get("name"),
                          exc.message)
                continue
            self.rules[rule.name] = rule
        for key, data in self.state.items("rule_state"):
            rule, _, group = key.partition("\x00")
            if rule in self.rules:
                self.groups[rule, group] = GroupState.from_dict(data)

    def add_rule(self, rule: Rule, *, replace: bool = True) -> None:
        if rule.name not in self.rules and len(self.rules) >= MAX_RULES:
            raise BadQuery(f"there are {len(self.rules)} alert rules; the limit is {MAX_RULES}; remove some first")
        if not replace and rule.name in self.rules:
            raise BadQuery(f"alert rule {rule.name!r} exists; remove it first or use a new name")
        old = self.rules.get(rule.name)
        self.state.put("rules", rule.name, rule.to_dict())
        self.rules[rule.name] = rule
        if old is not None and (old.query, old.group_by, old.window_s) != (rule.query, rule.group_by, rule.window_s):
            self._forget_windows(rule.name)

    def remove_rule(self, name: str) -> None:
        if name not in self.rules:
            raise NotFound(f"no alert rule named {name!r}; `shardlog alerts list` shows the rules")
        keys = [_state_key(r, g) for (r, g) in self.groups if r == name]
        self.state.write([("rules", name, None)] + [("rule_state", k, None) for k in keys])
        del self.rules[name]
        self._forget_windows(name)
        for key in [k for k in self.groups if k[0] == name]:
            del self.groups[key]

    def set_enabled(self, name: str, enabled: bool) -> Rule:
        rule = self.rules.get(name)
        if rule is None:
            raise NotFound(f"no alert rule named {name!r}; `shardlog alerts list` shows the rules")
        updated = Rule(**{**rule.__dict__, "enabled": enabled})
        self.add_rule(updated)
        if not enabled:
            self._forget_windows(name)
        return updated

    def _forget_windows(self, name: str) -> None:
        for key in [k for k in self.windows if k[0] == name]:
            del self.windows[key]
        for key in [k for k in self.samples if k[0] == name]:
            del self.samples[key]

    def specs(self) -> list[RuleSpec]:
        """What the shards must count: every enabled rule."""
        return [rule.spec() for rule in self.rules.values() if rule.enabled]

    def list_rules(self) -> list[dict[str, Any]]:
        now_ns = self.clock()
        out = []
        for rule in sorted(self.rules.values(), key=lambda r: r.name):
            groups = {g: s for (r, g), s in self.groups.items() if r == rule.name}
            info = rule.to_dict()
            info["firing"] = sorted(g for g, s in groups.items() if s.firing)
            info["window_count"] = {g: w.total(now_ns // NS_PER_S) for (r, g), w in self.windows.items()
                                    if r == rule.name}
            last = [s.last_fired_ns for s in groups.values() if s.last_fired_ns]
            info["last_fired"] = format_timestamp(max(last)) if last else None
            out.append(info)
        return out

    # --- evaluation ----------------------------------------------------------------------------

    def observe(self, counts: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Add a shard's per-rule counts (from an ingest ack) and evaluate the rules they touch.
        Returns the alerts that fired (already persisted)."""
        now_ns = self.clock()
        now_s = now_ns // NS_PER_S
        touched: set[tuple[str, str]] = set()
        for rule_id, part in counts.items():
            rule = self.rules.get(rule_id)
            if rule is None or not rule.enabled or not isinstance(part, Mapping):
                continue
            # one ack brings an entry per second of its batch and rule: grouped per window first,
            # then added in one call per window
            by_group: dict[str, list[tuple[int, int]]] = {}
            for entry in part.get("counts") or ():
                if type(entry) is list and len(entry) == 3 and type(entry[0]) is int and type(entry[2]) is int \
                        and type(entry[1]) is str:
                    second, group, n = entry
                else:  # not what shards send: take what converts, skip the rest
                    try:
                        second, group, n = int(entry[0]), str(entry[1]), int(entry[2])
                    except (TypeError, ValueError, IndexError, KeyError):
                        continue
                pairs = by_group.get(group)
                if pairs is None:
                    by_group[group] = [(second, n)]
                else:
                    pairs.append((second, n))
            for group, pairs in by_group.items():
                window = self.windows.get((rule_id, group))
                if window is None:
                    window = self.windows[rule_id, group] = WindowCounts(rule.window_s)
                if window.add_many(pairs, now_s):
                    touched.add((rule_id, group))
            # keep the newest SAMPLES by (timestamp, id) per group, whatever order batches arrive in
            # (samples arrive freshly decoded from the ack: kept without copying)
            arrived: dict[str, list[dict[str, Any]]] = {}
            for sample in part.get("samples") or ():
                if not isinstance(sample, dict) or not isinstance(sample.get("ts_ns"), int):
                    continue
                for group in (self._sample_groups(rule, sample) if rule.group_by else ("",)):
                    arrived.setdefault(group, []).append(sample)
            for group, new in arrived.items():
                kept = self.samples.get((rule_id, group))
                merged = new if kept is None else kept + new
                if len(merged) > SAMPLES:
                    merged.sort(key=_sample_key, reverse=True)
                    del merged[SAMPLES:]
                self.samples[rule_id, group] = merged
        return self._evaluate(touched, now_ns)

    @staticmethod
    def _sample_groups(rule: Rule, sample: Mapping[str, Any]) -> list[str]:
        if rule.group_by is None:
            return [""]
        from storage.aggregate import record_values

        try:
            return [str(v) for v in record_values(sample, *resolve_field(rule.group_by))]
        except (KeyError, TypeError):
            return []

    def tick(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The 1 s timer: evaluate every open window.  Returns (fired, resolved) events."""
        now_ns = self.clock()
        keys = set(self.windows) | {k for k, s in self.groups.items() if s.firing}
        fired = self._evaluate(keys, now_ns)
        resolved = self._resolve(now_ns)
        return fired, resolved

    def _evaluate(self, keys: Iterable[tuple[str, str]], now_ns: int) -> list[dict[str, Any]]:
        now_s = now_ns // NS_PER_S
        fired: list[dict[str, Any]] = []
        changes: list[tuple[str, str, Any]] = []
        for rule_id, group in sorted(keys):
            rule = self.rules.get(rule_id)
            window = self.windows.get((rule_id, group))
            if rule is None or not rule.enabled or window is None:
                continue
            total = window.total(now_s)
            state = self.groups.setdefault((rule_id, group), GroupState())
            state.last_count = total
            if total < rule.threshold or now_ns < state.cooldown_until_ns:
                continue
            state.firing = True
            state.last_fired_ns = now_ns
            state.cooldown_until_ns = now_ns + rule.cooldown_s * NS_PER_S
            alert = self._alert(rule, group, total, now_ns)
            fired.append(alert)
            changes.append(("history", alert["key"], alert))
            changes.append(("rule_state", _state_key(rule_id, group), state.to_dict()))
        if changes:
            # durable before anyone hears of it: a crash after this line re-notifies nothing twice
            # inside the cooldown, and a crash before it loses no acknowledged state
            self._commit(lambda: self.state.write(changes))
            self._fired_since_trim += len(fired)
            if self._fired_since_trim >= 1_000:
                self._commit(lambda: self.state.trim("history", HISTORY_KEEP))
                self._fired_since_trim = 0
        return fired

    def _commit(self, write: Callable[[], None]) -> None:
        """Run a state write now, or — when ``deferred`` is a list — queue it there for the caller,
        which must run the queued writes in order and announce the events this call returned only
        after they are done (AlertService does, off its event loop: an fsync per firing batch
        would stall every request)."""
        if self.deferred is None:
            write()
        else:
            self.deferred.append(write)

    def _resolve(self, now_ns: int) -> list[dict[str, Any]]:
        now_s = now_ns // NS_PER_S
        resolved = []
        changes = []
        for (rule_id, group), state in self.groups.items():
            if not state.firing:
                continue
            rule = self.rules.get(rule_id)
            window = self.windows.get((rule_id, group))
            total = window.total(now_s) if window is not None else 0
            if rule is not None and rule.enabled and total >= rule.threshold:
                continue
            state.firing = False
            state.last_count = total
            changes.append(("rule_state", _state_key(rule_id, group), state.to_dict()))
            resolved.append({"rule": rule_id, "group": group or None, "status": "resolved",
                             "resolved_at": format_timestamp(now_ns), "count": total,
                             "severity": rule.severity.value if rule else None,
                             "query": rule.query if rule else None,
                             "started_at": format_timestamp(state.last_fired_ns) if state.last_fired_ns else None})
        if changes:
            self._commit(lambda: self.state.write(changes))
        return resolved

    def _alert(self, rule: Rule, group: str, total: int, now_ns: int) -> dict[str, Any]:
        # evidence from this window only, newest first
        oldest_ns = now_ns - rule.window_s * NS_PER_S
        samples = sorted((r for r in self.samples.get((rule.name, group), ()) if r["ts_ns"] > oldest_ns),
                         key=_sample_key, reverse=True)[:SAMPLES]
        where = f" for {rule.group_by}={group}" if rule.group_by else ""
        return {
            "key": f"{now_ns:020d}-{next(self._seq):06d}",
            "rule": rule.name,
            "status": "firing",
            "severity": rule.severity.value,
            "message": f"{rule.name}{where}: {total} matching logs in the last {rule.window_s} s "
                       f"(threshold {rule.threshold})",
            "description": rule.description,
            "triggered_at": format_timestamp(now_ns),
            "count": total,
            "threshold": rule.threshold,
            "window_s": rule.window_s,
            "group_by": rule.group_by,
            "group": group if rule.group_by else None,
            "query": rule.query,
            "samples": [to_public(s) for s in samples],
        }

    # --- restart ---------------------------------------------------------------------------------

    def rebuild(self, rule_id: str, counts: Iterable[Iterable[Any]], samples: Iterable[Mapping[str, Any]]) -> None:
        """Seed a rule's windows from the shards' per-second counts of its last window (at start)."""
        self.observe({rule_id: {"counts": list(counts), "samples": list(samples)}})

    # --- history ---------------------------------------------------------------------------------

    def history(self, since_ns: int | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        entries = [alert for key, alert in self.state.items("history")
                   if since_ns is None or int(key.split("-")[0]) >= since_ns]
        return entries[-limit:]

    def import_history(self, alerts: Iterable[Mapping[str, Any]]) -> int:
        changes = []
        for alert in alerts:
            if not isinstance(alert, Mapping) or not isinstance(alert.get("rule"), str):
                raise BadQuery(f"an imported alert must be an object with a rule name, got {alert!r:.100}")
            # history keys sort by time: keep a key this daemon made (re-importing an export is then
            # idempotent); derive any other from triggered_at and the alert's content
            key = alert.get("key")
            if not isinstance(key, str) or not _HISTORY_KEY.fullmatch(key):
                when = alert.get("triggered_at") or alert.get("resolved_at")
                ts_ns = parse_timestamp(when) if when is not None else None
                if ts_ns is None or ts_ns < 0:
                    ts_ns = self.clock()
                digest = zlib.crc32(json.dumps(alert, sort_keys=True, default=str).encode()) % 1_000_000
                key = f"{ts_ns:020d}-{digest:06d}"
            changes.append(("history", key, dict(alert, key=key)))
        self.state.write(changes)
        self.state.trim("history", HISTORY_KEEP)
        return len(changes)
