"""``tools.bench.serverprof`` names addresses in the real, stripped ``temporal`` binary from
its Go function table, and turns ``perf script`` lines into a profile (``perf`` itself is not
needed here: the lines are built from the table)."""

from pathlib import Path

import pytest

from tests.conftest import temporal_binary
from tools.bench.serverprof import GoSymbols, Profile, SymbolError, samples

START = "go.temporal.io/server/service/history.(*Handler).StartWorkflowExecution"
SIGNAL = "go.temporal.io/server/service/history.(*Handler).SignalWorkflowExecution"


@pytest.fixture(scope="module")
def symbols() -> GoSymbols:
    return GoSymbols.load(Path(temporal_binary("temporal")))


def file_offset(symbols: GoSymbols, address: int) -> int:
    """Where ``address`` lies in the file, as perf prints it for an unnamed binary."""
    for start, size, virtual in symbols.segments:
        if virtual <= address < virtual + size:
            return address - virtual + start
    raise AssertionError(f"{address:#x} is in no loadable segment")


def test_the_function_table_of_the_stripped_server_names_its_handlers(symbols: GoSymbols):
    assert len(symbols.entries) > 10_000
    assert symbols.entries == sorted(symbols.entries)
    start = symbols.entries[symbols.names.index(START)]
    # Any address inside the function's code is named by it, up to the next function.
    following = symbols.entries[symbols.names.index(START) + 1]
    assert symbols.name_at(start) == START
    assert symbols.name_at(following - 1) == START
    assert symbols.name_at(following) != START
    assert symbols.name_at(symbols.entries[0] - 1) == "?"


def test_perf_lines_become_call_chains_and_a_profile(symbols: GoSymbols):
    start = symbols.entries[symbols.names.index(START)]
    signal = symbols.entries[symbols.names.index(SIGNAL)]
    binary = "/work/x/.venv/bin/temporal"
    lines = [
        "",
        f"\t{file_offset(symbols, start + 16):x} ({binary})",
        f"\t{file_offset(symbols, signal + 8):x} ({binary})",
        "",
        "\tffffffff81000000 ([kernel.kallsyms])",
        f"\t{file_offset(symbols, start + 4):x} ({binary})",
        "",
        f"\t{file_offset(symbols, signal):x} ({binary})",
        f"\t{file_offset(symbols, signal + 2):x} ({binary})",  # recursion counts once
    ]

    chains = list(samples(lines, symbols, "temporal"))

    assert chains == [[START, SIGNAL], ["[kernel.kallsyms]", START], [SIGNAL, SIGNAL]]
    profile = Profile.of(chains)
    assert profile.samples == 3
    assert profile.self_counts == {START: 1, "[kernel.kallsyms]": 1, SIGNAL: 1}
    assert profile.inclusive_counts == {START: 2, SIGNAL: 2, "[kernel.kallsyms]": 1}
    assert profile.table(profile.inclusive_counts, 5, "Signal") == [f" 66.7% {SIGNAL}"]


def test_a_file_that_is_not_a_go_binary_is_refused_with_a_reason(tmp_path: Path):
    text = tmp_path / "notes.txt"
    text.write_text("not a program")
    with pytest.raises(SymbolError, match="not a 64-bit little-endian ELF"):
        GoSymbols.load(text)
    with pytest.raises(SymbolError, match="no Go function table"):
        GoSymbols.load(Path("/bin/sh").resolve())
