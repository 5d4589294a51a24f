"""Run every benchmark in this directory; each prints its figures and rewrites its section of RESULTS.md."""

from __future__ import annotations

import runpy
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["cli_startup.py", "quality_stage.py", "outlier_stage.py", "data_stage.py", "tensor_stages.py", "scale.py", "scan_memory.py", "serving.py", "end_to_end.py", "gpu.py"]

if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(HERE))
    for script in SCRIPTS:
        print(f"\n== {script}")
        runpy.run_path(str(HERE / script), run_name="__main__")
