"""`release-kit --help` cold start: median of 5 fresh processes, next to a bare `python -c pass`.

Target (issue #2): ≤ 0.3 s.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

from _results import median, write_section

RUNS = 5


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    script = shutil.which("release-kit") or str(__import__("pathlib").Path(sys.executable).with_name("release-kit"))
    pairs = [(timed([script, "--help"]), timed([sys.executable, "-c", "pass"])) for _ in range(RUNS)]
    help_s, floor_s = median([p[0] for p in pairs]), median([p[1] for p in pairs])
    write_section(
        "cli_startup",
        "CLI cold start",
        f"| command | median of {RUNS} |\n|---|---:|\n"
        f"| `release-kit --help` | {help_s * 1000:.0f} ms |\n| `python -c pass` (interpreter floor) | {floor_s * 1000:.0f} ms |\n\n"
        f"Target ≤ 300 ms: {'met' if help_s <= 0.3 else 'NOT met'}.",
    )


if __name__ == "__main__":
    main()
