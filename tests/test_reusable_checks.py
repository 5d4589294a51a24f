"""The repo's reusable check suites (checks/) catch what they claim to."""

from __future__ import annotations

import torch

from conftest import ROOT, save_scripted
from release_kit import gate


class BatchNormalised(torch.nn.Module):
    """Subtracts the batch mean: each row's output depends on the other rows in the batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, 4] - x[:, 4].mean()).abs() / 200.0


def test_batch_dependent_model_fails_the_hygiene_suite(project, power):
    project.config(f'[checks]\npaths = ["{ROOT / "checks"}"]\n')
    path = save_scripted(BatchNormalised(), project.root / "batchy.pt")
    report = gate.check(candidate=str(path), baseline=str(power["v1"]))
    results = {c.name: c for c in report.checks if c.stage == "checks"}
    batch = results["test_model_hygiene.py::test_predictions_do_not_depend_on_the_batch"]
    assert batch.status.value == "fail"
    assert batch.metrics[0].candidate > 0.1
    assert results["test_model_hygiene.py::test_predictions_are_deterministic"].status.value == "pass"


def test_well_behaved_model_passes_the_hygiene_suite(project, power):
    project.config(f'[checks]\npaths = ["{ROOT / "checks"}"]\n')
    report = gate.check(candidate=str(power["better"]), baseline=str(power["v1"]))
    hygiene = [c for c in report.checks if c.stage == "checks"]
    assert len(hygiene) == 2 and all(c.status.value == "pass" for c in hygiene)
