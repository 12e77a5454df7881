"""The admission proxy's modes over a load run, from its log (server/admission/overload.lua).

Every switch between its modes (queueing, overloaded) is a warning line that ends with "(mode FROM -> TO at
SECONDS s)", SECONDS the Unix time. A spike phase or a soak window then says how often the proxy left
queueing and how long it held fewer calls, next to what it refused.
"""

from __future__ import annotations

import re
from pathlib import Path

QUEUEING = "queueing"
# the modes that refuse early (QUEUEING is the normal one); each gets a <mode>_s figure
MODES = ("overloaded",)
_SWITCH = re.compile(r"\(mode (\w+) -> (\w+) at (\d+(?:\.\d+)?) s\)")


def read(log: Path, since: float = 0.0) -> list[tuple[float, str, str]]:
    """(seconds after `since`, from, to) of each switch in the proxy's log, in order; [] without a log.
    HAProxy writes each warning twice (its log line on stderr, and its own "[warning]" copy): read once."""
    if not log.is_file():
        return []
    found = dict.fromkeys(_SWITCH.findall(log.read_text(errors="replace")))  # in order, each once
    return [(float(at) - since, before, after) for before, after, at in found]


def spans(switches: list[tuple[float, str, str]], t0: float, t1: float) -> list[tuple[float, float, str]]:
    """(start, end, mode) covering [t0, t1): the mode at t0 is the one the first later switch leaves (or the
    last earlier one entered; queueing without any), so a list cut to a run's window needs nothing before it."""
    later = [s for s in switches if s[0] >= t0]
    earlier = [s for s in switches if s[0] < t0]
    mode = later[0][1] if later else earlier[-1][2] if earlier else QUEUEING
    found, since = [], t0
    for t, _, after in later:
        if t >= t1:
            break
        found.append((since, t, mode))
        mode, since = after, t
    return found + [(since, t1, mode)]


def between(switches: list[tuple[float, str, str]], t0: float, t1: float) -> dict:
    """Entries from queueing into another mode within [t0, t1), and the seconds spent in each of MODES over
    that span."""
    entries = sum(before == QUEUEING for t, before, _ in switches if t0 <= t < t1)
    spent = dict.fromkeys(MODES, 0.0)
    for start, end, mode in spans(switches, t0, t1):
        if mode in spent:
            spent[mode] += end - start
    return {"mode_entries": entries} | {f"{m}_s": round(s, 2) for m, s in spent.items()}
