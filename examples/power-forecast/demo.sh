#!/usr/bin/env bash
# The release-kit story on the power-forecast example, on the embedded MLflow store (.release-kit/ here).
set -euo pipefail
cd "$(dirname "$0")"

banner() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

banner "Build: synthetic solar data, v1.0.0 registered as models:/power-forecast@champion, two candidates"
python build.py

banner "Candidate A: retrained on a data export with a night-time sensor offset (forecasts negative power)"
set +e
release-kit check --candidate models/candidate-night.pt --report out/night.json
code=$?
set -e
if [[ $code -ne 1 ]]; then echo "demo: expected the gate to block candidate A (exit 1), got exit $code" >&2; exit 1; fi
echo "→ exit $code: blocked, as it should be"

banner "Candidate B: more capacity and training steps (genuinely better)"
release-kit check --candidate models/candidate-better.pt2 --report out/better.json
echo "→ exit 0: release allowed"

banner "Release note for candidate B (release-kit note --report out/better.json)"
release-kit note --report out/better.json
