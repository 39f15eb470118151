"""Points as InfluxDB line protocol, the text every InfluxDB version (1, 2 and 3) takes for writes.

``measurement,tag=value,... field=value,... timestamp``: commas and spaces are escaped with a backslash in
the measurement; commas, equals signs and spaces in tag keys, tag values and field keys; double quotes and
backslashes in string fields. InfluxDB 1.x keeps every other backslash as it is, so a backslash in a name
is written unchanged, except at its end, where it would escape the separator that follows and cannot be
written: there it is dropped. A line break cannot be part of a name and is written as ``\\n`` (``\\r``);
in a string field it is kept.

Fields are typed as upstream Butler's clients type them: a number is written as a **float** (``5``, never
``5i``), an integer too, so that a database upstream Butler wrote to takes Butler's points (InfluxDB
refuses a point whose field has another type than the same field already has in the shard), and queries
and dashboards made for upstream's points work unchanged; strings are strings and booleans booleans. A
number that is not finite (NaN, infinity) has no form in line protocol: that field is left out. A tag
whose value is empty is left out (InfluxDB refuses ``tag=``, and a missing tag reads the same in a query).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

FieldValue = float | int | str | bool

_NAME = str.maketrans({",": "\\,", " ": "\\ ", "\n": "\\n", "\r": "\\r"})
_KEY = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ ", "\n": "\\n", "\r": "\\r"})
_STRING = str.maketrans({'"': '\\"', "\\": "\\\\"})


def measurement_name(name: str) -> str:
    return name.rstrip("\\").translate(_NAME)


def key(text: str) -> str:
    """A tag key, tag value or field key."""
    return text.rstrip("\\").translate(_KEY)


def field_value(value: FieldValue) -> str | None:
    """The value as line protocol writes it; None when it cannot be written."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)  # no "i": a float field, see the module's description
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    return f'"{value.translate(_STRING)}"'


def encode(
    measurement: str, tags: Mapping[str, str], fields: Mapping[str, FieldValue], timestamp_ns: int
) -> str | None:
    """One point as a line (without its line break); None when no field of it can be written."""
    encoded_fields = []
    for field_name, value in fields.items():
        text, field_key = field_value(value), key(field_name)
        if text is not None and field_key:
            encoded_fields.append(f"{field_key}={text}")
    name = measurement_name(measurement)
    if not encoded_fields or not name:
        return None
    encoded_tags = "".join(
        f",{tag_key}={tag_value}"
        for tag_key, tag_value in sorted((key(k), key(v)) for k, v in tags.items())
        if tag_key and tag_value
    )
    return f"{name}{encoded_tags} {','.join(encoded_fields)} {timestamp_ns}"


__all__ = ["FieldValue", "encode", "field_value", "key", "measurement_name"]
