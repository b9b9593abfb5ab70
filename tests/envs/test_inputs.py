"""The inputs helpers: tensors, tuples and dicts of tensors of any dtype, and their errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from envs.workloads.base import DataSplit, Workload
from envs.workloads.inputs import (
    batch_size,
    call,
    check_feedable,
    check_like,
    export_args,
    from_feed,
    input_names,
    input_shape,
    repeat,
    take,
    to_feed,
)


def _tokens(n: int, length: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    return {
        "input_ids": torch.randint(0, 50, (n, length), generator=g),
        "attention_mask": torch.ones(n, length, dtype=torch.bool),
    }


class _Pool(nn.Module):
    """Masked mean of embedded tokens: ``forward(input_ids, attention_mask)``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 4)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        m = attention_mask.unsqueeze(-1).float()
        return (self.embed(input_ids) * m).sum(1) / m.sum(1)


def test_names_are_input_for_a_tensor_indexed_for_a_tuple_and_keys_for_a_dict():
    t = torch.zeros(2, 3)

    assert input_names(t) == ["input"]
    assert input_names((t, t)) == ["input_0", "input_1"]
    assert input_names(_tokens(2)) == ["input_ids", "attention_mask"]


@pytest.mark.parametrize("kind", ["tensor", "tuple", "dict"])
def test_take_and_repeat_keep_structure_and_dtype(kind):
    tokens = _tokens(6)
    x = {
        "tensor": tokens["input_ids"],
        "tuple": (tokens["input_ids"], tokens["attention_mask"]),
        "dict": tokens,
    }[kind]

    first = take(x, slice(0, 1))
    picked = take(x, torch.tensor([4, 1]))
    copies = repeat(first, 3)

    assert type(first) is type(x)
    assert (batch_size(first), batch_size(picked), batch_size(copies)) == (1, 2, 3)
    assert to_feed(picked)[input_names(x)[0]].tolist() == tokens["input_ids"][[4, 1]].tolist()
    for name, array in to_feed(copies).items():
        assert (array == array[:1]).all()
        assert array.dtype == to_feed(x)[name].dtype  # int64 ids, bool mask


def test_call_and_from_feed_run_a_dict_model_by_keyword():
    model, x = _Pool(), _tokens(3)

    direct = call(model, x)
    via_feed = call(model, from_feed(x, to_feed(x)))
    args, kwargs = export_args(x)

    torch.testing.assert_close(direct, model(x["input_ids"], x["attention_mask"]))
    torch.testing.assert_close(via_feed, direct)
    assert args == ()
    assert kwargs is not None and list(kwargs) == ["input_ids", "attention_mask"]


def test_batch_size_names_the_input_whose_batch_differs():
    x = {"input_ids": torch.zeros(4, 16, dtype=torch.long), "attention_mask": torch.ones(3, 16)}

    with pytest.raises(ValueError, match="input 'attention_mask' has batch size 3"):
        batch_size(x)


def test_check_like_names_a_missing_key():
    split = {"input_ids": _tokens(4)["input_ids"]}

    with pytest.raises(ValueError, match="input 'attention_mask' of the example input is missing"):
        check_like(split, take(_tokens(1), slice(0, 1)), "eval split")


def test_check_like_names_the_input_whose_shape_differs():
    split = _tokens(4) | {"attention_mask": torch.ones(4, 12, dtype=torch.bool)}

    with pytest.raises(ValueError, match=r"input 'attention_mask' has per-sample shape \(12,\)"):
        check_like(split, _tokens(1), "eval split")


def test_check_like_names_the_input_whose_dtype_differs():
    split = _tokens(4) | {"attention_mask": torch.ones(4, 16, dtype=torch.long)}

    with pytest.raises(TypeError, match=r"input 'attention_mask' has dtype torch\.int64"):
        check_like(split, _tokens(1), "eval split")


def test_check_like_refuses_a_tuple_where_the_example_is_a_dict():
    tokens = _tokens(4)

    with pytest.raises(TypeError, match="inputs are a tuple but the example input is a dict"):
        check_like(tuple(tokens.values()), _tokens(1), "train split")


def test_a_complex_input_is_refused_by_name():
    x = {"input_ids": torch.zeros(1, 4, dtype=torch.long), "phase": torch.zeros(1, 4).cfloat()}

    with pytest.raises(TypeError, match=r"input 'phase' has dtype torch\.complex64"):
        check_feedable(x)


def test_a_non_tensor_value_is_refused_by_name():
    with pytest.raises(TypeError, match=r"input 'attention_mask' must be a torch\.Tensor"):
        input_names({"input_ids": torch.zeros(1, 4), "attention_mask": [1, 1, 1, 1]})  # type: ignore[dict-item]


def test_workload_errors_name_the_offending_input():
    model, tokens = _Pool(), _tokens(8)
    example = take(tokens, slice(0, 1))
    good = DataSplit(tokens, torch.zeros(8, dtype=torch.long))
    no_mask = DataSplit({"input_ids": tokens["input_ids"]}, torch.zeros(8, dtype=torch.long))

    with pytest.raises(ValueError, match="Workload 'tok': eval split: input 'attention_mask'"):
        Workload("tok", model, example, good, no_mask)
    with pytest.raises(ValueError, match="example_input must have batch size 1, got 8"):
        Workload("tok", model, tokens, good, good)
    complex_mask = example | {"attention_mask": torch.zeros(1, 16).cfloat()}
    with pytest.raises(TypeError, match=r"input 'attention_mask' has dtype torch\.complex64"):
        Workload("tok", model, complex_mask, good, good)


def test_data_split_batches_a_dict_on_dim_zero_of_every_tensor():
    split = DataSplit(_tokens(10), torch.arange(10))

    batches = list(split.batches(4))

    assert len(split) == 10
    assert [batch_size(x) for x, _ in batches] == [4, 4, 2]
    assert batches[2][1].tolist() == [8, 9]
    assert batches[2][0]["input_ids"].tolist() == _tokens(10)["input_ids"][8:].tolist()


def test_a_single_tensor_keeps_its_shape_list_for_people():
    assert input_shape(torch.zeros(1, 3, 8)) == [1, 3, 8]
    assert input_shape(_tokens(1)) == {"input_ids": [1, 16], "attention_mask": [1, 16]}
