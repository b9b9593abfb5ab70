"""`SearchConfig`: everything one search needs, from the CLI and/or a TOML/YAML file.

`eval_spec` turns a config into the `EvalSpec` its workers measure with (and `build_config`
into how each candidate is built); the spec is persisted in ``search.json``
(`agent.search_dir.SearchDir`), so export, report and resume read it back instead of
rebuilding it.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agent.ppo import PPOSettings
from envs.reward import RewardConfig
from runners.latency import LatencyConfig

if TYPE_CHECKING:
    from runners.build import BuildConfig
    from runners.job import EvalSpec

AGENTS = ("ppo", "random", "uniform", "tpe")
MEASURES = ("latency", "flops")
DEFAULT_FIDELITIES = ("none", "short", "full")


class ConfigError(ValueError):
    """An invalid search configuration (the message names the field)."""


@dataclass(frozen=True)
class SearchConfig:
    """One search. Every field can be set in a config file; the CLI flags override it."""

    workload: str | None = "digits-resnet"
    """Built-in workload (``layerpilot workloads``); exclusive with ``model``."""
    model: str | None = None
    """Bring-your-own ``module:function`` returning a Workload."""
    seed: int = 0
    """Built-in workload training seed."""
    agent: str = "ppo"
    """``ppo``, ``random``, ``uniform`` or ``tpe``."""
    agent_seed: int = 0
    """Seed of the agent (policy init, sampling)."""
    budget: int = 150
    """Candidates to evaluate (cache hits from an earlier search count, probes do not)."""
    actions: tuple[str, ...] | None = None
    """Actions searched (default: every registered action except the opt-in ``dynamic_skip``,
    whose candidates each train a controller)."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """The reward the agent maximises."""
    runtime: str = "onnxruntime-cpu"
    """Deployment runtime the latency is measured on."""
    threads: int = 1
    """Runtime intra-op threads per measurement."""
    batch_size: int = 1
    """Latency batch size."""
    bn_batches: int = 8
    """Calibration batches (of 64) for BatchNorm re-estimation after structural changes. 8 is
    within ~0.3 points of 16 on the built-ins at half the build time (the search builds
    hundreds of candidates)."""
    fidelities: tuple[str, ...] = DEFAULT_FIDELITIES
    """The recovery levels a candidate climbs, cheapest first (``runners.recovery``'s presets:
    ``none`` = BatchNorm re-estimation only, ``short`` = plus a 40-step distillation fine-tune,
    ``full`` = 400 steps, what ``layerpilot export`` ships). Every proposal is measured at the
    first level; the best ``1/eta`` of each level move up one (`agent.fidelity`). The last
    level is the deployed one: the search's best, front and report are read there. One level
    (e.g. ``("none",)``) is a single-fidelity search ranked by that level alone."""
    eta: int = 4
    """Promotion rate: of the candidates measured at a level, the best ``1/eta`` (by estimated
    deployed reward) are measured at the next."""
    confirm: int = 2
    """Candidates of the estimated front measured at the last level once proposals stop (on top
    of the promoted ones), so that the best and the front the search reports are measured."""
    time_budget: float | None = 1500.0
    """Wall seconds for the whole search (default 25 min, so the default main job ends within
    30 min; None: no limit, ``budget`` alone bounds it). Proposals
    stop early enough to confirm the front within it; what is in flight at the end finishes."""
    out: Path | None = None
    """Search directory (default: a new folder under ``./runs/``)."""
    cache: Path | None = None
    """Candidate cache file to share between searches (default: ``<out>/cache.jsonl``)."""
    cache_dir: Path | None = None
    """Workload (and probe table) cache root (default ``$LAYERPILOT_CACHE`` or
    ``~/.cache/layerpilot``)."""
    tracking_uri: str | None = None
    """MLflow tracking URI (default: ``sqlite:///<cwd>/mlflow.db``)."""
    experiment: str = "layerpilot"
    """MLflow experiment name."""
    executor: Literal["local", "ray"] = "local"
    """``local``: one measurement subprocess; ``ray``: one evaluator per Ray node."""
    address: str | None = None
    """Ray cluster address to join (implies ``executor = "ray"``)."""
    workers: int = 1
    """Evaluation workers per machine (per Ray node with ``executor = "ray"``). They build and
    score candidates in parallel; their timings take turns under the host's measurement lock."""
    measure: str = "latency"
    """``latency``: time every candidate on the runtime. ``flops``: latency-free: accuracy is
    measured, speed is the FLOP-ideal speedup (fast, parallel; a proxy, not a timing)."""
    timeout_s: float = 300.0
    """Per-candidate evaluation timeout (the candidate is recorded as failed)."""
    probes: bool = True
    """PPO: measure the per-(unit, choice) cost table first (cached per setup)."""
    seeds: bool = True
    """Measure the hand pipeline's uniform strategies (`agent.baselines.uniform_seeds`) before
    the agent's first proposal; they count against ``budget`` and take at most half of it."""
    """PPO: measure the per-(unit, choice) cost table first (cached per setup)."""
    log_model: bool = True
    """Log the best candidate's model to MLflow at the end."""
    ppo: PPOSettings = field(default_factory=PPOSettings)
    """PPO and surrogate-loop settings."""
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    """The timing protocol (``[latency]``: warm-up, rounds, stability rule); ``batch_size``
    above sets its batch size."""

    def __post_init__(self) -> None:
        if (self.workload is None) == (self.model is None):
            raise ConfigError("give exactly one of workload or model")
        if self.agent not in AGENTS:
            raise ConfigError(f"unknown agent {self.agent!r}; choose one of {', '.join(AGENTS)}")
        if self.actions is not None:
            from search_spaces.actions import ACTIONS

            unknown = sorted(set(self.actions) - set(ACTIONS))
            if unknown or not self.actions:
                known = ", ".join(sorted(ACTIONS))
                raise ConfigError(f"actions: unknown {unknown or 'empty list'}; known: {known}")
        from runners.recovery import RECOVERY_PRESETS

        levels = self.fidelities
        unknown_levels = [f for f in levels if f not in RECOVERY_PRESETS]
        if not levels or unknown_levels:
            raise ConfigError(
                f"fidelities: unknown level(s) {unknown_levels or 'empty list'}; choose from "
                f"{', '.join(RECOVERY_PRESETS)}, cheapest first"
            )
        steps = [RECOVERY_PRESETS[f].steps for f in levels]
        if steps != sorted(set(steps)):
            raise ConfigError(
                f"fidelities must be distinct and cheapest first, got {', '.join(levels)}"
            )
        if self.eta < 2:
            raise ConfigError(f"eta must be >= 2, got {self.eta}")
        if self.confirm < 0:
            raise ConfigError(f"confirm must be >= 0, got {self.confirm}")
        if self.time_budget is not None and not (
            math.isfinite(self.time_budget) and self.time_budget > 0
        ):
            raise ConfigError(f"time_budget must be > 0 seconds, got {self.time_budget}")
        if self.budget < 1:
            raise ConfigError(f"budget must be >= 1 candidate, got {self.budget}")
        if self.threads < 1 or self.batch_size < 1 or self.bn_batches < 0:
            raise ConfigError("threads and batch_size must be >= 1, bn_batches >= 0")
        if not self.timeout_s > 0:
            raise ConfigError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.measure not in MEASURES:
            raise ConfigError(f"measure must be one of {', '.join(MEASURES)}, got {self.measure!r}")
        if self.executor not in ("local", "ray"):
            raise ConfigError(f"executor must be 'local' or 'ray', got {self.executor!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("out", "cache", "cache_dir"):
            data[key] = None if data[key] is None else str(data[key])
        data["ppo"]["hidden"] = list(self.ppo.hidden)
        data["actions"] = None if self.actions is None else list(self.actions)
        data["fidelities"] = list(self.fidelities)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def with_overrides(self, **changes: Any) -> SearchConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def config_from_dict(data: dict[str, Any]) -> SearchConfig:
    """A `SearchConfig` from a (file's) mapping: ``[reward]``, ``[latency]`` and ``[ppo]`` are
    sub-tables. Every value is checked against its field's type (`runners.serde.from_json`), and
    an error names the field: ``[reward].lam: expected a number, got 'x'``.

    Raises:
        ConfigError: An unknown key, a value of the wrong type, or one the config rejects.
    """
    from runners.serde import ConfigFormatError, from_json

    data = dict(data)
    for key in ("actions", "fidelities"):  # "a,b" as well as ["a", "b"]
        if isinstance(data.get(key), str):
            data[key] = [a.strip() for a in data[key].split(",") if a.strip()]
    if "recovery" in data:  # a config (or search.json) from before fidelities: one level
        recovery = data.pop("recovery")
        data.setdefault("fidelities", [recovery])
    try:
        return from_json(SearchConfig, data)
    except ConfigFormatError as exc:
        head, _, rest = exc.path.partition(".")
        if head in ("reward", "latency", "ppo"):
            where = f"[{head}].{rest}" if rest else f"[{head}]"
        else:
            where = "search config" if exc.path == "SearchConfig" else exc.path
        raise ConfigError(f"{where}: {exc.problem}") from None


def load_config(path: Path) -> SearchConfig:
    """Read a ``.toml``, ``.yaml``/``.yml`` or ``.json`` search config file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file {path}: use .toml, .yaml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid: {exc}") from None
    except Exception as exc:  # yaml.YAMLError without importing yaml at module level
        if type(exc).__module__.startswith("yaml"):
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        raise
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a table/mapping at the top level")
    return config_from_dict(data)


def build_config(config: SearchConfig) -> BuildConfig:
    """How the search builds each candidate at its first fidelity (BatchNorm re-estimation,
    recovery level); `runners.job.EvalSpec.at` moves it to the others."""
    from runners.build import BuildConfig
    from runners.recovery import recovery_preset

    first = recovery_preset(config.fidelities[0])
    return BuildConfig(bn_batches=config.bn_batches, recovery=first)


def eval_spec(config: SearchConfig) -> EvalSpec:
    """The `EvalSpec` a search with ``config`` measures its candidates with.

    Example:
        >>> eval_spec(SearchConfig(threads=2)).eval.threads
        2
    """
    from envs.workloads import pin_model_spec
    from runners.evaluate import EvalConfig
    from runners.job import EvalSpec

    model, digest = (None, None) if config.model is None else pin_model_spec(config.model)
    return EvalSpec(
        workload=config.workload,
        model=model,
        model_sha256=digest,
        seed=config.seed,
        cache_dir=config.cache_dir,
        eval=EvalConfig(
            runtime=config.runtime,
            threads=config.threads,
            latency=replace(config.latency, batch_size=config.batch_size),
            build=build_config(config),
            time_latency=config.measure == "latency",
        ),
    )
