"""Alert notification channels (webhook, Alertmanager, exec).  Placeholder until the channels land:
``build_notifiers`` returns none, so alerts are recorded in history and visible to `alerts watch`."""

from __future__ import annotations

from typing import Any


def build_notifiers(config: dict[str, Any], metrics: Any) -> list[Any]:
    return []
