"""Dynamic skip: an LSTM controller decides, per input, which residual blocks to run.

The anchors are SkipNet's recurrent gate (Wang et al., 2018) and BlockDrop's policy (Wu et al.,
2018). Both only *mask* computation; here a skipped block is **not computed**:

- **torch eager**: :class:`GatedBlock` runs the block only on the sub-batch whose gate is open
  (gather, run, scatter), so batch 1 is a plain Python branch.
- **ONNX** (:meth:`DynamicSkipModel.exporting`): each gate becomes ``torch.cond``, which the
  dynamo exporter writes as an ONNX ``If`` node; ONNX Runtime runs only the taken branch. An ``If``
  needs one boolean per batch, so a batch runs the block if *any* of its inputs needs it and
  keeps the skipped inputs' features with ``where`` — outputs are per-input exact at every batch
  size, and the compute saving is exact at batch 1 (the deployment case we measure).

Structure: the wrapper :class:`DynamicSkipModel` owns the :class:`SkipController` and resets the
recurrent state before each forward; each :class:`GatedBlock` asks the controller (through a
shared, unregistered :class:`GateState`) before running its block. Gates are thresholded at 0.5
in eval mode and sampled (Bernoulli) in training mode, when the log-probabilities are recorded
for REINFORCE (:mod:`search_spaces.actions.dynamic_skip.training`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

OPEN_BIAS = 1.0
"""Initial gate logit: sigmoid(1) ≈ 0.73, so an untrained (thresholded) controller runs every
block, while training still explores skipping (Adam moves a logit by about lr per step)."""


class SkipController(nn.Module):
    """SkipNet-style recurrent gate shared by all gated blocks.

    Before gated block ``k`` it reads a summary of the block input (per-channel mean and
    standard deviation) through a per-block projection ``2·C_k -> hidden``, steps one shared
    ``LSTMCell`` (whose input also carries the previous gate's decision), and maps the hidden
    state to the probability of executing the block (a shared head plus a per-block bias).

    Args:
        channels: Feature width of each gated block's input, in execution order.
        hidden: Width of the projection and of the LSTM state.
    """

    def __init__(self, channels: Sequence[int], hidden: int = 32) -> None:
        super().__init__()
        if not channels:
            raise ValueError("SkipController needs at least one gated block")
        self.hidden = hidden
        self.proj = nn.ModuleList(nn.Linear(2 * c, hidden) for c in channels)
        self.cell = nn.LSTMCell(hidden + 1, hidden)
        self.head = nn.Linear(hidden, 1)
        self.bias = nn.Parameter(torch.full((len(channels),), OPEN_BIAS))
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @property
    def num_gates(self) -> int:
        return len(self.proj)

    def initial_state(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zeros = like.new_zeros((batch, self.hidden))
        return zeros, zeros

    def step(
        self,
        index: int,
        pooled: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor],
        previous: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Gate logits ``[B, 1]`` for block ``index`` and the next recurrent state.

        Args:
            index: The gate.
            pooled: ``[B, 2·C_index]`` summary of the block's input.
            state: The LSTM state after the previous gate.
            previous: ``[B, 1]`` decision of the previous gate (1 for the first gate).
        """
        # nn.LSTMCell's arithmetic written out with its own parameters, so the export is one
        # Gemm over [input, h] with the biases folded, and decisions stay [B, 1] columns: ONNX
        # Runtime pays a fixed cost per small node, and these take 11 of 37 off every gate
        h, c = state
        cell = self.cell
        inputs = torch.cat([torch.relu(self.proj[index](pooled)), previous, h], -1)
        weight = torch.cat([cell.weight_ih, cell.weight_hh], 1)
        i, f, g, o = F.linear(inputs, weight, cell.bias_ih + cell.bias_hh).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        bias = self.head.bias + self.bias[index]
        return F.linear(h, self.head.weight, bias), (h, c)


@dataclass
class GateState:
    """Per-forward scratch shared by the wrapper and its gated blocks (not a module)."""

    controller: SkipController
    recurrent: tuple[torch.Tensor, torch.Tensor] | None = None
    gates: list[torch.Tensor] = field(default_factory=list)
    """Executed (1) or skipped (0) per input, one ``[B, 1]`` column per gated block."""
    log_probs: list[torch.Tensor] = field(default_factory=list)
    """Training only: log-probability of each sampled decision (for REINFORCE)."""
    probs: list[torch.Tensor] = field(default_factory=list)
    """P(run) of each gate in the last forward."""
    force: bool | None = None
    """``True``/``False`` forces every gate open/closed (tests, static comparisons)."""
    decisions: torch.Tensor | None = None
    """``[B, K]`` 0/1 decisions that override the controller (the training oracle's search)."""
    pooled: list[torch.Tensor] = field(default_factory=list)
    """The controller's input (pooled block input) at each gate of the last forward."""
    exporting: bool = False
    """Use ``torch.cond`` (ONNX ``If``) instead of Python branching."""
    sample: bool = False
    """Sample gates from their probabilities instead of thresholding at 0.5."""


class GatedBlock(nn.Module):
    """A residual block that runs only for the inputs whose gate is open (identity otherwise).

    Args:
        block: The block; its output must have its input's shape (true of skippable blocks).
        index: Position of this gate among the model's gated blocks.
        channels_last: Pool over all but the last axis (transformer tokens ``[B, T, D]``)
            instead of all axes after the channel axis (``[B, C, ...]``).
        state: The wrapper's :class:`GateState` (shared by reference, not registered).
    """

    def __init__(self, block: nn.Module, index: int, channels_last: bool, state: GateState) -> None:
        super().__init__()
        self.block = block
        self.index = index
        self.channels_last = channels_last
        object.__setattr__(self, "_state", state)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel mean and standard deviation over every non-channel axis: ``[B, 2C]``."""
        dims = tuple(range(1, x.dim() - 1)) if self.channels_last else tuple(range(2, x.dim()))
        mean = x.mean(dim=dims)
        # x * x, not x.square(): ONNX Mul runs several times faster than Pow
        std = ((x * x).mean(dim=dims) - mean * mean).clamp(min=0).sqrt()
        return torch.cat([mean, std], dim=-1)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        state: GateState = self._state  # type: ignore[assignment]
        gate, keep = self._decide(state, x.detach())

        def run(inputs: torch.Tensor) -> torch.Tensor:
            return self.block(inputs, *args, **kwargs)

        if state.exporting:
            return _cond_block(run, x, gate, keep)
        # Training needs no gradient through the backbone, so it gathers too: a skipped block
        # costs nothing in controller training either.
        open_ = keep[:, 0]
        if bool(open_.all()):
            return run(x)
        if not bool(open_.any()):
            return x
        out = x.clone()
        out[open_] = run(x[open_])
        return out

    def _decide(self, state: GateState, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This gate's ``[B, 1]`` decisions: as 0/1 floats and as booleans."""
        controller = state.controller
        if state.recurrent is None:
            state.recurrent = controller.initial_state(x.shape[0], x)
        pooled = self.pooled(x)
        state.pooled.append(pooled)
        previous = state.gates[-1].detach() if state.gates else torch.ones_like(pooled[:, :1])
        logits, state.recurrent = controller.step(self.index, pooled, state.recurrent, previous)
        prob = torch.sigmoid(logits)
        if state.decisions is not None:
            gate = state.decisions[:, self.index : self.index + 1].to(prob.dtype)
        elif state.force is not None:
            gate = torch.full_like(prob, float(state.force))
        elif state.sample:
            gate = torch.bernoulli(prob.detach())
            log_prob = gate * torch.log(prob + 1e-6) + (1 - gate) * torch.log(1 - prob + 1e-6)
            state.log_probs.append(log_prob[:, 0])
        else:
            keep = logits > 0  # = prob > 0.5, without the sigmoid in the graph
            state.probs.append(prob[:, 0])
            state.gates.append(keep.to(prob.dtype))
            return state.gates[-1], keep
        state.probs.append(prob[:, 0])
        state.gates.append(gate)
        return gate, gate > 0.5


def _cond_block(run: Any, x: torch.Tensor, gate: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``If any(keep): where(keep, block(x), x) else x`` as one ``torch.cond``.

    ``gate`` and ``keep`` are the ``[B, 1]`` decisions as 0/1 floats and as booleans.
    """
    mask = keep.view(-1, *([1] * (x.dim() - 1)))

    # cond needs both branches to return the same layout (a transposed token tensor is not
    # contiguous, a block's output is)
    def taken(inputs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return torch.where(keep, run(inputs), inputs).contiguous()

    def skipped(inputs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return inputs.contiguous().clone()

    out = torch.cond(gate.amax((0, 1)) > 0.5, taken, skipped, (x, mask))
    # both branches keep x's shape; tell the exporter so (it gives cond outputs fresh sizes)
    for dim in range(x.dim()):
        torch._check(out.shape[dim] == x.shape[dim])
    return out


class DynamicSkipModel(nn.Module):
    """A backbone whose chosen blocks are :class:`GatedBlock` s, plus their controller.

    ``forward`` returns the backbone's output; with ``return_gates`` set (the ONNX export does)
    it also returns the ``[B, K]`` executed/skipped decisions, in gated-block order.

    Args:
        backbone: The model with its gated blocks already replaced (see :func:`gate_blocks`).
        controller: The controller those blocks consult.
        state: The state object the gated blocks share.
        gated: Module paths of the gated blocks, in execution order.
        alphas: Price of executing each gated block (the reward's speed–accuracy knob).
    """

    def __init__(
        self,
        backbone: nn.Module,
        controller: SkipController,
        state: GateState,
        gated: Sequence[str],
        alphas: Sequence[float],
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.controller = controller
        object.__setattr__(self, "_state", state)
        self.gated = tuple(gated)
        self.alphas = tuple(float(a) for a in alphas)
        self.return_gates = False

    @property
    def state(self) -> GateState:
        return self._state  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> Any:
        state = self.state
        state.recurrent = None
        state.gates, state.log_probs, state.probs, state.pooled = [], [], [], []
        out = self.backbone(x)
        if self.return_gates:
            return out, torch.cat(state.gates, dim=1)
        return out

    def last_gates(self) -> torch.Tensor:
        """``[B, K]`` decisions of the last forward (1 = executed)."""
        return torch.cat(self.state.gates, dim=1)

    @contextmanager
    def _override(self, **values: Any) -> Iterator[None]:
        """Set ``GateState`` fields inside the block, restoring them after."""
        state = self.state
        previous = {name: getattr(state, name) for name in values}
        for name, value in values.items():
            setattr(state, name, value)
        try:
            yield
        finally:
            for name, value in previous.items():
                setattr(state, name, value)

    def forced(self, open_: bool | None) -> AbstractContextManager[None]:
        """Force every gate open (``True``) or closed (``False``) inside the block."""
        return self._override(force=open_)

    def deciding(self, decisions: torch.Tensor) -> AbstractContextManager[None]:
        """Run with these ``[B, K]`` per-input decisions instead of the controller's."""
        return self._override(decisions=decisions)

    def sampling(self) -> AbstractContextManager[None]:
        """Sample gates and record log-probabilities (controller training)."""
        return self._override(sample=True)

    @contextmanager
    def exporting(self) -> Iterator[None]:
        """``torch.cond`` gates and a second ``gates`` output, for the ONNX exporter."""
        self.return_gates = True
        try:
            with self._override(exporting=True):
                yield
        finally:
            self.return_gates = False


def gate_blocks(
    model: nn.Module,
    blocks: Sequence[tuple[str, int, bool]],
    alphas: Sequence[float],
    hidden: int = 32,
    seed: int = 0,
) -> DynamicSkipModel:
    """Wrap ``model`` (in place) so each listed block is gated by one new controller.

    Args:
        model: The backbone (already pruned / skipped as the plan says).
        blocks: ``(module path, input width, channels_last)`` per gated block, execution order.
        alphas: Price of executing each block (same order).
        hidden: Controller width.
        seed: Seeds the controller's initialisation.
    """
    from search_spaces.canonical import replace_module

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        controller = SkipController([c for _, c, _ in blocks], hidden)
    state = GateState(controller)
    for index, (name, _, channels_last) in enumerate(blocks):
        block = model.get_submodule(name)
        replace_module(model, name, GatedBlock(block, index, channels_last, state))
    return DynamicSkipModel(model, controller, state, [n for n, _, _ in blocks], alphas)


def find_dynamic(model: nn.Module) -> DynamicSkipModel | None:
    """The :class:`DynamicSkipModel` at the root of ``model``, if it is one."""
    return model if isinstance(model, DynamicSkipModel) else None
