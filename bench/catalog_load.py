"""Catalog loading times: 100, 1,000 and 10,000 targets, the load alone and whole `probe validate`.

    python bench/catalog_load.py              # median of 5 rounds
    python bench/catalog_load.py --rounds 9

Each catalog has distinct targets (so no URL check is answered from a cache) in the forms
people write: bare URLs with a `# source:` comment beside them (IP addresses and host names),
and every tenth target a mapping with options. `load` is `catalog.load(path)` timed inside a
fresh process whose imports are already done: the figure the goal (<= 0.2 s for 10,000 targets)
is about, with its CPU time (on a shared machine, busy neighbours stretch the wall time more
than the CPU time). `probe validate` is the wall time of the whole command, start-up included.
Each figure is the median of the rounds, the kinds interleaved so a busy machine hits all
alike. bench/run.py can take the rows from `measure()` and print `table(rows)`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = (100, 1000, 10_000)
GOAL_SECONDS = 0.2  # loading 10,000 targets (issue 19)

# Imports first, then the load alone, timed; run in a child so every round starts cold.
_LOAD_ONLY = """\
import sys, time
from probe import catalog, yamlpos
started, cpu = time.perf_counter(), time.process_time()
catalog.load(sys.argv[1])
print(time.perf_counter() - started, time.process_time() - cpu)
"""


def catalog_text(targets: int) -> str:
    """A valid catalog of `targets` distinct targets, 100 to a feature, two features a platform."""
    lines = ["version: 1", "settings: {timeout: 3s, attempts: 2}", "controls:",
             "  - https://control.example/  # source: a control", "platforms:"]
    for i in range(targets):
        platform, feature = divmod(i // 100, 2)
        if i % 200 == 0:
            lines += [f"  p{platform}:", f"    name: Platform {platform}", "    features:"]
        if i % 100 == 0:
            lines += [f"      f{feature}:", "        need: any", "        targets:"]
        a, b, c = i // 65536 % 256, i // 256 % 256, i % 256
        if i % 10 == 9:
            lines += [f"          # source: vendor docs, endpoint {i}",
                      f"          - url: https://h{i}.p{platform}.example/media?x={i}",
                      f"            name: media {i}", "            timeout: 2s"]
        elif i % 3 == 0:
            lines.append(f"          - tls://h{i}.p{platform}.example  # source: dns {i}")
        else:
            lines.append(f"          - tcp://10.{a}.{b}.{c}:{1 + i % 65000}  # source: ip {i}")
    return "\n".join(lines) + "\n"


def _wall(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def _load_seconds(path: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of `catalog.load(path)` in a fresh process."""
    done = subprocess.run([sys.executable, "-c", _LOAD_ONLY, str(path)], check=True,
                          capture_output=True, text=True)
    wall, cpu = done.stdout.split()
    return float(wall), float(cpu)


Row = tuple[int, int, float, float, float]  # targets, bytes, load s, load CPU s, validate s


def measure(rounds: int = 5) -> list[Row]:
    """One row per size: the medians of `rounds` rounds."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for n in SIZES:
            path = Path(folder) / f"c{n}.yaml"
            path.write_text(catalog_text(n))
            loads, cpus, validates = [], [], []
            for _ in range(rounds):
                wall, cpu = _load_seconds(path)
                loads.append(wall)
                cpus.append(cpu)
                validates.append(_wall([sys.executable, "-m", "probe", "validate", str(path)]))
            rows.append((n, path.stat().st_size, statistics.median(loads),
                         statistics.median(cpus), statistics.median(validates)))
    return rows


def table(rows: list[Row]) -> str:
    lines = ["targets   file KB   load s   load CPU s   probe validate s (whole process)"]
    for n, size, load, cpu, validate in rows:
        lines.append(f"{n:>7}   {size / 1024:7.0f}   {load:6.3f}   {cpu:10.3f}   {validate:6.2f}")
    ten = [load for n, _, load, _, _ in rows if n == 10_000]
    if ten:
        met = "met" if ten[0] <= GOAL_SECONDS else "NOT met"
        lines.append(f"goal: 10,000 targets load in <= {GOAL_SECONDS} s: {ten[0]:.3f} s, {met}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    print(table(measure(args.rounds)))


if __name__ == "__main__":
    main(sys.argv[1:])
