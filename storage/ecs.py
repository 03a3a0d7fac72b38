"""Elastic Common Schema documents -> raw records for ``storage.record`` (what Filebeat, Vector and
Fluent Bit send to ``_bulk``).  Pure.  Here, not in ``coordinator.esbulk``, because the shards map the
documents they parse themselves (``storage.jsonlines``, DESIGN "Ingest").

- ``@timestamp`` is the timestamp (``timestamp``, if also present, wins, as in storage.record);
- ``message`` is the message; a string ``log`` field (Fluent Bit's Docker input) is the message when
  there is none;
- ``log.level`` (flat or nested) is the level, unless a ``level`` field is present;
- ``host.name`` (flat or nested) becomes ``host``, the host field of DESIGN §7; the other ``host.*``
  fields stay in metadata under their dotted names;
- the source is ``source`` or ``service`` when they are plain values, else ``service.name``, else the
  index the action names (or the ``/{index}/_bulk`` path's), so every record has one.

The rest of the mapping is storage.record's (nested objects flattened with dots, unknown keys ->
metadata).
"""

from __future__ import annotations

from typing import Any

_SCALARS = (str, int, float, bool)


def map_document(doc: dict[str, Any], index: str) -> dict[str, Any]:
    """An ECS-style source document -> a raw record for storage.record (edits ``doc`` in place)."""
    # @timestamp -> timestamp (the same precedence as storage.record, under the canonical name)
    if "@timestamp" in doc and "timestamp" not in doc:
        doc["timestamp"] = doc.pop("@timestamp")
    if "message" not in doc and "msg" not in doc and "_msg" not in doc and type(doc.get("log")) is str:
        doc["message"] = doc.pop("log")
    # log.level, nested or flat, unless a level field says otherwise
    if "level" not in doc and "severity" not in doc:
        log = doc.get("log")
        if type(log) is dict and "level" in log and isinstance(log["level"], _SCALARS):
            doc["level"] = log.pop("level")
            if not log:
                del doc["log"]
        elif "log.level" in doc and isinstance(doc["log.level"], _SCALARS):
            doc["level"] = doc.pop("log.level")
    # host.name -> host; the host object's other fields stay as host.<field>
    host = doc.get("host")
    if type(host) is dict:
        name = host.get("name")
        if name is not None and isinstance(name, _SCALARS):
            del doc["host"]
            for key, value in host.items():
                if key != "name":
                    doc[f"host.{key}"] = value
            doc["host"] = name
    elif host is None and "host.name" in doc:
        doc["host"] = doc.pop("host.name")
    # the source: a plain source/service, else service.name, else the index
    source, service = doc.get("source"), doc.get("service")
    if not isinstance(source, _SCALARS) and not isinstance(service, _SCALARS):
        if source is None:
            if type(service) is dict and isinstance(service.get("name"), _SCALARS):
                doc["source"] = service.pop("name")
                if not service:
                    del doc["service"]
            elif "service.name" in doc and isinstance(doc["service.name"], _SCALARS):
                doc["source"] = doc.pop("service.name")
            else:
                doc["source"] = index
    return doc
