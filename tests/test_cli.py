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
