"""shardlog's coordinator: the daemon, and the seed-compatible Python API users import.

``from coordinator import LogAnalyticsEngine, LogEntry, AlertRule, AlertSeverity`` loads only the
client side (coordinator.api); ``from coordinator import ShardlogHandler`` the logging handler
(coordinator.logging_handler); the daemon modules are imported when ``shardlog serve`` runs.
"""

from typing import Any

__all__ = ["LogAnalyticsEngine", "LogEntry", "AlertRule", "AlertSeverity", "ShardlogHandler"]


def __getattr__(name: str) -> Any:
    if name == "ShardlogHandler":
        from coordinator.logging_handler import ShardlogHandler

        return ShardlogHandler
    if name in __all__:
        from coordinator import api

        return getattr(api, name)
    raise AttributeError(f"module 'coordinator' has no attribute {name!r}")
