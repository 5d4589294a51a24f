#!/usr/bin/env bash
# The release-kit story on the power-forecast example, from a model team's point of view: their own git
# repository (a scratch copy of this example under workspace/), the embedded MLflow store, two candidates,
# and the release of the good one.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$here/workspace"

banner() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

banner "Set up: the model team's repository at $work"
rm -rf "$work"
mkdir -p "$work/checks/shared"
cp "$here/power_forecast.py" "$here/build.py" "$here/release-kit.toml" "$work/"
cp "$here"/checks/*.py "$work/checks/"
# release-kit's reusable check suites, vendored into the team's checks/ (one path instead of ../../checks).
cp "$here"/../../checks/*.py "$work/checks/shared/"
sed -i 's#paths = \["checks", "../../checks"\]#paths = ["checks"]#' "$work/release-kit.toml"
printf 'data/\nmodels/\nout/\n.release-kit/\n__pycache__/\n' > "$work/.gitignore"
cd "$work"
git init --quiet --initial-branch=main
git add .
git -c user.name="Power Team" -c user.email=power-team@example.com commit --quiet -m "power-forecast model and release-kit config"
echo "committed $(git rev-parse --short HEAD)"

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
release-kit check --candidate models/candidate-better.pt --report out/better.json
echo "→ exit 0: release allowed"

banner "Release candidate B (release-kit release --report out/better.json); the note follows"
release-kit release --report out/better.json --note-out out/release-note.md

banner "The result: registry ledger, git tag and CHANGELOG"
release-kit history
echo "git tags: $(git tag --list)"
cat CHANGELOG.md
