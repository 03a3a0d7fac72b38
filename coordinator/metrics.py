"""Prometheus metrics of one daemon (prometheus-client, a private registry per daemon).

Counters and histograms are updated where things happen; the seed engine's figures (total logs and
counts by level, source and tag) and bytes on disk come from the shards' stats, refreshed just
before each exposition.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ingested = Counter("shardlog_logs_ingested", "Logs stored (acknowledged durable).", registry=r)
        self.rejected = Counter("shardlog_logs_rejected", "Logs rejected at ingest, by reason.", ["reason"], registry=r)
        # daemon-side pre-ingest hooks (coordinator.hooks): a failing hook keeps the record, so this is where it shows
        self.hook_errors = Counter("shardlog_hook_errors", "Pre-ingest hook calls that raised or returned an invalid "
                                   "record (the record was kept unchanged), by hook.", ["hook"], registry=r)
        self.hook_dropped = Counter("shardlog_hook_dropped", "Records a pre-ingest hook dropped (returned None), by "
                                    "hook.", ["hook"], registry=r)
        self.requests = Counter("shardlog_requests", "Requests by operation and outcome.", ["op", "outcome"],
                                registry=r)
        self.ingest_latency = Histogram("shardlog_ingest_latency_seconds", "Ingest request latency until durable ack.",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.query_latency = Histogram("shardlog_query_latency_seconds", "Query latency by operation.", ["op"],
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.shard_up = Gauge("shardlog_shard_up", "1 when the shard answered ping and is connected.", ["shard"],
                              registry=r)
        self.shard_restarts = Gauge("shardlog_shard_restarts", "Times the shard process was restarted.", ["shard"],
                                    registry=r)
        self.shard_queue = Gauge("shardlog_shard_queue_depth", "Requests in flight to the shard.", ["shard"],
                                 registry=r)
        self.inflight_records = Gauge("shardlog_inflight_records", "Records accepted but not yet acknowledged.",
                                      registry=r)
        self.bytes_on_disk = Gauge("shardlog_bytes_on_disk", "Allocated bytes of the shards' stores.", ["shard"],
                                   registry=r)
        self.alerts_fired = Counter("shardlog_alerts_fired", "Alerts fired, by rule and severity.",
                                    ["rule", "severity"], registry=r)
        self.rules_firing = Gauge("shardlog_alert_rules_firing", "Alert rules (groups) firing now.", registry=r)
        self.notification_failures = Counter("shardlog_notification_failures",
                                             "Alert notifications that failed, by channel.", ["channel"], registry=r)
        self.logs_total = Gauge("shardlog_logs_total", "Logs stored.", registry=r)
        self.logs_by_level = Gauge("shardlog_logs_by_level", "Logs stored by level.", ["level"], registry=r)
        self.logs_by_source = Gauge("shardlog_logs_by_source", "Logs stored by source.", ["source"], registry=r)
        self.logs_by_tag = Gauge("shardlog_logs_by_tag", "Logs stored by tag.", ["tag"], registry=r)
        # syslog has no acknowledgement on the wire: this counter is where a sender's lost frames show
        self.syslog_rejected = Counter("shardlog_syslog_frames_rejected", "Syslog frames or records not stored, by "
                                       "transport (tcp, udp) and reason (framing, truncated, record, overflow, "
                                       "unavailable).", ["transport", "reason"], registry=r)

    def reason_label(self, reason: str) -> str:
        """A bounded label from a rejection message (its leading words, not the values in it)."""
        head = reason.split(";")[0]
        for key in ("future", "message", "metadata", "tags", "tag", "depth", "timestamp", "JSON", "object", "field"):
            if key in head:
                return key.lower()
        return "invalid"

    def update_from_stats(self, stats: dict[str, Any]) -> None:
        self.logs_total.set(stats.get("total_logs", 0))
        for gauge, key in ((self.logs_by_level, "by_level"), (self.logs_by_source, "by_source"),
                           (self.logs_by_tag, "by_tag")):
            gauge.clear()
            for value, count in stats.get(key, {}).items():
                gauge.labels(value).set(count)
        for shard in stats.get("shards", []):
            if "bytes_on_disk" in shard:
                self.bytes_on_disk.labels(str(shard["shard_id"])).set(shard["bytes_on_disk"])

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
