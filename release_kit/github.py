"""GitHub Actions: the step summary, step outputs, annotations, the sticky PR comment, and the event.

Everything here reads the files and variables the runner provides (``GITHUB_STEP_SUMMARY``,
``GITHUB_OUTPUT``, ``GITHUB_EVENT_PATH``, ...) and passes untrusted text (PR titles, branch names, check
names from user code) only as data: escaped in markdown, percent-encoded in workflow commands, written to
files, never to a shell.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InputError, ReleaseKitError, one_line, visible_controls

if TYPE_CHECKING:
    from .report import Report

COMMENT_LIMIT = 65_536  # GitHub's maximum issue-comment body, in characters
MARKER = "<!-- release-kit:sticky-comment model={model} -->"
_MARKER_LINE = re.compile(r"<!-- release-kit:sticky-comment model=[\w.-]+ -->")


@dataclass(frozen=True)
class Event:
    """What release-kit uses from ``$GITHUB_EVENT_PATH`` (a pull_request or push event)."""

    name: str
    pr_number: int | None = None
    pr_title: str | None = None
    head_ref: str | None = None
    from_fork: bool = False

    @classmethod
    def from_environment(cls, env: dict[str, str] | None = None) -> Event:
        env = os.environ if env is None else env
        name = env.get("GITHUB_EVENT_NAME", "")
        path = env.get("GITHUB_EVENT_PATH")
        if not path:
            return cls(name)
        try:
            payload = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read the GitHub event at {path}: {error}") from None
        pr = payload.get("pull_request") if isinstance(payload, dict) else None
        if not isinstance(pr, dict):
            return cls(name)
        head, base = pr.get("head") or {}, pr.get("base") or {}
        head_repo, base_repo = (head.get("repo") or {}).get("full_name"), (base.get("repo") or {}).get("full_name")
        return cls(
            name=name,
            pr_number=pr.get("number"),
            pr_title=pr.get("title"),
            head_ref=head.get("ref"),
            from_fork=bool((head.get("repo") or {}).get("fork")) or (head_repo is not None and head_repo != base_repo),
        )


def run_url(env: dict[str, str] | None = None) -> str | None:
    """The workflow run's page, where the full report is uploaded as an artifact."""
    env = os.environ if env is None else env
    if not (env.get("GITHUB_REPOSITORY") and env.get("GITHUB_RUN_ID")):
        return None
    server = env.get("GITHUB_SERVER_URL", "https://github.com")
    return f"{server}/{env['GITHUB_REPOSITORY']}/actions/runs/{env['GITHUB_RUN_ID']}"


@contextmanager
def workflow_commands_stopped(env: dict[str, str] | None = None) -> Iterator[None]:
    """On a GitHub Actions runner, its workflow commands stopped while the block runs (GitHub's advice for
    untrusted output): the models, a factory and the checks in ``checks/`` run inside it, and whatever they
    print (TorchScript's ``print`` included) reaches the job's log. A line such as ``::error::``,
    ``::add-mask::`` or ``::set-output`` there would otherwise be a command to the runner: a forged
    annotation, a masked verdict, a forged step output. Commands resume at a random token, which nothing
    printed inside can know. The markers go to stderr, where the CLI sends what the gate prints."""
    env = os.environ if env is None else env
    if env.get("GITHUB_ACTIONS") != "true":
        yield
        return
    token = secrets.token_hex(16)
    sys.stdout.flush()
    print(f"::stop-commands::{token}", file=sys.stderr, flush=True)
    try:
        yield
    finally:
        sys.stdout.flush()
        _flush_native_output()
        print(f"::{token}::", file=sys.stderr, flush=True)


def _flush_native_output() -> None:
    """Flush the C library's output buffers: what native code printed inside the block is written before
    commands resume."""
    import ctypes

    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C library to load by name (Windows): nothing buffered there to flush
        pass


def escape_data(text: str) -> str:
    """A workflow command's message: ``%``, CR and LF encoded so that it stays one command."""
    return visible_controls(text).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotations(report: Report) -> list[str]:
    """``::error`` for checks that block, ``::warning`` for warnings (GitHub shows them on the run)."""
    lines = []
    for check in report.checks:
        level = "error" if check.status.blocks else "warning" if check.status.value == "warn" else None
        if level:
            title = escape_property(f"release-kit {check.stage}::{check.name}")
            lines.append(f"::{level} title={title}::{escape_data(check.summary)}")
    return lines


def write_outputs(values: dict[str, str], env: dict[str, str] | None = None) -> None:
    """Append ``name<<DELIMITER`` blocks to ``$GITHUB_OUTPUT``; a random delimiter cannot occur in a value."""
    env = os.environ if env is None else env
    path = env.get("GITHUB_OUTPUT")
    if not path:
        return
    lines = []
    for name, value in values.items():
        delimiter = f"release_kit_{secrets.token_hex(16)}"
        lines.append(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")
    _append(path, "".join(lines))


def write_summary(markdown: str, env: dict[str, str] | None = None) -> None:
    env = os.environ if env is None else env
    if env.get("GITHUB_STEP_SUMMARY"):
        _append(env["GITHUB_STEP_SUMMARY"], markdown if markdown.endswith("\n") else markdown + "\n")


def _append(path: str, text: str) -> None:
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as error:
        raise InputError(f"cannot write {path}: {error.strerror or error}") from None


def comment_body(report: Report, *, event: Event, link: str | None, limit: int = COMMENT_LIMIT) -> str:
    """The sticky PR comment for ``report``: hidden marker, a header naming the PR, the report rendered with
    the shipped templates only (the report may come from a job that ran PR code: every string in it is
    escaped again here), cut to fit ``limit``.

    The cut is made at a line boundary before the limit and says where the full report is, so the comment
    never exceeds GitHub's maximum and never ends in a broken table row.
    """
    from .render import render_markdown

    return fit_comment(render_markdown(report), model=report.model, event=event, link=link, limit=limit)


def fit_comment(markdown: str, *, model: str, event: Event, link: str | None, limit: int = COMMENT_LIMIT) -> str:
    """Marker, PR header and ``markdown``, cut at a line boundary to fit ``limit``."""
    from .render import code_span, escape_markdown

    marker = MARKER.format(model=_marker_safe(model))
    header = ""
    if event.pr_number is not None:
        header = f"<sub>release-kit gate for #{int(event.pr_number)}"
        if event.pr_title:
            header += f" · {escape_markdown(event.pr_title)}"
        if event.head_ref:
            header += f" · branch {code_span(event.head_ref)}"
        header += "</sub>\n\n"
    body = f"{marker}\n{header}{markdown}"
    if len(body) <= limit:
        return body
    where = f"the full report is in the [workflow run]({link}) (artifact `release-kit-report`)" if link else "the full report is in the workflow run's artifacts"
    tail = f"\n\n> ✂️ Cut to fit GitHub's comment limit: {where}.\n"
    room = limit - len(tail)
    cut = body.rfind("\n", 0, room)
    cut = cut if cut > len(marker) else room
    kept = body[:cut]
    if kept.count("<details>") > kept.count("</details>"):
        kept += "\n</details>"
    if kept.count("\n```") % 2:
        kept += "\n```"
    return (kept + tail)[:limit]


def check_runner_files(env: dict[str, str] | None = None) -> None:
    """The runner's summary and output files must be writable before the gate runs, not after."""
    from .outputs import check_writable

    env = os.environ if env is None else env
    for name in ("GITHUB_STEP_SUMMARY", "GITHUB_OUTPUT"):
        if env.get(name):
            check_writable(Path(env[name]), f"${name}")


def publish_check(report: Report, markdown: str, *, report_path: Path | None, comment_out: Path, echo) -> None:
    """A gate's result on the runner: step summary, step outputs, annotations, and one verdict line."""
    write_summary(markdown)
    write_outputs({
        "verdict": report.verdict.value,
        "bump": report.bump.value if report.bump else "",
        "next_version": report.next_version or "",
        "report": str(report_path or ""),
        "comment": str(comment_out),
    })
    for line in annotations(report):
        echo(line)
    version = f" → {report.next_version}" if report.next_version else ""
    bump = report.bump.value if report.bump else "no release"
    echo(f"release-kit: {report.verdict.value.upper()} ({bump}{version}): {one_line(report.bump_reason)}")


def publish_skipped(reason: str, *, echo) -> None:
    """The gate compared nothing: the summary and outputs say "skipped", which is never a pass."""
    from .render import escape_markdown

    write_summary(f"## ⏭️ release-kit: skipped\n\n{escape_markdown(reason)}\n\nNothing was compared, so this is **not a pass**. "
                  "Set `[baseline] fallback` to a model file in the repository to gate pull requests from forks.\n")
    write_outputs({"verdict": "skipped", "bump": "", "next_version": "", "report": "", "comment": ""})
    echo(f"::warning title=release-kit skipped::{escape_data(reason)}")


def _marker_safe(model: str) -> str:
    """The model name inside an HTML comment: nothing that could end it."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in model)


def post_sticky_comment(body: str, env: dict[str, str] | None = None) -> str:
    """Create the PR's release-kit comment, or update it in place: one comment per PR and model.

    The body's first line is its marker (one model's gate, one comment). Uses the REST API at
    ``$GITHUB_API_URL`` with ``$GITHUB_TOKEN``; the PR number comes from the event. Returns "created"
    or "updated".
    """
    env = os.environ if env is None else env
    event = Event.from_environment(env)
    if event.pr_number is None:
        raise InputError("no pull request in $GITHUB_EVENT_PATH: the sticky comment is for pull_request events")
    token, repository = env.get("GITHUB_TOKEN"), env.get("GITHUB_REPOSITORY")
    if not token or not repository:
        raise InputError("GITHUB_TOKEN and GITHUB_REPOSITORY must be set to post the PR comment")
    api = env.get("GITHUB_API_URL", "https://api.github.com").rstrip("/")
    marker = body.split("\n", 1)[0]
    if not _MARKER_LINE.fullmatch(marker):
        raise InputError("the comment body does not start with release-kit's marker; render it with `check --format github`")
    if len(body) > COMMENT_LIMIT:
        raise InputError(f"the comment body has {len(body)} characters, over GitHub's {COMMENT_LIMIT}")

    author = _token_identity(api, token, env)
    page = 1
    while True:
        comments = _request("GET", f"{api}/repos/{repository}/issues/{event.pr_number}/comments?per_page=100&page={page}", token)
        for comment in comments:
            # Anyone can post a comment that starts with the marker; only ours is ever edited.
            if str(comment.get("body", "")).startswith(marker) and (comment.get("user") or {}).get("login") == author:
                _request("PATCH", f"{api}/repos/{repository}/issues/comments/{comment['id']}", token, {"body": body})
                return "updated"
        if len(comments) < 100:
            break
        page += 1
    _request("POST", f"{api}/repos/{repository}/issues/{event.pr_number}/comments", token, {"body": body})
    return "created"


# GITHUB_TOKEN is an installation token: GET /user refuses it, and its comments are this bot's.
ACTIONS_BOT = "github-actions[bot]"


def _token_identity(api: str, token: str, env) -> str:
    """The login the token posts as: GET /user for a user's token, else the Actions bot (or
    ``$RELEASE_KIT_COMMENT_AUTHOR`` for another GitHub App)."""
    try:
        user = _request("GET", f"{api}/user", token)
    except ReleaseKitError:
        return env.get("RELEASE_KIT_COMMENT_AUTHOR") or ACTIONS_BOT
    return str((user or {}).get("login") or env.get("RELEASE_KIT_COMMENT_AUTHOR") or ACTIONS_BOT)


def _request(method: str, url: str, token: str, payload: dict[str, Any] | None = None) -> Any:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url, method=method, data=None if payload is None else json.dumps(payload).encode(),
        headers={"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
                 "X-GitHub-Api-Version": "2022-11-28", "Content-Type": "application/json", "User-Agent": "release-kit"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        raise ReleaseKitError(f"GitHub API {method} {url.split('?')[0]} failed: HTTP {error.code} {error.reason}") from None
    except OSError as error:
        raise ReleaseKitError(f"cannot reach the GitHub API at {url.split('?')[0]}: {error}") from None
