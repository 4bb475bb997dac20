"""Durations and sizes as operators write them in `routing.yaml`.

Durations: `250ms`, `1.5s`, `2m`, `1h`, `7d`, or a plain number of seconds. Sizes: `512B`, `64KB`,
`1MB`, `2GB` (binary multiples: 1KB = 1024 bytes, `KiB`/`MiB`/`GiB` are accepted too), or a plain
number of bytes. Parsing is strict: anything else raises `ValueError` with a sentence that quotes
the value and shows the accepted forms.
"""

from __future__ import annotations

import math
import re

__all__ = ["format_duration", "format_size", "parse_duration", "parse_size"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1024, "kib": 1024, "mb": 1024**2, "mib": 1024**2, "gb": 1024**3, "gib": 1024**3}


def parse_duration(value: object) -> float:
    """Seconds from `250ms`, `1s`, `2m`, `1h`, `7d` or a non-negative number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; write e.g. 250ms, 1s, 2m or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (found := _DURATION.match(value)):
        seconds = float(found.group(1)) * _DURATION_UNITS[found.group(2)]
    elif isinstance(value, str) and _is_number(value):
        seconds = float(value)
    else:
        raise ValueError(f"{value!r} is not a duration; write e.g. 250ms, 1s, 2m or a number of seconds")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{value!r} is not a duration; durations are zero or positive, e.g. 250ms or 1s")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from `512B`, `64KB`, `1MB`, `2GB` or a non-negative whole number of bytes."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size; write e.g. 64KB, 1MB or a number of bytes")
    if isinstance(value, int):
        size = float(value)
    elif isinstance(value, float) and value.is_integer():
        size = value
    elif isinstance(value, str) and (found := _SIZE.match(value)):
        size = float(found.group(1)) * _SIZE_UNITS[found.group(2).lower()]
    elif isinstance(value, str) and value.strip().isdigit():
        size = float(value)
    else:
        raise ValueError(f"{value!r} is not a size; write e.g. 64KB, 1MB or a number of bytes")
    if size < 0 or not size.is_integer():
        raise ValueError(f"{value!r} is not a whole number of bytes; write e.g. 64KB, 1MB or 65536")
    return int(size)


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration: `250ms`, `10s`, `2m`, `7d`."""
    for unit in ("d", "h", "m", "s"):
        amount = seconds / _DURATION_UNITS[unit]
        if amount >= 1 and float(amount).is_integer():
            return f"{int(amount)}{unit}"
    milliseconds = seconds * 1000
    if float(milliseconds).is_integer():
        return f"{int(milliseconds)}ms"
    return f"{seconds:g}s"


def format_size(size: int) -> str:
    """The shortest exact spelling of a size: `64KB`, `1MB`, `1000B`."""
    for unit in ("GB", "MB", "KB"):
        factor = _SIZE_UNITS[unit.lower()]
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
