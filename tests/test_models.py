"""Model formats are recognised by content; nothing is unpickled without --allow-pickle."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from release_kit.config import ModelSpec
from release_kit.errors import InputError
from release_kit.models import LoadedModel, detect_kind, load_model

SPEC = ModelSpec(name="m", task="regression", target="power_kw",
                 features=["hour", "day_of_year", "cloud_cover", "temperature", "irradiance"])


def test_formats_are_detected(power):
    assert detect_kind(power["v1"]) == "torchscript"
    assert detect_kind(power["better_export"]) == "torch.export"
    assert detect_kind(power["v1_safetensors"]) == "safetensors"


def test_export_program_predicts_any_batch_size(power):
    model = load_model("candidate", str(power["better_export"]), SPEC)
    for rows in (1, 7, 300):
        out = model.raw_outputs(np.zeros((rows, 5), dtype=np.float32))
        assert out.shape == (rows,)


def test_all_formats_of_the_same_weights_agree(power):
    features = np.random.default_rng(0).normal(size=(50, 5)).astype(np.float32) * 10
    scripted = load_model("a", str(power["v1"]), SPEC).raw_outputs(features)
    from_safetensors = load_model("b", str(power["v1_safetensors"]), SPEC,
                                  factory="power_forecast:baseline_factory").raw_outputs(features)
    np.testing.assert_allclose(scripted, from_safetensors, rtol=1e-6)


def test_pickle_renamed_to_an_export_suffix_is_not_unpickled(tmp_path, power):
    import power_forecast as pf

    path = tmp_path / "sneaky.pt2"
    torch.save(pf.baseline_factory(), path)
    with pytest.raises(InputError, match="torch.export"):
        load_model("candidate", str(path), SPEC)


def test_pickle_with_a_torchscript_suffix_is_detected(tmp_path):
    path = tmp_path / "model.ts"
    torch.save(torch.nn.Linear(5, 1), path)
    assert detect_kind(path) == "pickle"
    with pytest.raises(InputError, match="--allow-pickle"):
        load_model("candidate", str(path), SPEC)
    assert load_model("candidate", str(path), SPEC, allow_pickle=True).kind == "pickle"


def test_model_returning_a_non_tensor_is_an_input_error(tmp_path):
    """A dict or tuple of one tensor is that tensor; of several, bad input naming them unless [model] output
    names one; anything else that is no tensor, bad input naming its type."""

    class ReturnsDict(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"y": x.sum(1), "z": x.mean(1)}

    class ReturnsOne(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"y": x.sum(1)}

    class ReturnsText(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> str:
            return "y"

    rows = np.ones((3, 5), dtype=np.float32)
    for module, name in ((ReturnsDict(), "dict.pt"), (ReturnsOne(), "one.pt"), (ReturnsText(), "text.pt")):
        torch.jit.save(torch.jit.script(module), str(tmp_path / name))
    with pytest.raises(InputError, match=r"returned a dict of 'y', 'z': name the prediction's key in \[model\] output"):
        load_model("candidate", str(tmp_path / "dict.pt"), SPEC).raw_outputs(rows)
    named = load_model("candidate", str(tmp_path / "dict.pt"), SPEC.model_copy(update={"output": "z"}))
    np.testing.assert_array_equal(named.raw_outputs(rows), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(load_model("candidate", str(tmp_path / "one.pt"), SPEC).raw_outputs(rows), [5.0, 5.0, 5.0])
    with pytest.raises(InputError, match="returned str, not a tensor"):
        load_model("candidate", str(tmp_path / "text.pt"), SPEC).raw_outputs(rows)


class ReturnsAs(torch.nn.Module):
    """Returns its input's row sums as ``dtype``, or (one per row) its own weight (a tensor that requires grad)."""

    def __init__(self, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.dtype = dtype
        self.weight = torch.nn.Parameter(torch.arange(3, dtype=torch.float32))
        self.buffer = torch.arange(3, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype is None:
            return self.weight[: len(x)]
        if self.dtype == torch.float64:
            return self.buffer[: len(x)]  # the model's own storage: the caller must get a copy
        return x.sum(1).to(self.dtype)


@pytest.mark.parametrize("batch_size", [8, 2], ids=["one call", "calls filling one array"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.int64, torch.bool, torch.float64, None])
def test_every_real_output_dtype_comes_back_as_a_float64_copy(tmp_path, dtype, batch_size):
    model = LoadedModel("candidate", "returns-as", "pickle", tmp_path / "m.pt", "", ReturnsAs(dtype), batch_size=batch_size)
    inputs = np.ones((3, 5), dtype=np.float32)
    outputs = model.raw_outputs(inputs)
    assert outputs.dtype == np.float64 and outputs.shape == (3,)
    own = [0, 1, 2] if batch_size >= 3 else [0, 1, 0]  # rows 0-1, then row 2 alone
    expected = {None: own, torch.float64: own, torch.bool: [1, 1, 1]}.get(dtype, [5, 5, 5])
    np.testing.assert_array_equal(outputs, expected)
    outputs[:] = -1  # writing the result never reaches into the model
    np.testing.assert_array_equal(model.raw_outputs(inputs), expected)


class Misshapen(torch.nn.Module):
    """Right for its first call; then one row short, a second output column, a single number, complex numbers,
    or the same outputs in a tuple or as float64 (the last two are predictions still)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.calls = how, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:
            return x.sum(1)
        later = {"short": lambda: x.sum(1)[:-1], "wider": lambda: torch.stack([x.sum(1), x.sum(1)], dim=1), "scalar": lambda: x.sum(),
                 "complex": lambda: x.sum(1).to(torch.complex64), "tuple": lambda: (x.sum(1),), "float64": lambda: x.sum(1).double()}
        return later[self.how]()


@pytest.mark.parametrize(("how", "error"), [
    ("scalar", "returned a single number (a 0-d tensor), not one prediction per row"),
    ("complex", "returned complex numbers (torch.complex64); predictions must be real"),
])
def test_a_model_whose_later_call_returns_no_predictions_is_an_input_error(tmp_path, how, error):
    """The first call's output is checked in full and the later ones by type and dtype: a later call that
    returns something else is checked in full again (a 0-d tensor was an IndexError, exit 4)."""
    model = LoadedModel("candidate", "misshapen.pt", "pickle", tmp_path / "m.pt", "", Misshapen(how), batch_size=4)
    with pytest.raises(InputError, match=re.escape(f"candidate model misshapen.pt {error}")):
        model.raw_outputs(np.ones((10, 5), dtype=np.float32))


@pytest.mark.parametrize("how", ["tuple", "float64"])
def test_a_later_call_may_return_its_predictions_in_a_tuple_or_another_dtype(tmp_path, how):
    model = LoadedModel("candidate", "misshapen.pt", "pickle", tmp_path / "m.pt", "", Misshapen(how), batch_size=4)
    inputs = np.arange(50, dtype=np.float32).reshape(10, 5)
    np.testing.assert_array_equal(model.raw_outputs(inputs), inputs.sum(1).astype(np.float64))


@pytest.mark.parametrize("how", ["short", "wider"])
def test_a_model_whose_later_call_returns_another_shape_is_an_input_error(tmp_path, how):
    model = LoadedModel("candidate", "misshapen.pt", "pickle", tmp_path / "m.pt", "", Misshapen(how), batch_size=4)
    shape = "(3,)" if how == "short" else "(4, 2)"
    with pytest.raises(InputError, match=rf"candidate model misshapen.pt returned outputs of shape {re.escape(shape)} for input of shape "
                                         r"\(4, 5\), not one row per sample of shape \(\)"):
        model.raw_outputs(np.ones((10, 5), dtype=np.float32))


class TwoHeads(torch.nn.Module):
    """Two inputs; a dict of a per-sample tensor, a tuple holding another and a constant that is not per sample."""

    def forward(self, x: torch.Tensor, scale: torch.Tensor):
        y = (x * scale[:, None]).sum(1)
        return {"y": y, "rest": (x[:, :2] - 1.0, torch.arange(3.0))}


def test_a_program_traced_with_a_fixed_batch_predicts_any_batch_size(power, tmp_path):
    """torch.export without dynamic_shapes fixes the batch too: the program refuses any other number of
    rows. Loaded, it is called in batches of exactly its size (the last padded, the padding's outputs
    dropped): the same predictions as the program exported with a dynamic batch, for any number of rows."""
    from release_kit.fixed_batch import FixedBatch, fixed_batch_of

    dynamic = load_model("baseline", str(power["better_export"]), SPEC)
    static = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(torch.export.load(str(power["better_export"])).module(), (torch.zeros(16, 5),)), str(static))
    with pytest.raises(Exception, match="16"):  # the program itself takes 16 rows and nothing else
        torch.export.load(str(static)).module()(torch.zeros(17, 5))
    model = load_model("candidate", str(static), SPEC)
    assert isinstance(model.module, FixedBatch) and fixed_batch_of(model.module) == 16
    assert fixed_batch_of(dynamic.module) is None
    features = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32) * 10
    for rows in (0, 1, 15, 16, 17, 40):
        np.testing.assert_allclose(model.raw_outputs(features[:rows]), dynamic.raw_outputs(features[:rows]), rtol=1e-6, atol=1e-9)

    program = torch.export.export(TwoHeads(), (torch.zeros(4, 3), torch.ones(4)))
    wrapped = FixedBatch(program.module(), 4)
    x, scale = torch.randn(10, 3), torch.rand(10)
    out = wrapped(x, scale)
    expected = TwoHeads()(x, scale)
    torch.testing.assert_close(out["y"], expected["y"])
    torch.testing.assert_close(out["rest"][0], expected["rest"][0])
    torch.testing.assert_close(out["rest"][1], torch.arange(3.0))  # not per sample: as the program returns it
    empty = wrapped(x[:0], scale[:0])
    assert empty["y"].shape == (0,) and empty["rest"][0].shape == (0, 2)


def test_a_fixed_batch_beyond_the_memory_available_is_refused(project, power, cli, tmp_path, monkeypatch):
    """Each call of a program traced with a fixed batch is padded to that batch, so a file that claims a
    huge one (its graph's input shape is the file's word) would take the job's memory at the first call.
    One whose call needs more than a quarter of the memory available for its inputs is refused as it loads:
    exit 2, one line, no report. (Here 1,048,576 rows of 5 float32 features, 20 MiB, with the memory
    available set to 40 MiB; this machine's is what it is.)"""
    import release_kit.environment

    wide = tmp_path / "wide.pt2"
    torch.export.save(torch.export.export(torch.export.load(str(power["better_export"])).module(), (torch.zeros(2**20, 5),)), str(wide))
    with monkeypatch.context() as low:
        low.setattr(release_kit.environment, "available_memory_bytes", lambda: 40 * 2**20)
        result = cli("check", "--candidate", wide, "--baseline", power["v1"], "--report", "report.json")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert (f"candidate model {wide} was traced with a fixed batch of 1,048,576 samples, 20.0 MiB of inputs per call, more than a "
            "quarter of the memory available (40.0 MiB): export it with a dynamic batch") in result.stderr
    assert not (project.root / "report.json").exists()


def test_a_tables_calls_keep_the_models_widest_layer_within_the_activation_budget(power):
    """Rows per call for a table: 4 MiB of float32 over the widest of the input and the layers (read from the
    biases and norms), a power of two from 1,024 to 32,768; the power model loaded for a table gets its own."""
    from release_kit.models import CALL_ROWS, table_call_rows

    def mlp(*widths: int, bias: bool = True) -> torch.nn.Module:
        layers = [torch.nn.Linear(a, b, bias=bias) for a, b in zip(widths, widths[1:])]
        return torch.nn.Sequential(*layers)

    assert table_call_rows(mlp(10, 32, 1), 10) == 32_768  # 32 floats a row: 4 MiB at 32,768 rows
    assert table_call_rows(torch.jit.script(mlp(10, 256, 256, 1)), 10) == 4_096  # TorchScript's parameters too
    assert table_call_rows(mlp(10, 48, 1), 10) == 16_384  # 21,845 rows fit: the power of two below
    assert table_call_rows(torch.nn.Sequential(mlp(10, 600), torch.nn.LayerNorm(600)), 10) == 1_024  # 1,747 rows fit
    assert table_call_rows(mlp(300, 1, bias=False), 300) == 2_048  # no bias: the input's width
    assert table_call_rows(mlp(10, 100_000, 1), 10) == CALL_ROWS[0]  # at least 1,024
    assert table_call_rows(lambda x: x, 2) == CALL_ROWS[1]  # an opaque callable: the input's width

    class ListsNoTensors:
        def parameters(self):
            return [3, 4]

    assert table_call_rows(ListsNoTensors(), 300) == 2_048  # a "parameters" of no tensors: the input's width, as above
    assert load_model("candidate", str(power["v1"]), SPEC).batch_size == 32_768  # its layers are 16 wide
    tensors = load_model("candidate", str(power["v1"]), SPEC.model_copy(update={"features": None, "target": None}))
    assert tensors.batch_size == 256
    # A server's pool knows no golden set: by the model's layers (16 wide), so a request is rarely split.
    assert load_model("served", str(power["v1"])).batch_size == 32_768
