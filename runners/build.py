"""Strategy -> candidate: the one place a model is transformed for evaluation or export."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

from torch import nn

from envs.workloads.base import Workload
from runners.base import Candidate
from runners.recovery import RecoveryConfig, distill, reestimate_batchnorm
from search_spaces import (
    Plan,
    Strategy,
    UnitTable,
    apply_plan,
    canonicalize,
    discover_units,
    resolve,
)
from search_spaces.actions import after_build, calibration_context, plan_is_structural
from search_spaces.actions.dynamic_skip.training import GateTrainConfig


@dataclass(frozen=True)
class BuildConfig:
    """How a candidate is built from a strategy."""

    bn_batches: int = 16
    """Calibration batches used to re-estimate BatchNorm statistics after a structural change
    (0 disables it; the unchanged strategy never triggers it)."""
    bn_batch_size: int = 64
    """Batch size of those batches."""
    calibration_samples: int = 128
    """Train-split samples handed to the runtime for int8 calibration."""
    gates: GateTrainConfig = field(default_factory=GateTrainConfig)
    """How a dynamic-skip controller is trained (only candidates that gate a block)."""
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    """Distillation fine-tune from the original model after a structural change (default: none;
    see ``runners.recovery.RECOVERY_PRESETS``)."""

    def scope(self) -> dict[str, object]:
        """This config as a cache-key dict (no ``recovery`` entry while recovery is off, so caches
        measured before recovery existed stay valid)."""
        data = asdict(self)
        if not self.recovery.enabled:
            del data["recovery"]
        return data

    def __post_init__(self) -> None:
        if self.bn_batches < 0 or self.bn_batch_size < 1 or self.calibration_samples < 1:
            raise ValueError(
                "BuildConfig: bn_batches must be >= 0, bn_batch_size and calibration_samples >= 1"
            )


@dataclass
class Subject:
    """A workload prepared for optimisation: canonical model plus its decision units.

    Preparing (canonicalise + discover units) takes about a second, so it is done once per
    workload and shared by every candidate built from it.
    """

    workload: Workload
    model: nn.Module
    """Canonicalised copy of the workload's model (the original is never modified)."""
    units: UnitTable
    _plans: dict[str, Plan] = field(default_factory=dict)

    @classmethod
    def prepare(cls, workload: Workload) -> Subject:
        model = canonicalize(copy.deepcopy(workload.model)).eval()
        return cls(workload, model, discover_units(model, workload.example_input))

    def resolve(self, strategy: Strategy) -> Plan:
        """Validate ``strategy`` against this model's units (errors name unit and rule)."""
        key = strategy.key()
        if key not in self._plans:
            self._plans[key] = resolve(strategy, self.units)
        return self._plans[key]


def build_candidate(
    subject: Subject, strategy: Strategy, config: BuildConfig | None = None
) -> Candidate:
    """Apply ``strategy`` to a copy of the subject's model and return the live candidate.

    The steps, in order: apply the plan; if any action is structural, re-estimate BatchNorm
    (inside the actions' calibration context: a gated model runs every block); the actions'
    after-build step (a dynamic-skip controller is trained); the recovery fine-tune, if on and
    the plan is structural.
    """
    config = config or BuildConfig()
    plan = subject.resolve(strategy)
    model, precisions = apply_plan(
        subject.model, subject.units, plan, subject.workload.example_input
    )
    structural = plan_is_structural(plan)
    if structural and config.bn_batches:
        with calibration_context(model):
            reestimate_batchnorm(
                model,
                subject.workload.train.inputs,
                batch_size=config.bn_batch_size,
                max_batches=config.bn_batches,
            )
    recover = structural and config.recovery.enabled
    train = subject.workload.train
    notes: dict[str, object] = dict(after_build(model, train.inputs, config, recover))
    if recover:
        stats = distill(model, subject.model, train, config.recovery, subject.workload.loss)
        notes["recovery"] = asdict(stats)
    calibration = train.head(config.calibration_samples).inputs
    return Candidate(
        model=model,
        example_input=subject.workload.example_input,
        precisions=precisions,
        calibration=calibration if precisions else None,
        notes=notes,
    )
