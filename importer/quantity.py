"""Kubernetes resource quantities ("10Gi", "500M", "1e9", "1073741824") as byte counts."""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

_SUFFIX = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}
_FORM = re.compile(r"^([+]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


def parse_quantity(text: str) -> int:
    """Bytes in a quantity, rounded up to a whole byte; ValueError for nonsense."""
    match = _FORM.match(text.strip())
    if not match or match.group(2) not in _SUFFIX:
        raise ValueError(f"invalid quantity {text!r}")
    try:
        value = Decimal(match.group(1)) * _SUFFIX[match.group(2)]
    except InvalidOperation as error:
        raise ValueError(f"invalid quantity {text!r}") from error
    return int(math.ceil(value))
