"""Explicit, numerically equivalent stand-ins for PyTorch's fused transformer modules.

``nn.MultiheadAttention`` keeps Q/K/V in one fused ``in_proj_weight`` whose width must equal
the embedding width, so heads cannot be removed from it, and ``nn.TransformerEncoderLayer``
dispatches to a native fast path that neither ONNX export nor torch-pruning can see through.
:func:`canonicalize` swaps them for :class:`Attention` / :class:`EncoderLayer` /
:class:`Encoder` with the same parameters and the same outputs (tested), before units are
discovered, so heads and FFN widths become ordinary prunable structure.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention with separate Q/K/V projections of width ``heads * head_dim``
    (its heads are removed by `search_spaces.heads`, like any recognised attention layout)."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, *, bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = 1.0 / math.sqrt(head_dim)  # fixed by the trained model, not by pruning
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.v_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: [batch, tokens, embed]; ``attn_mask``: additive float mask broadcastable to
        [batch, heads, tokens, tokens]."""
        batch, tokens = x.shape[0], x.shape[1]

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        if attn_mask is not None:
            scores = scores + attn_mask
        out = torch.matmul(scores.softmax(dim=-1), v)
        out = out.transpose(1, 2).reshape(batch, tokens, self.num_heads * self.head_dim)
        return self.out_proj(out)


def _key_padding_to_additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=dtype).masked_fill(mask, float("-inf"))
    return mask[:, None, None, :]


def _attn_to_additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=dtype).masked_fill(mask, float("-inf"))
    return mask


class EncoderLayer(nn.Module):
    """The computation of ``nn.TransformerEncoderLayer`` with an explicit :class:`Attention`.

    Submodule names match the original (``self_attn``, ``linear1``, ``linear2``, ``norm1``,
    ``norm2``) so unit names in strategies read the same before and after canonicalisation.
    """

    def __init__(
        self,
        self_attn: Attention,
        linear1: nn.Linear,
        linear2: nn.Linear,
        norm1: nn.LayerNorm,
        norm2: nn.LayerNorm,
        activation: Callable[[torch.Tensor], torch.Tensor] | nn.Module,
        *,
        norm_first: bool,
        batch_first: bool,
    ) -> None:
        super().__init__()
        self.self_attn = self_attn
        self.linear1, self.linear2 = linear1, linear2
        self.norm1, self.norm2 = norm1, norm2
        self.activation = activation
        self.norm_first = norm_first
        self.batch_first = batch_first

    def forward(
        self,
        src: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        x = src if self.batch_first else src.transpose(0, 1)
        mask = _attn_to_additive(src_mask, x.dtype)
        if is_causal and mask is None:
            n = x.shape[1]
            mask = torch.triu(torch.full((n, n), float("-inf")), diagonal=1)
        padding = _key_padding_to_additive(src_key_padding_mask, x.dtype)
        if padding is not None:
            mask = padding if mask is None else mask + padding
        if self.norm_first:
            x = x + self.self_attn(self.norm1(x), mask)
            x = x + self._ff(self.norm2(x))
        else:
            x = self.norm1(x + self.self_attn(x, mask))
            x = self.norm2(x + self._ff(x))
        return x if self.batch_first else x.transpose(0, 1)

    def _ff(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.activation(self.linear1(x)))


class Encoder(nn.Module):
    """``nn.TransformerEncoder`` without its fast path: a plain loop over ``layers``."""

    def __init__(self, layers: nn.ModuleList, norm: nn.Module | None) -> None:
        super().__init__()
        self.layers = layers
        self.norm = norm

    def forward(
        self,
        src: torch.Tensor,
        mask: torch.Tensor | None = None,
        src_key_padding_mask: torch.Tensor | None = None,
        is_causal: bool | None = None,
    ) -> torch.Tensor:
        x = src
        for layer in self.layers:
            x = layer(x, mask, src_key_padding_mask, bool(is_causal))
        return self.norm(x) if self.norm is not None else x


def why_not_canonical(layer: nn.TransformerEncoderLayer) -> str | None:
    """Why ``layer`` cannot be converted (``None`` when it can)."""
    mha = layer.self_attn
    if not mha._qkv_same_embed_dim:
        return "attention with separate kdim/vdim is not supported"
    if mha.bias_k is not None or mha.add_zero_attn:
        return "attention with bias_k/bias_v or add_zero_attn is not supported"
    return None


def _convert_attention(mha: nn.MultiheadAttention) -> Attention:
    e, h = mha.embed_dim, mha.num_heads
    bias = mha.in_proj_bias is not None
    attn = Attention(e, h, e // h, bias=bias)
    wq, wk, wv = mha.in_proj_weight.detach().chunk(3)
    for proj, w in zip((attn.q_proj, attn.k_proj, attn.v_proj), (wq, wk, wv), strict=True):
        proj.weight.data.copy_(w)
    if bias:
        bq, bk, bv = mha.in_proj_bias.detach().chunk(3)
        for proj, b in zip((attn.q_proj, attn.k_proj, attn.v_proj), (bq, bk, bv), strict=True):
            proj.bias.data.copy_(b)
    attn.out_proj.weight.data.copy_(mha.out_proj.weight.detach())
    if mha.out_proj.bias is not None:
        attn.out_proj.bias.data.copy_(mha.out_proj.bias.detach())
    return attn


def _convert_layer(layer: nn.TransformerEncoderLayer) -> EncoderLayer:
    return EncoderLayer(
        _convert_attention(layer.self_attn),
        layer.linear1,
        layer.linear2,
        layer.norm1,
        layer.norm2,
        layer.activation,
        norm_first=layer.norm_first,
        batch_first=layer.self_attn.batch_first,
    )


def canonicalize(model: nn.Module) -> nn.Module:
    """Replace convertible transformer modules of ``model`` in place; return ``model``.

    Dropout is dropped: candidates are built for inference (eval mode).
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.TransformerEncoder):
            layers = nn.ModuleList(
                _convert_layer(lyr) if why_not_canonical(lyr) is None else lyr
                for lyr in module.layers
            )
            replace_module(model, name, Encoder(layers, module.norm))
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.TransformerEncoderLayer) and why_not_canonical(module) is None:
            replace_module(model, name, _convert_layer(module))
    return model


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Swap the submodule at path ``name`` (e.g. ``"layer1.0"``) for ``new``."""
    if not name:
        raise ValueError("cannot replace the root module")
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    parent._modules[child] = new  # works for attributes and Sequential/ModuleList indices
