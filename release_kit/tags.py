"""release-kit's tags in MLflow: the one owner of their names and their meaning.

Three records live in MLflow tags, each a frozen value written with ``to_tags()`` and read back with
``from_tags()``, so writer and reader cannot drift apart:

- :class:`ReleaseTags` on a registered model version (written by ``release``, read by ``history``,
  the next gate run and the next release);
- :class:`GateRunTags` on a gate run (written by ``check``, read by ``release --report``);
- :class:`RollbackTags` on a rollback run (written by ``rollback``, read by ``history``).

Keys are valid MLflow keys (:func:`mlflow_key`): check and metric names with ``:`` or ``=`` are mapped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PREFIX = "release_kit."
VERSION_TAG = "release_kit.version"
RELEASE_ID_TAG = "release_kit.release_id"
MODEL_SHA256_TAG = "release_kit.model_sha256"
SIGNATURE_TAG = "release_kit.signature"
MODEL_TAG = "release_kit.model"
EVENT_TAG = "release_kit.event"
_METRIC = "release_kit.metric."
_DATA = "release_kit.data."
_ROLLBACK = "release_kit.rollback."
_TAG_LIMIT = 4000  # well under MLflow's tag value limit; long reasons are cut

_KEY_LIMIT = 250  # MLflow's maximum metric, param and tag key length
# Slashes too: MLflow treats keys as paths and refuses ones that normalise to another ("a/./b", "a/").
_KEY_UNSAFE = re.compile(r"[^\w. -]")


def mlflow_key(name: str) -> str:
    """A check or metric name as a valid MLflow key (metrics, params, tags alike): characters MLflow refuses
    (``:``, ``=``, ``[`` …) and path separators become ``_``, and the key fits MLflow's length limit.

    ``performance.p50_latency_ratio:batch=1.candidate`` → ``performance.p50_latency_ratio_batch_1.candidate``.
    """
    return _KEY_UNSAFE.sub("_", name)[:_KEY_LIMIT]


@dataclass(frozen=True)
class ReleaseTags:
    """What a released version records about itself."""

    version: str
    release_id: str | None = None
    model_sha256: str | None = None
    git_sha: str | None = None
    git_dirty: bool = False
    verdict: str | None = None
    bump: str | None = None
    bump_reason: str | None = None
    report_uri: str | None = None
    signature: str | None = None  # the contract, as Signature JSON
    waivers: str | None = None  # JSON list
    data: dict[str, str] = field(default_factory=dict)  # role → sha256
    metrics: dict[str, str] = field(default_factory=dict)  # "stage.metric" → candidate value

    def to_tags(self) -> dict[str, str]:
        tags = {VERSION_TAG: self.version, f"{PREFIX}git_dirty": str(self.git_dirty).lower()}
        optional = {
            RELEASE_ID_TAG: self.release_id, MODEL_SHA256_TAG: self.model_sha256, f"{PREFIX}git_sha": self.git_sha,
            f"{PREFIX}verdict": self.verdict, f"{PREFIX}bump": self.bump,
            f"{PREFIX}bump_reason": None if self.bump_reason is None else self.bump_reason[:_TAG_LIMIT],
            f"{PREFIX}report_uri": self.report_uri, SIGNATURE_TAG: self.signature,
            f"{PREFIX}waivers": None if self.waivers is None else self.waivers[:_TAG_LIMIT],
        }
        tags.update({key: value for key, value in optional.items() if value is not None})
        tags.update({mlflow_key(f"{_DATA}{role}"): sha for role, sha in self.data.items()})
        tags.update({mlflow_key(f"{_METRIC}{name}"): value for name, value in self.metrics.items()})
        return tags

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> ReleaseTags | None:
        """The record on a version, or None for a version release-kit did not release."""
        if VERSION_TAG not in tags:
            return None
        return cls(
            version=tags[VERSION_TAG], release_id=tags.get(RELEASE_ID_TAG), model_sha256=tags.get(MODEL_SHA256_TAG),
            git_sha=tags.get(f"{PREFIX}git_sha"), git_dirty=tags.get(f"{PREFIX}git_dirty") == "true",
            verdict=tags.get(f"{PREFIX}verdict"), bump=tags.get(f"{PREFIX}bump") or None,
            bump_reason=tags.get(f"{PREFIX}bump_reason"), report_uri=tags.get(f"{PREFIX}report_uri"),
            signature=tags.get(SIGNATURE_TAG), waivers=tags.get(f"{PREFIX}waivers"),
            data={k.removeprefix(_DATA): v for k, v in sorted(tags.items()) if k.startswith(_DATA)},
            metrics={k.removeprefix(_METRIC): v for k, v in sorted(tags.items()) if k.startswith(_METRIC)},
        )


@dataclass(frozen=True)
class GateRunTags:
    """What a gate run records: the decision, and the digest of the report it wrote."""

    model: str
    verdict: str
    bump: str | None
    report_sha256: str
    candidate_sha256: str
    next_version: str | None = None

    def to_tags(self) -> dict[str, str]:
        tags = {
            MODEL_TAG: self.model, f"{PREFIX}verdict": self.verdict, f"{PREFIX}bump": self.bump or "",
            f"{PREFIX}report_sha256": self.report_sha256, f"{PREFIX}candidate_sha256": self.candidate_sha256,
        }
        if self.next_version:
            tags[f"{PREFIX}next_version"] = self.next_version
        return tags

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> GateRunTags | None:
        """The record on a run, or None for a run that is no gate run."""
        if MODEL_TAG not in tags or f"{PREFIX}report_sha256" not in tags:
            return None
        return cls(
            model=tags[MODEL_TAG], verdict=tags.get(f"{PREFIX}verdict", ""), bump=tags.get(f"{PREFIX}bump") or None,
            report_sha256=tags[f"{PREFIX}report_sha256"], candidate_sha256=tags.get(f"{PREFIX}candidate_sha256", ""),
            next_version=tags.get(f"{PREFIX}next_version"),
        )


@dataclass(frozen=True)
class RollbackTags:
    """A rollback: the alias moved from one released version back to another, and why."""

    model: str
    from_version: str
    to_version: str
    alias: str
    reason: str
    by: str

    def to_tags(self) -> dict[str, str]:
        return {
            EVENT_TAG: "rollback", MODEL_TAG: self.model, f"{_ROLLBACK}from": self.from_version,
            f"{_ROLLBACK}to": self.to_version, f"{_ROLLBACK}alias": self.alias,
            f"{_ROLLBACK}reason": self.reason[:_TAG_LIMIT], f"{_ROLLBACK}by": self.by,
        }

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> RollbackTags:
        return cls(
            model=tags.get(MODEL_TAG, ""), from_version=tags.get(f"{_ROLLBACK}from", ""),
            to_version=tags.get(f"{_ROLLBACK}to", ""), alias=tags.get(f"{_ROLLBACK}alias", ""),
            reason=tags.get(f"{_ROLLBACK}reason", ""), by=tags.get(f"{_ROLLBACK}by", ""),
        )

    @staticmethod
    def search_filter(model_literal: str) -> str:
        """The MLflow run filter for this model's finished rollbacks (``model_literal`` already quoted)."""
        return f"tags.`{EVENT_TAG}` = 'rollback' and tags.`{MODEL_TAG}` = '{model_literal}' and attributes.status = 'FINISHED'"
