"""The child process in which a repository's own templates render (:func:`release_kit.render.render_isolated`
starts it), under ``RLIMIT_AS`` and ``RLIMIT_CPU``.

jinja2's sandbox keeps a template from Python's internals, not from the job's resources: a few characters
ask for a string of gigabytes (``"a" * 10**10``, ``"x"|center(10**10)``), loops of 10¹⁰ turns or recursion
without end, and no list of refused operations closes that (every filter that takes a width or a count is
one more). Here the operating system bounds them. The request (the template's name, the templates
directory, the chart format, the context as JSON) comes on stdin; the text goes to stdout, or one line to
stderr with exit ``TEMPLATE_FAULT`` when the template could not be rendered."""

from __future__ import annotations

import json
import sys

from .render import CPU_SECONDS, MEMORY_LIMIT_BYTES, OUTPUT_LIMIT_CHARS, TEMPLATE_FAULT


def _limit_resources() -> None:
    """Each limit the system allows: macOS refuses an RLIMIT_AS below what the process has mapped (a laptop
    then renders with the CPU and output limits and the parent's wall-clock wait), and a limit is never
    raised above one already set."""
    import resource

    for kind, wanted in ((resource.RLIMIT_AS, MEMORY_LIMIT_BYTES), (resource.RLIMIT_CPU, CPU_SECONDS)):
        _, hard = resource.getrlimit(kind)
        limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(kind, (limit, hard))
        except (ValueError, OSError):
            continue


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
