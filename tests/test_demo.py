"""The worked example's demo script, end to end, in a scratch copy of the example."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_demo_blocks_the_night_candidate_then_releases_the_better_one(tmp_path):
    shutil.copytree(ROOT / "examples" / "power-forecast", tmp_path / "examples" / "power-forecast",
                    ignore=shutil.ignore_patterns("data", "models", "out", "workspace", ".release-kit", "__pycache__"))
    shutil.copytree(ROOT / "checks", tmp_path / "checks")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "120"}
    env.pop("MLFLOW_TRACKING_URI", None)
    demo = subprocess.run(["bash", str(tmp_path / "examples" / "power-forecast" / "demo.sh")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "BLOCK" in demo.stdout and "exit 1: blocked" in demo.stdout
    assert "PASS bump minor → 1.1.0" in demo.stdout
    # The release: the note printed, v1.1.0 in the embedded registry, the git tag and the CHANGELOG entry.
    assert "# power-forecast 1.1.0\n" in demo.stdout and "## ✅ release-kit: `power-forecast` — PASS" in demo.stdout
    work = tmp_path / "examples" / "power-forecast" / "workspace"
    assert (work / ".release-kit" / "mlflow.db").is_file()
    assert "git tags: power-forecast-v1.1.0\n" in demo.stdout
    assert "## [1.1.0] - " in (work / "CHANGELOG.md").read_text()
    ledger = subprocess.run(["release-kit", "history", "--format", "json"], cwd=work, capture_output=True, text=True, env=env)
    releases = {entry["version"]: entry for entry in json.loads(ledger.stdout)}
    assert releases["1.1.0"]["aliases"] == ["champion"] and releases["1.1.0"]["bump"] == "minor"
    # The default gate: every stage ran, with tracking on, and the good candidate passed all of them.
    better = json.loads((work / "out" / "better.json").read_text())
    assert {c["stage"] for c in better["checks"]} >= {"quality", "outliers", "performance", "data"}
    assert not [c["name"] for c in better["checks"] if c["status"] in ("fail", "error")]
    assert better["mlflow"]["run_id"]
    night = json.loads((work / "out" / "night.json").read_text())
    assert night["bump"] is None and night["verdict"] == "block"
