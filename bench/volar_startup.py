"""How long volar takes to start: `volar --version` (what every command, and every press of Tab
with shell completion, pays before its own work), as the median and best of N runs, and the
import time of volant.cli.main. Usage: python -m bench.volar_startup [RUNS]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

VOLAR = Path(sys.executable).with_name("volar")


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([str(VOLAR), "--version"], check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    imports = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import volant.cli.main"],
        check=True,
        capture_output=True,
        text=True,
    ).stderr.splitlines()
    cumulative = int(imports[-1].split("|")[1])  # the last line is volant.cli.main itself
    print(
        f"volar --version: median {statistics.median(times) * 1000:.0f} ms, "
        f"best {min(times) * 1000:.0f} ms over {runs} runs"
    )
    print(f"import volant.cli.main: {cumulative / 1000:.0f} ms")


if __name__ == "__main__":
    main()
