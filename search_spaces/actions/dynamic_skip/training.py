"""Training the dynamic-skip controller: SkipNet's hybrid recipe on a frozen backbone.

Per input the objective (a reward to maximise) is

    r = −(5·[prediction changed] + T²·KL(full model ‖ gated model at T))  −  Σ_k α_k · g_k / K

where ``g_k`` is 1 if gated block ``k`` ran, ``α_k`` its price and ``K`` the number of gated
blocks. The first term is correctness against the ungated model's prediction (on a backbone that
is 100 % right on its training split, agreement with the labels says nothing about which skips
hurt) plus the KL as a smooth tie-breaker: among skips that keep the prediction, prefer those
that move the output least. With every α equal, executing
everything costs α, so α is "how much output fidelity one full execution is worth".

Two phases, an imitation warm start then policy gradient (in the spirit of SkipNet's hybrid
recipe, Wang et al. 2018, with BlockDrop's REINFORCE, Wu et al. 2018):

1. **Oracle warm start**: on up to ``warm_inputs`` train inputs, a per-input coordinate search
   finds which blocks to run: starting from "run all", each block in turn is flipped when that
   improves the input's own objective given the other blocks' current decisions
   (``oracle_sweeps`` passes over the blocks; one gated forward per block per sweep, skipped
   blocks not computed). The controller then imitates those decisions with a binary
   cross-entropy (weighted by ``run_weight``: skipping a block a hard input needs costs accuracy,
   running one an easy input could skip only costs time), its LSTM stepping over the features the
   oracle's own path produced. A straight-through or REINFORCE start from "all open" barely
   moves, because skipping any one block changes nothing on most inputs and a lot on a few; and
   labels from each block's damage *alone* over-skip, because damages compound.
2. **REINFORCE** (``reinforce_steps``): Bernoulli gates on the real gated model, the reward above,
   the batch mean as baseline and an entropy bonus; it corrects where imitation is imperfect.

Only the controller learns. Bounded and deterministic: fixed steps over seeded minibatches of
the train split; the original model's outputs are the teacher, so no labels are needed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from search_spaces.actions.dynamic_skip.model import DynamicSkipModel

FIDELITY_FLOOR = 5.0
"""Per-input KL above this is clipped: one hopeless input should not dominate."""
FLIP_COST = 5.0
"""Cost of changing an input's predicted class: the correctness term. It exceeds the price of
skipping any one block at the α values searched, so the oracle never trades a flip for a skip
(the KL alone tolerated flips on a few inputs and lost accuracy that static skips keep)."""


@dataclass(frozen=True)
class GateTrainConfig:
    """How the controller is trained inside a candidate build."""

    warm_inputs: int = 4096
    """Train inputs the oracle labels for the warm start (about K passes per sweep each; at
    most the train split). Imitation is data-bound: on mnist1d-transformer at α 8, 384 inputs
    gave 80.9 % at 2.03 of 4 blocks, 4096 gave 84.5 % at 2.04 (build 17 s -> 65 s)."""
    oracle_sweeps: int = 2
    """Coordinate-search sweeps over the blocks per input."""
    warm_epochs: int = 30
    """Epochs of the supervised warm start over those inputs (controller only: fast)."""
    run_weight: float = 4.0
    """Warm-start loss weight of "run" labels: wrongly skipping a block on a hard input costs
    accuracy, wrongly running it on an easy one only time."""
    reinforce_steps: int = 40
    """REINFORCE updates on the real gated model after the warm start."""
    batch_size: int = 32
    """Inputs per REINFORCE update."""
    lr: float = 1e-2
    """Adam learning rate of the warm start (REINFORCE uses a tenth of it)."""
    temperature: float = 1.0
    """Softmax temperature of the fidelity term."""
    entropy: float = 0.01
    """REINFORCE entropy bonus."""
    seed: int = 0
    """Seeds the input subset, the minibatch order and the gate samples."""

    def __post_init__(self) -> None:
        if (
            self.warm_inputs < 1
            or self.warm_epochs < 0
            or self.reinforce_steps < 0
            or self.batch_size < 1
            or self.lr <= 0
            or self.temperature <= 0
            or self.entropy < 0
            or self.run_weight <= 0
            or self.oracle_sweeps < 1
        ):
            raise ValueError(
                "GateTrainConfig: warm_inputs, batch_size >= 1, epochs/steps >= 0, lr and "
                "temperature > 0, entropy >= 0 required"
            )


@dataclass(frozen=True)
class GateTrainStats:
    """What training did (recorded with the candidate)."""

    steps: int
    final_objective: float
    """Mean reward over the last 10 % of steps (higher is better)."""
    final_executed: float
    """Mean share of gated blocks executed over the last 10 % of steps."""
    seconds: float


def fidelity(logits: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-input loss of agreement with the ungated model: ``FLIP_COST`` if the predicted class
    changes, plus ``T²·KL(softmax(teacher/T) ‖ softmax(logits/T))`` clipped at the floor."""
    t = temperature
    kl = F.kl_div(
        F.log_softmax(logits / t, 1),
        F.log_softmax(teacher / t, 1),
        reduction="none",
        log_target=True,
    ).sum(1)
    flipped = (logits.argmax(1) != teacher.argmax(1)).to(kl.dtype)
    return (t * t * kl).clamp(max=FIDELITY_FLOOR) + FLIP_COST * flipped


def train_controller(
    model: DynamicSkipModel,
    inputs: torch.Tensor,
    config: GateTrainConfig | None = None,
) -> GateTrainStats:
    """Train ``model.controller`` in place on ``inputs``; leaves the model in eval mode.

    Args:
        model: The gated model (its backbone is not changed).
        inputs: Train-split inputs (the ungated model's outputs are the targets).
        config: Warm start size, REINFORCE steps, learning rate, temperature, seed.
    """
    config = config or GateTrainConfig()
    start = time.perf_counter()
    model.eval()
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    params = list(model.controller.parameters())
    for p in params:
        p.requires_grad_(True)
    alphas = torch.tensor(model.alphas, dtype=torch.float32)
    generator = torch.Generator().manual_seed(config.seed)
    objectives: list[float] = []
    executed: list[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if config.warm_epochs:
            _warm_start(model, inputs, alphas, config, generator)
        n = inputs.shape[0]
        with torch.no_grad(), model.forced(True):  # the ungated model's outputs, once
            targets = torch.cat([model(inputs[i : i + 256]) for i in range(0, n, 256)])
        optimizer = torch.optim.Adam(params, lr=config.lr / 10)
        tail = max(1, config.reinforce_steps // 4)
        for step in range(config.reinforce_steps):
            idx = torch.randint(0, n, (min(config.batch_size, n),), generator=generator)
            with torch.enable_grad(), model.sampling():
                logits = model(inputs[idx])
                gates = model.last_gates()
                log_prob = torch.stack(model.state.log_probs, dim=1).sum(1)
                probs = torch.stack(model.state.probs, dim=1)
                with torch.no_grad():
                    cost = (gates * alphas).sum(1) / gates.shape[1]
                    objective = -(fidelity(logits, targets[idx], config.temperature) + cost)
                    advantage = objective - objective.mean()
                entropy = -(
                    probs * torch.log(probs + 1e-6) + (1 - probs) * torch.log(1 - probs + 1e-6)
                ).sum(1)
                loss = -(advantage * log_prob).mean() - config.entropy * entropy.mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if step >= config.reinforce_steps - tail:
                objectives.append(float(objective.mean()))
                executed.append(float(gates.mean()))
    for p in params:
        p.requires_grad_(False)
    model.eval()
    return GateTrainStats(
        steps=config.warm_epochs + config.reinforce_steps,
        final_objective=sum(objectives) / len(objectives) if objectives else float("nan"),
        final_executed=sum(executed) / len(executed) if executed else float("nan"),
        seconds=time.perf_counter() - start,
    )


@torch.no_grad()
def oracle_decisions(
    model: DynamicSkipModel,
    inputs: torch.Tensor,
    alphas: torch.Tensor,
    temperature: float,
    sweeps: int = 2,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-input run/skip decisions ``[N, K]`` from a coordinate search on the objective, and
    each gate's input features along the path those decisions take."""
    k_total = len(model.gated)
    with model.forced(True):
        full = model(inputs)
    decisions = torch.ones(len(inputs), k_total)
    current = fidelity(full, full, temperature) + (decisions * alphas).sum(1) / k_total
    for _ in range(sweeps):
        for k in range(k_total):
            flipped = decisions.clone()
            flipped[:, k] = 1 - flipped[:, k]
            with model.deciding(flipped):
                out = model(inputs)
            objective = fidelity(out, full, temperature) + (flipped * alphas).sum(1) / k_total
            better = objective < current
            decisions[better, k] = flipped[better, k]
            current = torch.where(better, objective, current)
    with model.deciding(decisions):
        model(inputs)
        features = [p.clone() for p in model.state.pooled]
    return decisions, features


def _warm_start(
    model: DynamicSkipModel,
    inputs: torch.Tensor,
    alphas: torch.Tensor,
    config: GateTrainConfig,
    generator: torch.Generator,
) -> None:
    subset = torch.randperm(len(inputs), generator=generator)[: config.warm_inputs]
    labels, features = oracle_decisions(
        model, inputs[subset], alphas, config.temperature, config.oracle_sweeps
    )
    controller = model.controller
    optimizer = torch.optim.Adam(controller.parameters(), lr=config.lr)
    n = labels.shape[0]
    for _ in range(config.warm_epochs):
        order = torch.randperm(n, generator=generator)
        for i in range(0, n, 64):
            idx = order[i : i + 64]
            state = controller.initial_state(len(idx), features[0])
            previous = torch.ones(len(idx), 1)
            logits = []
            for k, f in enumerate(features):
                logit, state = controller.step(k, f[idx], state, previous)
                logits.append(logit)
                previous = labels[idx, k : k + 1]  # teacher forcing: the oracle's own path
            loss = F.binary_cross_entropy_with_logits(
                torch.cat(logits, 1), labels[idx], pos_weight=torch.tensor(config.run_weight)
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


@torch.no_grad()
def gate_statistics(
    model: DynamicSkipModel, inputs: torch.Tensor, batch_size: int = 256
) -> dict[str, object]:
    """Executed-block statistics of the eval-mode (thresholded) controller on ``inputs``.

    Returns ``executed_share`` (mean share of gated blocks run), ``executed_blocks`` (mean count),
    ``gated_blocks`` and ``per_block`` (share of inputs that ran each gated block).
    """
    model.eval()
    chunks = []
    for i in range(0, len(inputs), batch_size):
        model(inputs[i : i + batch_size])
        chunks.append(model.last_gates())
    gates = torch.cat(chunks)
    return {
        "gated_blocks": int(gates.shape[1]),
        "executed_blocks": float(gates.sum(1).mean()),
        "executed_share": float(gates.mean()),
        "per_block": [float(v) for v in gates.mean(0)],
    }
