"""Command-line values to typed values, or one line ``error: --flag: ...`` (ConfigError).

Shared by the subcommands, so every flag is refused the same way: integers in a range
('1e3' is 1000; '1.5', 'nan', '1e309' are not), one of a fixed set, comma lists without empty
entries, budgets in [0, 1] image units (fractions such as 8/255).
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError
from ..registry import to_int

BUDGET_EXAMPLE = "8/255 or 0.03"


def integer(value: Any, flag: str, lo: int, hi: int) -> int:
    """An integer flag in [lo, hi]; '1e3' is 1000, '1.5', 'nan' and '1e309' are refused."""
    v = value if isinstance(value, int) and not isinstance(value, bool) else to_int(value, flag)
    if v < lo:
        raise ConfigError(flag, f"must be >= {lo}, got {value!r}")
    if v > hi:
        raise ConfigError(flag, f"must be <= {hi}, got {value!r}")
    return v

def choice(value: Any, flag: str, allowed: tuple[str, ...]) -> str:
    """One of ``allowed`` exactly (checked here rather than by argparse, whose refusal is a
    usage block and a SystemExit instead of one line)."""
    if value not in allowed:
        raise ConfigError(flag, f"{value!r} is not allowed; allowed: {', '.join(allowed)}")
    return str(value)

def items(text: str, flag: str, example: str) -> list[str]:
    """A comma list without empty entries ('a,,b' may hide a lost value); blank text is []."""
    if not str(text).strip():
        return []
    parts = [p.strip() for p in str(text).split(",")]
    if not all(parts):
        raise ConfigError(flag, f"empty entry in {text!r}; write e.g. {example}")
    return parts

def budget(text: Any, flag: str, norm: str | None) -> float:
    """A budget in image units: finite, >= 0 and, for linf, at most 1 (the whole [0, 1] box)."""
    from ..evaluate.specs import parse_real

    v = float(text) if isinstance(text, (int, float)) else parse_real(text, flag, BUDGET_EXAMPLE)
    if not math.isfinite(v):
        raise ConfigError(flag, f"must be finite, got {text!r}")
    if v < 0:
        raise ConfigError(flag, f"budgets must be >= 0, got {text!r}")
    if norm == "linf" and v > 1:
        raise ConfigError(flag, f"must be <= 1 for linf: budgets are in [0, 1] image units (write "
                          f"8/255, not 8), got {text!r}")
    return v
