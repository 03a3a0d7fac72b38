"""coordinator.alerts.AlertEngine with a fake clock and a real StateStore (LMDB) in a tmp dir.

Counts are fed as the shards send them on ingest acks (``{rule: {"counts": [[second, group, n]],
"samples": [...]}}``); the clock is a plain integer the test moves, so window sliding and cooldown
expiry are exact and instant.  Restart safety is checked the way the daemon restarts: the store is
closed, reopened, and a new engine loads rules, state and history from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.alerts import AlertEngine, Rule, Severity
from storage.errors import BadQuery, NotFound
from storage.state import StateStore
from tests.helpers import S_NS, T0_NS, make_record


class Clock:
    def __init__(self, now_ns: int = T0_NS) -> None:
        self.now_ns = now_ns

    def __call__(self) -> int:
        return self.now_ns

    @property
    def second(self) -> int:
        return self.now_ns // S_NS

    def advance(self, seconds: float) -> None:
        self.now_ns += int(seconds * S_NS)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    state = StateStore(tmp_path / "state")
    yield state
    state.close()


def rule(name: str = "errors", **fields: Any) -> Rule:
    data: dict[str, Any] = {"name": name, "query": "level:ERROR", "threshold": 3, "window": "60s", "cooldown": "10m"}
    data.update(fields)
    return Rule.from_dict(data)


def counts(rule_name: str, *entries: tuple[int, str, int], samples: list[dict[str, Any]] | None = None
           ) -> dict[str, Any]:
    return {rule_name: {"counts": [list(entry) for entry in entries], "samples": samples or []}}


def fired_rules(alerts: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(alert["rule"], alert["group"]) for alert in alerts]


# --- rules -----------------------------------------------------------------------------------------


def test_rule_from_dict_accepts_durations_and_the_seeds_conditions() -> None:
    parsed = Rule.from_dict({"name": " r ", "conditions": {"level": "ERROR", "keyword": "timeout"}, "threshold": 2,
                             "time_window": 90, "cooldown": "0", "severity": "HIGH", "group_by": "source"})
    assert (parsed.name, parsed.threshold, parsed.window_s, parsed.cooldown_s) == ("r", 2, 90, 0)
    assert parsed.severity is Severity.HIGH and parsed.group_by == "source"
    assert "timeout" in parsed.query and "ERROR" in parsed.query.upper()
    assert Rule.from_dict(parsed.to_dict()) == parsed


@pytest.mark.parametrize("bad, message", [
    ({"name": ""}, "name"),
    ({"name": "r", "threshold": 0}, "threshold"),
    ({"name": "r", "threshold": True}, "threshold"),
    ({"name": "r", "window": "0s"}, "'0s' must be greater than zero"),
    ({"name": "r", "window": "8d"}, "7 days"),
    ({"name": "r", "severity": "urgent"}, "severity"),
    ({"name": "r", "query": "level:ERROR | stats count()"}, "pipes"),
    ({"name": "r", "query": "_time:5m"}, "time window"),
    ({"name": "r", "query": "(unclosed"}, "expected '\\)'"),
    ({"name": "r", "group_by": "timestamp"}, "group"),
    ({"name": "r", "colour": "red"}, "unknown"),
])
def test_rule_from_dict_rejects_bad_rules(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(BadQuery, match=message):
        Rule.from_dict(bad)


# --- threshold, window, cooldown, resolve -----------------------------------------------------------


def test_fires_at_the_threshold_with_its_evidence(store: StateStore, clock: Clock) -> None:
    engine = AlertEngine(store, clock=clock)
    engine.add_rule(rule(severity="high", description="db errors"))
    # "boom 0" is the newest; each batch's samples come newest first, as the shards send them
    samples = [make_record(i, clock.now_ns - i * S_NS, f"boom {i}", level="ERROR") for i in range(5)]
    assert engine.observe(counts("errors", (clock.second - 4, "", 2), samples=samples[3:])) == []
    fired = engine.observe(counts("errors", (clock.second, "", 1), samples=samples[:3]))
    assert fired_rules(fired) == [("errors", None)]
    alert = fired[0]
    assert alert["count"] == 3 and alert["threshold"] == 3 and alert["window_s"] == 60
    assert alert["severity"] == "high" and alert["description"] == "db errors" and alert["query"] == "level:ERROR"
    assert alert["status"] == "firing" and "3 matching logs" in alert["message"]
    # the five newest samples, newest first
    assert [s["message"] for s in alert["samples"]] == [f"boom {i}" for i in range(5)]
    assert engine.history() == fired  # persisted before it was returned


def test_counts_outside_the_window_do_not_count(store: StateStore, clock: Clock) -> None:
    engine = AlertEngine(store, clock=clock)
    engine.add_rule(rule())
    # 60 s window = (now - 60, now]: a second exactly 60 s old is outside
    assert engine.observe(counts("errors", (clock.second - 60, "", 5), (clock.second - 30, "", 2))) == []
    clock.advance(29)  # the 2 at now-30 are now 59 s old: still inside
    assert fired_rules(engine.observe(counts("errors", (clock.second, "", 1)))) == [("errors", None)]


def test_window_slides_and_the_alert_resolves(store: StateStore, clock: Clock) -> None:
    engine = AlertEngine(store, clock=clock)
    engine.add_rule(rule(cooldown="1s"))
    engine.observe(counts("errors", (clock.second - 10, "", 1), (clock.second, "", 2)))
    assert engine.list_rules()[0]["firing"] == [""]
    clock.advance(50)  # the oldest count is 60 s old now: 2 left, under the threshold
    fired, resolved = engine.tick()
    assert fired == []
    assert [(r["rule"], r["status"], r["count"]) for r in resolved] == [("errors", "resolved", 2)]
    assert engine.list_rules()[0]["firing"] == []
    assert engine.tick() == ([], [])  # resolved once


def test_cooldown_then_fires_again_while_the_condition_holds(store: StateStore, clock: Clock) -> None:
    engine = AlertEngine(store, clock=clock)
    engine.add_rule(rule(window="10m", cooldown="60s"))
    assert len(engine.observe(counts("errors", (clock.second, "", 3)))) == 1
    clock.advance(59)
    assert engine.observe(counts("errors", (clock.second, "", 10))) == []  # inside the cooldown
    assert engine.tick() == ([], [])
    clock.advance(1)
    fired, _ = engine.tick()  # the tick fires without waiting for the next log
    assert [(a["rule"], a["count"]) for a in fired] == [("errors", 13)]
    assert len(engine.history()) == 2


def test_cooldown_is_per_group(store: StateStore, clock: Clock) -> None:
    engine = AlertEngine(store, clock=clock)
    engine.add_rule(rule(group_by="source", threshold=2))
    fired = engine.observe(counts("errors", (clock.second, "db", 2), (clock.second, "api", 1)))
    assert fired_rules(fired) == [("errors", "db")]
    assert "source=db" in fired[0]["message"]
    clock.advance(5)
    fired = engine.observe(counts("errors", (clock.second, "db", 5), (clock.second, "api", 1)))
    assert fired_rules(fired) == [("errors", "api")]  # db is cooling down; api reached 2
    assert engine.list_rules()[0]["firing"] == ["api", "db"]
    assert engine.list_rules()[0]["window_count"] == {"api": 2, "db": 7}


def test_grouped_samples_go_to_their_group(store: StateStore, clock: Clock) -> None:
    engine = AlertEngine(store, clock=clock)
    engine.add_rule(rule(group_by="source", threshold=1))
    samples = [make_record(1, clock.now_ns, "from db", source="db"), make_record(2, clock.now_ns, "from api",
                                                                                   source="api")]
    fired = engine.observe(counts("errors", (clock.second, "db", 1), (clock.second, "api", 1), samples=samples))
    by_group = {alert["group"]: [s["message"] for s in alert["samples"]] for alert in fired}
    assert by_group == {"db": ["from db"], "api": ["from api"]}


def test_disabled_and_unknown_rules_ignore_counts(store: StateStore, clock: Clock) -> None:
    engine = AlertEngine(store, clock=clock)
    engine.add_rule(rule(threshold=1))
    engine.set_enabled("errors", False)
    assert engine.specs() == []
    assert engine.observe(counts("errors", (clock.second, "", 5))) == []
    assert engine.observe(counts("other", (clock.second, "", 5))) == []
    engine.set_enabled("errors", True)
    assert [spec.rule_id for spec in engine.specs()] == ["errors"]
    assert len(engine.observe(counts("errors", (clock.second, "", 1)))) == 1


def test_add_replace_and_remove(store: StateStore, clock: Clock) -> None:
    engine = AlertEngine(store, clock=clock)
    engine.add_rule(rule())
    with pytest.raises(BadQuery, match="exists"):
        engine.add_rule(rule(threshold=5), replace=False)
    engine.add_rule(rule(threshold=5))
    assert engine.rules["errors"].threshold == 5
    engine.remove_rule("errors")
    assert engine.list_rules() == [] and store.items("rules") == []
    with pytest.raises(NotFound, match="no alert rule named 'errors'"):
        engine.remove_rule("errors")
    with pytest.raises(NotFound):
        engine.set_enabled("errors", True)


# --- restart ---------------------------------------------------------------------------------------


def test_a_new_engine_on_the_same_store_keeps_history_and_cooldown(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "state"
    first_store = StateStore(path)
    first = AlertEngine(first_store, clock=clock)
    first.add_rule(rule("fired", threshold=1, window="1h", cooldown="10m"))
    first.add_rule(rule("pending", threshold=3, window="5m"))
    fired = first.observe({**counts("fired", (clock.second, "", 1)), **counts("pending", (clock.second, "", 2))})
    assert fired_rules(fired) == [("fired", None)]
    first_store.close()  # the daemon stops (or dies: every write was already a durable commit)

    clock.advance(30)
    second_store = StateStore(path)
    try:
        second = AlertEngine(second_store, clock=clock)
        assert sorted(second.rules) == ["fired", "pending"]
        assert second.history() == fired
        # the daemon rebuilds windows from the shards' stored logs: the same counts come back
        second.rebuild("fired", [[clock.second - 30, "", 1]], [])
        second.rebuild("pending", [[clock.second - 30, "", 2]], [])
        assert second.tick()[0] == []  # "fired" is inside its cooldown, "pending" has 2 of 3
        assert second.observe(counts("fired", (clock.second, "", 4))) == []
        # two matching logs before the restart and one after reach the threshold of 3
        fired_after = second.observe(counts("pending", (clock.second, "", 1)))
        assert [(a["rule"], a["count"]) for a in fired_after] == [("pending", 3)]
        clock.advance(600)  # "fired"'s cooldown ends 10 min after it fired; its window still holds 5
        assert fired_rules(second.tick()[0]) == [("fired", None)]
        assert len(second.history()) == 3
    finally:
        second_store.close()


def test_firing_state_survives_a_restart_and_resolves_after(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "state"
    first_store = StateStore(path)
    AlertEngine(first_store, clock=clock).add_rule(rule(threshold=1))
    AlertEngine(first_store, clock=clock).observe(counts("errors", (clock.second, "", 1)))
    first_store.close()
    second_store = StateStore(path)
    try:
        second = AlertEngine(second_store, clock=clock)
        assert second.list_rules()[0]["firing"] == [""]
        clock.advance(61)  # no counts rebuilt (the window has passed): the alert ends
        _, resolved = second.tick()
        assert [(r["rule"], r["status"]) for r in resolved] == [("errors", "resolved")]
    finally:
        second_store.close()


# --- history ---------------------------------------------------------------------------------------


def test_history_since_and_limit(store: StateStore, clock: Clock) -> None:
    engine = AlertEngine(store, clock=clock)
    engine.add_rule(rule(threshold=1, cooldown="1s"))
    times = []
    for _ in range(4):
        times.append(clock.now_ns)
        assert len(engine.observe(counts("errors", (clock.second, "", 1)))) == 1
        clock.advance(2)
    assert len(engine.history()) == 4
    assert [a["triggered_at"] for a in engine.history(limit=2)] == [a["triggered_at"] for a in engine.history()[-2:]]
    assert len(engine.history(since_ns=times[2])) == 2
    assert engine.history(since_ns=clock.now_ns) == []


def test_import_history_is_idempotent_by_key(store: StateStore, clock: Clock) -> None:
    engine = AlertEngine(store, clock=clock)
    engine.add_rule(rule(threshold=1))
    exported = engine.observe(counts("errors", (clock.second, "", 1)))
    assert engine.import_history(exported) == 1
    assert engine.history() == exported
    assert engine.import_history([{"rule": "old", "message": "from a file"}]) == 1
    assert [a["rule"] for a in engine.history()] == ["errors", "old"]
    with pytest.raises(BadQuery, match="rule name"):
        engine.import_history([{"message": "no rule"}])


def test_evidence_keeps_the_newest_samples_across_batches(store: StateStore, clock: Clock) -> None:
    engine = AlertEngine(store, clock=clock)
    engine.add_rule(rule(threshold=7))
    older = [make_record(10 + i, clock.now_ns - (10 + i) * S_NS, f"old {i}") for i in range(5)]  # newest first
    newer = [make_record(i, clock.now_ns - i * S_NS, f"new {i}") for i in range(2)]
    engine.observe(counts("errors", (clock.second - 10, "", 5), samples=older))
    fired = engine.observe(counts("errors", (clock.second, "", 2), samples=newer))
    assert [s["message"] for s in fired[0]["samples"]] == ["new 0", "new 1", "old 0", "old 1", "old 2"]


def test_history_since_survives_an_imported_alert_with_a_foreign_key(store: StateStore, clock: Clock) -> None:
    engine = AlertEngine(store, clock=clock)
    engine.import_history([{"rule": "seed", "key": "alert-1", "triggered_at": "2024-01-01T00:00:00Z"}])
    assert [a["rule"] for a in engine.history(since_ns=T0_NS - S_NS)] == ["seed"]


# --- the service: state written off the event loop, events announced after ------------------------


def test_service_writes_alert_state_off_the_loop_and_announces_only_after(tmp_path: Path, clock: Clock) -> None:
    """A firing alert's state write (an fsync) must not stall the event loop, and nobody may hear of
    the alert before that write is done: with the write held, the loop keeps running and no
    notifier has the event; once it completes, the notifier has it and so does the history."""
    import asyncio
    import threading
    import types

    from coordinator.alert_service import AlertService
    from coordinator.metrics import Metrics

    gate = threading.Event()
    state = StateStore(tmp_path / "state")
    real_write = state.write

    def held_write(changes: Any) -> None:
        assert gate.wait(10), "the test never released the write"
        real_write(changes)

    class Recorder:
        def __init__(self) -> None:
            self.events: list[dict[str, Any]] = []

        def send(self, event: dict[str, Any]) -> None:
            self.events.append(event)

        async def close(self) -> None:
            pass

    async def scenario() -> None:
        engine = AlertEngine(state, clock=clock)
        engine.add_rule(rule(threshold=3))
        state.write = held_write  # type: ignore[method-assign]
        recorder = Recorder()
        service = AlertService(engine, types.SimpleNamespace(slots=[], prepare=None), Metrics(), [recorder])
        service.observe([{"alerts": counts("errors", (clock.second, "", 5))}])
        ticks = 0
        for _ in range(10):  # the loop is free while the write is held
            await asyncio.sleep(0.005)
            ticks += 1
        assert ticks == 10 and recorder.events == [], "announced before the state was durable"
        gate.set()
        await service._written()
        await asyncio.sleep(0)  # the announcement is a callback on the loop
        assert [event["rule"] for event in recorder.events] == ["errors"]
        history = (await service.rpc_history({}))["alerts"]
        assert [alert["rule"] for alert in history] == ["errors"]
        await service.stop()

    try:
        asyncio.run(scenario())
    finally:
        gate.set()
        state.close()
