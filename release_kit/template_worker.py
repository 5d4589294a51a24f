"""Renders a repository's own templates in a child process with bounded memory and CPU time.

A template is data from the repository, which a pull request can change. jinja2's sandbox keeps it from
Python's internals, not from the job's resources: a few characters ask for a string of gigabytes
(``"a" * 10**10``, ``"x"|center(10**10)``), a number of millions of digits (``10 ** 10 ** 8``), loops of
10¹⁰ turns or recursion without end. No list of refused operations closes that (every filter that takes
a width or a count is one more), so the child runs under ``RLIMIT_AS`` and ``RLIMIT_CPU``, and what it
could not render is one line on its stderr: an input error naming the template, never a job held or
killed. The shipped templates alone are release-kit's own and render in process (:mod:`release_kit.render`).

The parent sends the template's name, the templates directory, the chart format and the context (the
report and the release as their JSON forms) on stdin as one JSON object; the child writes the text on
stdout."""

from __future__ import annotations

import json
import sys

# The child's address space: the interpreter, jinja2 and markdown-it take ~100 MB of it; a release note
# is kilobytes.
MEMORY_LIMIT_BYTES = 1 << 30
# CPU seconds, and the parent's wall-clock wait (the shipped templates render in milliseconds).
CPU_SECONDS = 30
WAIT_SECONDS = 60
# The rendered text, at most: a note or a changelog entry is kilobytes, GitHub's comments stop at 64 KiB.
OUTPUT_LIMIT_CHARS = 16 << 20
# The child's exit when the template is at fault; anything else is a failure of the child itself.
TEMPLATE_FAULT = 2


def render_isolated(name: str, templates_dir: str, charts: str, context: dict) -> str:
    """``name`` rendered from ``templates_dir`` in the child; an InputError naming the template when it
    cannot be (its error, or the time or memory it took)."""
    import os
    import subprocess
    from pathlib import Path

    from .errors import InputError, one_line

    request = json.dumps({"name": name, "templates": str(templates_dir), "charts": charts, "context": context}, allow_nan=False)
    package_root = str(Path(__file__).resolve().parent.parent)
    environment = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": package_root, "PYTHONIOENCODING": "utf-8", "LC_ALL": "C.UTF-8"}
    try:
        done = subprocess.run([sys.executable, "-m", "release_kit.template_worker"], input=request,
                              capture_output=True, text=True, encoding="utf-8", env=environment, timeout=WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        raise InputError(f"cannot render template {name}: it took longer than {WAIT_SECONDS} s (a release note takes milliseconds)") from None
    if done.returncode == 0:
        return done.stdout
    if done.returncode == TEMPLATE_FAULT:  # its last line: a library's warning may come first
        raise InputError(one_line(done.stderr.strip().splitlines()[-1]))
    if done.returncode in (-9, -24, 128 + 9, 128 + 24):  # SIGKILL, SIGXCPU: past RLIMIT_CPU
        raise InputError(f"cannot render template {name}: it took more than {CPU_SECONDS} s of CPU (a release note takes milliseconds)")
    raise RuntimeError(f"the template renderer failed (exit {done.returncode}): {one_line(done.stderr.strip()[-500:])}")


def _limit_resources() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS + 5))


def main() -> int:
    request = json.loads(sys.stdin.read())
    _limit_resources()
    from .errors import InputError
    from .render import render_from_json

    name = request["name"]
    try:
        text = render_from_json(name, request["templates"], request["charts"], request["context"])
    except InputError as error:
        print(f"{error}", file=sys.stderr)
        return TEMPLATE_FAULT
    except MemoryError:
        print(f"cannot render template {name}: it asked for more than {MEMORY_LIMIT_BYTES >> 20} MiB of memory "
              "(a release note takes kilobytes)", file=sys.stderr)
        return TEMPLATE_FAULT
    except RecursionError:
        print(f"cannot render template {name}: it recursed too deeply", file=sys.stderr)
        return TEMPLATE_FAULT
    except Exception as error:  # noqa: BLE001  the repository's template failed ("a" + 1, 1 / 0, an attribute of none)
        print(f"cannot render template {name}: {type(error).__name__}: {error}", file=sys.stderr)
        return TEMPLATE_FAULT
    if len(text) > OUTPUT_LIMIT_CHARS:
        print(f"cannot render template {name}: its text is longer than {OUTPUT_LIMIT_CHARS >> 20} Mi characters", file=sys.stderr)
        return TEMPLATE_FAULT
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
