"""Log levels and severity scores (DESIGN §2).

Levels are normalized to TRACE, DEBUG, INFO, WARN, ERROR, FATAL.  Aliases and syslog severities
map onto them; an unknown level string is kept upper-cased with the INFO score (20), as the seed
engine did.
"""

from __future__ import annotations

from typing import Any

LEVELS: tuple[str, ...] = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")

SEVERITY: dict[str, int] = {"TRACE": 0, "DEBUG": 10, "INFO": 20, "WARN": 30, "ERROR": 40, "FATAL": 50}

#: Score of a level string that is not one of LEVELS.
UNKNOWN_SEVERITY = 20

_ALIASES: dict[str, str] = {
    "TRACE": "TRACE",
    "DEBUG": "DEBUG",
    "DBG": "DEBUG",
    "VERBOSE": "DEBUG",
    "INFO": "INFO",
    "INFORMATION": "INFO",
    "INFORMATIONAL": "INFO",
    "NOTICE": "INFO",
    "WARN": "WARN",
    "WARNING": "WARN",
    "ERROR": "ERROR",
    "ERR": "ERROR",
    "FATAL": "FATAL",
    "CRITICAL": "FATAL",
    "CRIT": "FATAL",
    "ALERT": "FATAL",
    "EMERG": "FATAL",
    "EMERGENCY": "FATAL",
    "PANIC": "FATAL",
    "SEVERE": "ERROR",
    # single letters as logcat / glog write them
    "V": "TRACE",
    "D": "DEBUG",
    "I": "INFO",
    "W": "WARN",
    "E": "ERROR",
    "F": "FATAL",
}

#: syslog severity number (RFC 5424 §6.2.1) -> level
SYSLOG_SEVERITY: tuple[str, ...] = ("FATAL", "FATAL", "FATAL", "ERROR", "WARN", "INFO", "INFO", "DEBUG")


def normalize_level(value: Any, default: str = "INFO") -> str:
    """Normalize a level given as a string, a syslog severity number, or None."""
    if value is None:
        return default
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        if 0 <= value < len(SYSLOG_SEVERITY):
            return SYSLOG_SEVERITY[value]
        return default
    text = str(value).strip().upper()
    if not text:
        return default
    if text.isascii() and text.isdigit():
        number = int(text)
        return SYSLOG_SEVERITY[number] if number < len(SYSLOG_SEVERITY) else default
    return _ALIASES.get(text, text)


def severity(level: str) -> int:
    """Severity score of a normalized level (unknown levels score 20)."""
    return SEVERITY.get(level, UNKNOWN_SEVERITY)


def parse_level_arg(value: str) -> str:
    """A level given by a user (``--level warn``, ``level:>=WARN``): normalized, and it must be
    one of LEVELS when used as a severity bound (checked by the caller)."""
    return normalize_level(value)
