"""The command line itself: start-up cost, lazy imports, version, help."""

from __future__ import annotations

import json
import subprocess
import sys

from release_kit import __version__


def test_help_imports_no_heavy_library():
    code = (
        "import sys; from release_kit.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "import json; print(json.dumps(sorted(m for m in ('torch', 'mlflow', 'great_expectations', 'pandas', "
        "'numpy', 'pydantic', 'rich', 'jinja2', 'pytest') if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []


def test_check_help_imports_no_heavy_library():
    code = (
        "import sys; from release_kit.cli import main\n"
        "try:\n    main(['check', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules or 'mlflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0 and __version__ in result.stdout


def test_usage_error_exits_2(cli):
    assert cli("check", "--format", "yaml").exit_code == 2
    assert cli("frobnicate").exit_code == 2


def test_console_script_runs(tmp_path):
    script = subprocess.run([sys.executable, "-m", "release_kit.cli", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert script.returncode == 0 and "check" in script.stdout


def test_stdout_holds_the_report_alone_whatever_the_gate_runs_prints(project, power):
    """A model factory, or a library the gate drives (Ray's driver prints its raylet's warnings to sys.stdout
    from a thread), may print while the gate runs: on stderr, so that stdout is the JSON report alone."""
    from conftest import EXAMPLE, run_cli

    project.write("chatty.py", f"""
import sys
import threading
sys.path.insert(0, {str(EXAMPLE)!r})
import power_forecast


def build():
    print("chatter from the factory")
    thread = threading.Thread(target=lambda: print("chatter from a thread"))
    thread.start()
    thread.join()
    return power_forecast.baseline_factory()
""")
    text = (project.root / "release-kit.toml").read_text().replace("[baseline]", '[candidate]\nfactory = "chatty:build"\n\n[baseline]')
    project.write("release-kit.toml", text)
    result = run_cli(project.root, "check", "--candidate", power["v1_safetensors"], "--format", "json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["candidate"]["kind"] == "safetensors"
    assert "chatter from the factory" in result.stderr and "chatter from a thread" in result.stderr
