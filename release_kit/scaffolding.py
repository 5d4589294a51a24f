"""``release-kit init``: scaffold a model repository from the templates in :mod:`release_kit.scaffold`.

Everything is rendered and validated first; then, unless a file would be overwritten (``force`` aside),
every file is written. A half-scaffolded repository is never left behind by bad input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import InputError

DEFAULT_ACTION = "release-kit/release-kit@v0"
MAX_LABELS = 1000  # more distinct text values than this: no class list to write, the target is likely not one
GITIGNORE_LINES = (".release-kit/", "release-kit-report.json", "release-kit-junit.xml", "release-kit-comment.md", "release-note.md")


@dataclass(frozen=True)
class Scaffold:
    files: dict[str, str]  # relative path → content
    gitignore: str  # the .gitignore after adding release-kit's generated files


def plan(directory: Path, *, name: str, task: str, target: str | None, features: list[str] | None, data: str | None,
         action: str = DEFAULT_ACTION, prediction: str | None = None) -> Scaffold:
    from .data import is_tensor_source

    labels, others = None, []
    if task == "classification" and prediction is None:
        raise InputError("--task classification needs --prediction logits or --prediction probabilities (what the model outputs)")
    if task == "regression" and prediction is not None:
        raise InputError("--prediction applies to --task classification only")
    if data is not None and is_tensor_source(data):
        if target is not None or features is not None:
            raise InputError(f"{data}: a tensor golden set takes no --target or --features: its arrays are the model's "
                             "inputs ('inputs', or 'inputs.0', 'inputs.1', …) and 'target'")
        _check_tensors(directory, data, name=name, task=task, prediction=prediction)
    else:
        if target is None:
            raise InputError("pass --target, the golden table's target column (a tensor golden set, --data FILE.npz or "
                             ".safetensors, has a 'target' array instead)")
        if features is None:
            if data is None:
                raise InputError("pass --features a,b,c or --data FILE to take the features from its columns")
            features, others, labels = _columns(directory, data, target)
        features = [f.strip() for f in features if f.strip()]
    # JSON strings are TOML basic strings: any name or path is quoted safely.
    config_text = render_scaffold(
        "release-kit.toml.j2", name=json.dumps(name), task=json.dumps(task), target=json.dumps(target),
        features=json.dumps(features) if features is not None else None, others=", ".join(others),
        data=json.dumps(data) if data else None,
        prediction=json.dumps(prediction) if prediction else None, baseline=json.dumps(f"models:/{name}@champion"),
        classes=json.dumps(labels) if task == "classification" and labels and 2 <= len(labels) <= MAX_LABELS else None,
        action_repo=action.split("@")[0],
    )
    _validate(config_text)

    files = {"release-kit.toml": config_text}
    scaffold = resources.files("release_kit.scaffold")
    files["checks/test_model_basics.py"] = scaffold.joinpath("checks", "test_model_basics.py").read_text(encoding="utf-8")
    for workflow in ("release-gate.yml", "release.yml"):
        files[f".github/workflows/{workflow}"] = render_scaffold(f"workflows/{workflow}.j2", action=action)
    templates = resources.files("release_templates")
    for entry in sorted(templates.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".j2"):
            files[f"release_templates/{entry.name}"] = entry.read_text(encoding="utf-8")

    ignore_path = directory / ".gitignore"
    existing = ignore_path.read_text(encoding="utf-8") if ignore_path.is_file() else ""
    missing = [line for line in GITIGNORE_LINES if line not in existing.splitlines()]
    gitignore = existing + ("" if not existing or existing.endswith("\n") else "\n")
    if missing:
        gitignore += "# release-kit's generated state and outputs\n" + "\n".join(missing) + "\n"
    return Scaffold(files, gitignore)


def write(directory: Path, scaffold: Scaffold, *, force: bool = False) -> list[str]:
    """Write the scaffold; refuses (writing nothing) when a file exists, unless ``force``."""
    from .outputs import write_atomic

    taken = [path for path in scaffold.files if (directory / path).exists()]
    if taken and not force:
        shown = ", ".join(taken[:3]) + (f" and {len(taken) - 3} more" if len(taken) > 3 else "")
        raise InputError(f"{directory}: {shown} already exist; nothing written (--force overwrites)")
    blocked = [p for p in scaffold.files if any(parent.is_file() for parent in (directory / p).parents if parent != directory)]
    if blocked:
        raise InputError(f"{directory}: cannot create {blocked[0]}: a file is in the way; nothing written")
    written = []
    try:
        for path, text in scaffold.files.items():
            write_atomic(directory / path, text)
            written.append(path)
        write_atomic(directory / ".gitignore", scaffold.gitignore)
    except OSError as error:
        raise InputError(f"cannot write into {directory}: {error.strerror or error}") from None
    return written


def _check_tensors(directory: Path, data: str, **model) -> None:
    """The tensor golden set loads as the gate loads it (its arrays, their shapes against the task): a file
    the first check would refuse is refused here, before anything is written."""
    from .config import ModelSpec
    from .data import load_golden

    load_golden(Path(data) if Path(data).is_absolute() else directory / data, ModelSpec(**model))


def _columns(directory: Path, data: str, target: str) -> tuple[list[str], list[str], list[str] | None]:
    """The file's columns but the target that a model can read (numbers, booleans), its other columns, and the
    target's labels, sorted, when it holds text (class names)."""
    from .data import is_feature_column, is_text, read_table

    path = Path(data) if Path(data).is_absolute() else directory / data
    frame = read_table(path)
    columns = [str(c) for c in frame.columns]
    if target not in columns:
        raise InputError(f"{data}: no column {target!r} (the --target); columns are {', '.join(columns)}")
    values = frame[frame.columns[columns.index(target)]]
    labels = sorted({str(v) for v in values.dropna()}) if is_text(values) else None
    readable = {c: is_feature_column(frame[frame.columns[i]]) for i, c in enumerate(columns) if c != target}
    features = [c for c, ok in readable.items() if ok]
    if not features:
        raise InputError(f"{data}: no column besides the target {target!r} holds numbers or booleans a model can read; "
                         "name the features with --features")
    return features, [c for c, ok in readable.items() if not ok], labels


def render_scaffold(template: str, **context) -> str:
    """A shipped scaffold template (the config, the workflows) rendered with ``[[ ]]`` delimiters, which leave
    the GitHub expressions ``${{ }}`` in the workflows as they are."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(
        loader=PackageLoader("release_kit", "scaffold"), undefined=StrictUndefined, keep_trailing_newline=True,
        variable_start_string="[[", variable_end_string="]]", block_start_string="[%", block_end_string="%]",
    )
    return env.get_template(template).render(**context)


def _validate(config_text: str) -> None:
    import tomllib

    from pydantic import ValidationError

    from .config import Config, format_validation_error

    try:
        Config.model_validate(tomllib.loads(config_text))
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"the values given make an invalid release-kit.toml: {error}") from None
    except ValidationError as error:
        raise InputError(format_validation_error(error, Path("release-kit.toml"))) from None
