"""Multi-head attention as prunable structure, whoever wrote the module.

Heads are removed together across the query, key and value projections (rows) and the output
projection (columns). Three layouts are recognised by structure, not by class:

- ours (`search_spaces.canonical.Attention`, what ``nn.MultiheadAttention`` is converted to):
  ``q_proj`` / ``k_proj`` / ``v_proj`` / ``out_proj`` and ``num_heads`` / ``head_dim``;
- Hugging Face encoders (BERT, RoBERTa, ELECTRA, MiniLM, DistilBERT and their kin): Linear
  children ``query`` / ``key`` / ``value`` (or ``q_lin`` ..., ``q_proj`` ...) with a head count
  (``num_attention_heads``, ``n_heads`` or ``num_heads``) and a head width
  (``attention_head_size`` or ``head_dim``); the output projection is the module's own
  ``out_lin`` / ``out_proj`` / ``o_proj``, or ``output.dense`` of its parent (BERT's
  ``BertAttention.output``).

torch-pruning can prune HF heads too, but only through a whole-model ``MetaPruner`` given a map
of head counts, after which the caller still rewrites ``num_attention_heads`` and
``all_head_size`` by hand. Removing a head is exact index work on four Linears, so it is done
here, and every recognised layout is trial-pruned during discovery: a model whose forward does
not follow its own head attributes is masked with the error, not broken in a search.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

_QKV = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"), ("q_lin", "k_lin", "v_lin"))
_OUT = ("out_proj", "out_lin", "o_proj")
_HEADS = ("num_heads", "num_attention_heads", "n_heads")
_WIDTH = ("head_dim", "attention_head_size")


@dataclass(frozen=True)
class HeadLayout:
    """Where one attention layer's heads live, as module paths in the model."""

    attention: str
    """The module holding the head count (the unit)."""
    q: str
    k: str
    v: str
    out: str
    """The output projection, whose input columns follow the heads."""
    heads: int
    head_dim: int

    @property
    def projections(self) -> tuple[str, str, str]:
        return (self.q, self.k, self.v)


def head_layout(model: nn.Module, name: str) -> HeadLayout | None:
    """The head layout of the module at ``name`` (None: not a recognised attention layer)."""
    if not name:
        return None
    mod = model.get_submodule(name)
    children = dict(mod.named_children())
    qkv = next(
        (names for names in _QKV if all(isinstance(children.get(n), nn.Linear) for n in names)),
        None,
    )
    heads = next((getattr(mod, a) for a in _HEADS if isinstance(getattr(mod, a, None), int)), None)
    width = next((getattr(mod, a) for a in _WIDTH if isinstance(getattr(mod, a, None), int)), None)
    if qkv is None or not heads or not width:
        return None
    q, k, v = (children[n] for n in qkv)
    assert isinstance(q, nn.Linear) and isinstance(k, nn.Linear) and isinstance(v, nn.Linear)
    inner = heads * width
    if not q.out_features == k.out_features == v.out_features == inner:
        return None  # grouped-query attention or an unusual split: not ours to cut
    out = next((f"{name}.{n}" for n in _OUT if isinstance(children.get(n), nn.Linear)), None)
    if out is None:
        parent = name.rpartition(".")[0]
        sibling = f"{parent}.output.dense" if parent else "output.dense"
        try:
            candidate = model.get_submodule(sibling)
        except AttributeError:
            candidate = None
        out = sibling if isinstance(candidate, nn.Linear) else None
    if out is None or model.get_submodule(out).in_features != inner:
        return None
    qn, kn, vn = (f"{name}.{n}" for n in qkv)
    return HeadLayout(name, qn, kn, vn, out, heads, width)


def _linear(model: nn.Module, path: str) -> nn.Linear:
    layer = model.get_submodule(path)
    assert isinstance(layer, nn.Linear), f"{path} is a {type(layer).__name__}, not a Linear"
    return layer


def head_importance(model: nn.Module, layout: HeadLayout) -> torch.Tensor:
    """L2 norm of each head's Q, K, V rows and output columns (magnitude importance)."""
    d = layout.head_dim
    projections = [_linear(model, p).weight.detach() for p in layout.projections]
    out = _linear(model, layout.out).weight.detach()
    norms = []
    for h in range(layout.heads):
        rows = slice(h * d, (h + 1) * d)
        total = sum(float((w[rows] ** 2).sum()) for w in projections)
        norms.append(total + float((out[:, rows] ** 2).sum()))
    return torch.tensor(norms).sqrt()


def keep_heads(model: nn.Module, layout: HeadLayout, keep: list[int]) -> HeadLayout:
    """Physically remove every head of ``layout`` not in ``keep``; the layout after."""
    if not keep:
        raise ValueError(f"attention {layout.attention!r} must keep at least one head")
    d = layout.head_dim
    rows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in sorted(keep)])
    for path in layout.projections:
        proj = model.get_submodule(path)
        assert isinstance(proj, nn.Linear)
        proj.weight = nn.Parameter(proj.weight.detach()[rows].clone())
        if proj.bias is not None:
            proj.bias = nn.Parameter(proj.bias.detach()[rows].clone())
        proj.out_features = len(rows)
    out = model.get_submodule(layout.out)
    assert isinstance(out, nn.Linear)
    out.weight = nn.Parameter(out.weight.detach()[:, rows].clone())
    out.in_features = len(rows)
    attention = model.get_submodule(layout.attention)
    for attr in _HEADS:
        if isinstance(getattr(attention, attr, None), int):
            setattr(attention, attr, len(keep))
    if isinstance(getattr(attention, "all_head_size", None), int):
        setattr(attention, "all_head_size", len(rows))  # noqa: B010 (an untyped HF attribute)
    return HeadLayout(
        layout.attention, layout.q, layout.k, layout.v, layout.out, len(keep), layout.head_dim
    )


def prune_heads(model: nn.Module, layout: HeadLayout, ratio: float) -> None:
    """Keep the ``1 - ratio`` highest-magnitude heads of ``layout`` (at least one)."""
    keep = max(1, round(layout.heads * (1.0 - ratio)))
    if keep == layout.heads:
        return
    order = torch.argsort(head_importance(model, layout), descending=True)[:keep]
    keep_heads(model, layout, sorted(int(i) for i in order))


__all__ = ["HeadLayout", "head_importance", "head_layout", "keep_heads", "prune_heads"]
