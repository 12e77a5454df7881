"""The admission proxy's modes read back from its log: entries and the seconds spent in each mode per span."""

import pytest

from llmrec.loadtest import modes

ENTRY = (
    "llmrec admission: 24 or more calls waited at every arrival for 100 ms (the server answered 370 "
    "calls/s); overloaded: 1 at the server, 2 waiting, the rest refused (mode queueing -> overloaded at {} s)"
)
EXIT = (
    "llmrec admission: 40 of 140 calls in the last 251 ms found a server slot free (20 refused); after 1.5 s "
    "overloaded (the server answered 380 calls/s), queueing again (mode overloaded -> queueing at {} s)"
)
# HAProxy writes each warning twice to its output: its log line on stderr ("<4>...") and its own "[warning]"
LOG = "[NOTICE]   (1) : haproxy version is 2.6.12\n" + "".join(
    f"<4>{line}\n[warning] 336/174739 (5785) : {line}\n"
    for line in (
        ENTRY.format("1000.500"),
        EXIT.format("1002.000"),
        ENTRY.format("1003"),
        EXIT.format("1005.000"),
    )
)
SWITCHES = [
    (0.5, "queueing", "overloaded"),
    (2.0, "overloaded", "queueing"),
    (3.0, "queueing", "overloaded"),
    (5.0, "overloaded", "queueing"),
]


def test_switches_are_read_once_relative_to_the_run_start(tmp_path):
    log = tmp_path / "admission.log"
    log.write_text(LOG)
    assert modes.read(log, since=1000.0) == SWITCHES
    assert modes.read(tmp_path / "missing.log") == []


def test_entries_and_time_in_the_mode_per_span():
    assert modes.between(SWITCHES, 0.0, 10.0) == {"mode_entries": 2, "overloaded_s": 3.5}
    # a span that starts inside the mode counts it from the span's start; one that ends inside, up to its end
    assert modes.between(SWITCHES, 1.0, 4.0) == {"mode_entries": 1, "overloaded_s": 2.0}
    assert modes.between(SWITCHES, 6.0, 9.0) == {"mode_entries": 0, "overloaded_s": 0.0}
    assert modes.between([], 0.0, 9.0) == {"mode_entries": 0, "overloaded_s": 0.0}


@pytest.mark.parametrize("spans", [[(0.0, 2.0), (2.0, 10.0)], [(0.0, 0.5), (0.5, 4.0), (4.0, 10.0)]])
def test_spans_add_up_to_the_whole(spans):
    parts = [modes.between(SWITCHES, *span) for span in spans]
    whole = modes.between(SWITCHES, 0.0, 10.0)
    for key in whole:
        assert sum(p[key] for p in parts) == pytest.approx(whole[key])
