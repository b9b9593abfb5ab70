"""Built-in workloads, their on-disk cache, and the bring-your-own loader."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from envs.workloads import (
    DataSplit,
    UnknownWorkloadError,
    Workload,
    WorkloadSpecError,
    accuracy,
    get_workload,
    list_workloads,
    load_workload_spec,
)
from envs.workloads.cache import BuiltinWorkload, cache_key, cache_path, load_or_train
from envs.workloads.training import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
BYO_FILE = ROOT / "examples" / "byo_model.py"
BUILTIN_NAMES = ["digits-resnet", "mnist1d-cnn", "mnist1d-transformer"]


# --------------------------------------------------------------------------------------------
# a tiny recipe that trains in well under a second, for the cache tests


def _tiny_data() -> tuple[DataSplit, DataSplit]:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(96, 1, 4, 4, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long()
    return DataSplit(x[:64], y[:64]), DataSplit(x[64:], y[64:])


def _tiny_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))


TINY = BuiltinWorkload(
    name="tiny",
    description="a 2-class toy for the cache tests",
    make_model=_tiny_model,
    load_data=_tiny_data,
    train_config=TrainConfig(epochs=2, batch_size=16, optimizer="adamw", lr=1e-2),
    source_module=__name__,
)


def _eval_accuracy(wl: Workload) -> float:
    with torch.no_grad():
        outputs = torch.cat([wl.model(x) for x, _ in wl.eval.batches(256)])
    return accuracy(outputs.numpy(), wl.eval.targets.numpy())


# --------------------------------------------------------------------------------------------
# registry


def test_list_workloads_returns_the_three_builtins():
    assert list_workloads() == BUILTIN_NAMES


def test_get_workload_raises_listing_known_names_when_name_unknown(tmp_path):
    with pytest.raises(UnknownWorkloadError) as info:
        get_workload("imagenet", cache_dir=tmp_path)

    assert isinstance(info.value, KeyError)
    message = str(info.value)
    assert "'imagenet'" in message
    assert all(name in message for name in BUILTIN_NAMES)
    assert not (tmp_path / "workloads").exists()  # nothing trained or written


# --------------------------------------------------------------------------------------------
# bring your own


@pytest.mark.parametrize("spec", ["no_colon", "mod:", ":build", "mod:not-an-identifier", ""])
def test_load_workload_spec_raises_when_spec_malformed(spec):
    with pytest.raises(WorkloadSpecError, match="malformed workload spec"):
        load_workload_spec(spec)


def test_load_workload_spec_raises_when_module_missing():
    with pytest.raises(WorkloadSpecError, match="no module named 'surely_not_a_module_xyz'"):
        load_workload_spec("surely_not_a_module_xyz.models:build")


def test_load_workload_spec_raises_when_file_missing(tmp_path):
    with pytest.raises(WorkloadSpecError, match="does not exist"):
        load_workload_spec(f"{tmp_path / 'nope.py'}:build")


def test_load_workload_spec_raises_naming_the_callables_when_attribute_missing():
    with pytest.raises(WorkloadSpecError, match="no attribute 'nope'") as info:
        load_workload_spec(f"{BYO_FILE}:nope")

    assert "build" in str(info.value)


def test_load_workload_spec_raises_when_function_returns_no_workload(tmp_path):
    (tmp_path / "wrong.py").write_text("def build():\n    return 42\n")

    with pytest.raises(WorkloadSpecError, match="returned int, not a Workload"):
        load_workload_spec(f"{tmp_path / 'wrong.py'}:build")


def test_load_workload_spec_raises_when_function_needs_arguments(tmp_path):
    (tmp_path / "needs.py").write_text("def build(path):\n    raise AssertionError\n")

    with pytest.raises(WorkloadSpecError, match="cannot be called with no arguments"):
        load_workload_spec(f"{tmp_path / 'needs.py'}:build")


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        (
            "import torch\nraise RuntimeError('no GPU here')\n",
            r"importing .*RuntimeError: no GPU here \(bad\.py:2\)",
        ),
        ("def build():\n    return {}['weights']\n", r"raised KeyError: 'weights' \(bad\.py:2\)"),
        (
            "import torch\nfrom torch import nn\nfrom envs.workloads import DataSplit, Workload\n"
            "def build():\n    x, y = torch.randn(4, 3), torch.zeros(4, dtype=torch.long)\n"
            "    return Workload('w', nn.Linear(3, 2), x[:2], DataSplit(x, y), DataSplit(x, y))\n",
            "example_input must have batch size 1, got 2",
        ),
    ],
    ids=["import-raises", "build-raises", "batch-2-example"],
)
def test_a_model_file_that_raises_is_one_clear_error_naming_the_line(tmp_path, source, fragment):
    (tmp_path / "bad.py").write_text(source)

    with pytest.raises(WorkloadSpecError, match=fragment) as info:
        load_workload_spec(f"{tmp_path / 'bad.py'}:build")

    assert info.value.__cause__ is not None  # the user's traceback stays chained


def test_load_workload_spec_imports_a_dotted_module_path(tmp_path, monkeypatch):
    (tmp_path / "my_byo_pkg").mkdir()
    (tmp_path / "my_byo_pkg" / "__init__.py").write_text("")
    (tmp_path / "my_byo_pkg" / "models.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn
            from envs.workloads import DataSplit, Workload

            def build():
                x, y = torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)
                return Workload("dotted", nn.Linear(3, 2), x[:1], DataSplit(x, y), DataSplit(x, y))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    wl = load_workload_spec("my_byo_pkg.models:build")

    assert wl.name == "dotted"


def test_load_workload_spec_returns_a_trained_workload_for_the_example():
    wl = load_workload_spec(f"{BYO_FILE}:build")

    assert isinstance(wl, Workload)
    assert wl.example_input.shape == (1, 1, 8, 8)
    assert not wl.model.training
    assert _eval_accuracy(wl) > 90


# --------------------------------------------------------------------------------------------
# cache


def test_load_or_train_trains_once_then_loads_identical_weights(tmp_path):
    first = load_or_train(TINY, seed=0, cache_dir=tmp_path)
    second = load_or_train(TINY, seed=0, cache_dir=tmp_path)

    path = cache_path(TINY, 0, tmp_path)
    assert path.is_file() and path.parent == tmp_path / "workloads"
    assert path.name == f"tiny-{first.info['cache_key']}.pt"
    assert first.info["trained_now"] is True and second.info["trained_now"] is False
    a, b = first.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert second.info["baseline_accuracy_torch"] == first.info["baseline_accuracy_torch"]
    assert second.info["baseline_accuracy_torch"] == _eval_accuracy(second)
    assert not list(tmp_path.glob("workloads/*.tmp"))  # no temp file left behind


def test_load_or_train_reports_sizes_and_metrics_in_info(tmp_path):
    wl = load_or_train(TINY, seed=0, cache_dir=tmp_path)

    assert wl.info["train_samples"] == 64 and wl.info["eval_samples"] == 32
    assert wl.info["epochs"] == 2 and wl.info["train_seconds"] > 0
    assert 0 <= wl.info["baseline_accuracy_torch"] <= 100
    assert wl.description == TINY.description
    assert wl.example_input.shape == (1, 1, 4, 4)


def test_load_or_train_is_deterministic_for_a_seed_and_differs_across_seeds(tmp_path):
    a = load_or_train(TINY, seed=0, cache_dir=tmp_path / "a").model.state_dict()
    b = load_or_train(TINY, seed=0, cache_dir=tmp_path / "b").model.state_dict()
    c = load_or_train(TINY, seed=1, cache_dir=tmp_path / "a").model.state_dict()

    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert cache_key(TINY, 0) != cache_key(TINY, 1)


def test_load_or_train_leaves_global_random_state_untouched(tmp_path):
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()

    load_or_train(TINY, seed=0, cache_dir=tmp_path)  # trains
    load_or_train(TINY, seed=0, cache_dir=tmp_path)  # loads

    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state[1])


def test_load_or_train_retrains_when_cache_file_is_corrupt(tmp_path):
    path = cache_path(TINY, 0, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    messages: list[str] = []

    wl = load_or_train(TINY, seed=0, cache_dir=tmp_path, progress=messages.append)

    assert wl.info["trained_now"] is True
    assert any("unusable cache file" in m for m in messages)
    assert load_or_train(TINY, seed=0, cache_dir=tmp_path).info["trained_now"] is False


def test_cache_key_changes_when_the_defining_source_changes(tmp_path, monkeypatch):
    module = tmp_path / "recipe_src_mod.py"
    module.write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = BuiltinWorkload(
        "src", "", _tiny_model, _tiny_data, TINY.train_config, source_module="recipe_src_mod"
    )

    before = cache_key(recipe, 0)
    module.write_text("X = 2\n")

    assert cache_key(recipe, 0) != before
    assert len(before) == 12


def test_default_cache_dir_follows_layerpilot_cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYERPILOT_CACHE", str(tmp_path))

    assert cache_path(TINY, 0).parent == tmp_path / "workloads"


_CONCURRENT_SCRIPT = """
import sys, time
import torch
from torch import nn
from envs.workloads import DataSplit
from envs.workloads.cache import BuiltinWorkload, load_or_train
from envs.workloads.training import TrainConfig

def data():
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    return DataSplit(x, (x[:, 0] > 0).long()), DataSplit(x, (x[:, 0] > 0).long())

def model():
    time.sleep(1.0)  # widen the window in which both processes would train without the lock
    return nn.Linear(3, 2)

recipe = BuiltinWorkload("conc", "", model, data, TrainConfig(epochs=1, batch_size=16),
                         source_module="concurrent_recipe")
if __name__ == "__main__":
    print(load_or_train(recipe, cache_dir=sys.argv[1]).info["trained_now"])
"""


def test_load_or_train_trains_once_when_two_processes_race(tmp_path):
    script = tmp_path / "concurrent_recipe.py"
    script.write_text(_CONCURRENT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    cache = tmp_path / "cache"

    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(cache)], stdout=subprocess.PIPE, text=True, env=env
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]

    assert all(p.returncode == 0 for p in procs)
    assert sorted(outputs) == ["False", "True"]
    assert len(list((cache / "workloads").glob("conc-*.pt"))) == 1


# --------------------------------------------------------------------------------------------
# the built-ins' data and architectures (untrained: fast)


def test_digits_data_is_a_deterministic_stratified_split_of_32x32_images():
    from envs.workloads import digits

    train, eval_ = digits.load_data()
    again, _ = digits.load_data()

    assert (len(train), len(eval_)) == (1347, 450)
    assert train.inputs.shape[1:] == (1, 32, 32) and train.inputs.dtype == torch.float32
    assert float(train.inputs.min()) >= 0 and float(train.inputs.max()) <= 1
    assert torch.equal(train.inputs, again.inputs) and torch.equal(train.targets, again.targets)
    counts = torch.bincount(eval_.targets, minlength=10)
    assert int(counts.min()) >= 43 and int(counts.max()) <= 47  # stratified: ~45 per class
    assert not torch.equal(train.targets[:20], train.targets[:20].sort().values)  # shuffled


def test_mnist1d_data_is_deterministic_and_restores_global_random_state():
    from envs.workloads import mnist1d

    np_state = np.random.get_state()
    train, eval_ = mnist1d.load_data()

    assert np.array_equal(np.random.get_state()[1], np_state[1])
    again, _ = mnist1d.load_data()
    assert train.inputs.shape[1:] == (1, 40) and train.inputs.dtype == torch.float32
    assert len(train) + len(eval_) == mnist1d.NUM_SAMPLES
    assert torch.equal(train.inputs, again.inputs) and torch.equal(train.targets, again.targets)
    assert set(eval_.targets.tolist()) == set(range(10))


@pytest.mark.parametrize(
    ("factory", "shape", "blocks"),
    [
        ("envs.workloads.digits:DigitsResNet", (2, 1, 32, 32), 9),
        ("envs.workloads.mnist1d:ResNet1d", (2, 1, 40), None),
    ],
)
def test_resnet_builtins_have_the_expected_block_layout(factory, shape, blocks):
    import importlib

    module_name, cls_name = factory.split(":")
    model = getattr(importlib.import_module(module_name), cls_name)().eval()

    names = {n for n, _ in model.named_children()}
    assert {"conv1", "bn1", "layer1", "layer2", "layer3", "fc"} <= names
    found = [m for stage in (model.layer1, model.layer2, model.layer3) for m in stage]
    assert blocks is None or len(found) == blocks
    for block in found:
        assert all(hasattr(block, n) for n in ("conv1", "bn1", "conv2", "bn2", "downsample"))
    assert found[0].downsample is None and found[-1].downsample is None
    with torch.no_grad():
        assert model(torch.randn(*shape)).shape == (2, 10)


def test_transformer_builtin_uses_stock_encoder_layers():
    from envs.workloads import mnist1d

    model = mnist1d.Transformer1d().eval()

    layers = list(model.encoder.layers)
    assert len(layers) == mnist1d.TRANSFORMER_LAYERS
    assert all(type(layer) is nn.TransformerEncoderLayer for layer in layers)
    with torch.no_grad():
        assert model(torch.randn(3, 1, 40)).shape == (3, 10)


# --------------------------------------------------------------------------------------------
# the real built-ins (train cold unless $LAYERPILOT_CACHE holds them)

ACCURACY_FLOORS = {"digits-resnet": 97.0, "mnist1d-cnn": 93.0, "mnist1d-transformer": 90.0}


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_builtin_workload_reproduces_its_recorded_accuracy_above_floor(name, workload_cache):
    wl = get_workload(name, cache_dir=workload_cache)

    recomputed = _eval_accuracy(wl)

    # Weights come from disk and data is regenerated: both must reproduce training's numbers.
    # One eval sample of slack covers a cache written on a machine with another BLAS/threads.
    assert recomputed == pytest.approx(wl.info["baseline_accuracy_torch"], abs=100 / len(wl.eval))
    assert recomputed >= ACCURACY_FLOORS[name]
    assert wl.example_input.shape[0] == 1
    assert {"baseline_accuracy_torch", "train_seconds", "cache_key"} <= wl.info.keys()
