"""Built-in workloads are trained once, on first use, and their weights cached on disk.

A built-in is a recipe (:class:`BuiltinWorkload`): model constructor, data loader and training
config. :func:`load_or_train` turns it into a :class:`~envs.workloads.base.Workload`. Only the
weights and a few training metrics are cached; the data is regenerated on every load (it is
small and deterministic).

The cache file is ``<cache dir>/workloads/<name>-<key>.pt``. The key hashes the source of the
module that defines the workload, the shared training loop, the seed and torch's major.minor
version, so editing a model, its data or its training config retrains instead of loading stale
weights. Files are written atomically and training holds an exclusive lock, so concurrent
processes (parallel tests, Ray workers) train each workload at most once. Files are read with
``torch.load(weights_only=True)``: a cache file can never run code.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch
from torch import nn

from envs.workloads.base import DataSplit, Workload
from envs.workloads.inputs import detach
from envs.workloads.training import TrainConfig, TrainMetrics, train_classifier

CACHE_ENV = "LAYERPILOT_CACHE"
"""Environment variable naming the cache directory (default ``~/.cache/layerpilot``)."""
FORMAT_VERSION = 1
"""Version of the cache file layout; part of the key."""
_TRAINING_MODULE = "envs.workloads.training"


@dataclass(frozen=True)
class BuiltinWorkload:
    """How to make a built-in workload from scratch: everything its cache key depends on."""

    name: str
    """Registry name, e.g. ``digits-resnet``."""
    description: str
    """One line for ``layerpilot workloads``."""
    make_model: Callable[[], nn.Module]
    """Builds the untrained model (called under a seeded RNG)."""
    load_data: Callable[[], tuple[DataSplit, DataSplit]]
    """Returns ``(train, eval)``; must be deterministic and must not depend on the seed."""
    train_config: TrainConfig
    """Optimiser, schedule and augmentation."""
    source_module: str
    """Dotted name of the module defining the recipe; its source text is hashed into the key."""


class WorkloadCacheError(RuntimeError):
    """The workload cache directory cannot be used (e.g. it is not writable)."""


def default_cache_dir() -> Path:
    """``$LAYERPILOT_CACHE`` if set, else ``~/.cache/layerpilot`` (read at call time)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "layerpilot"


def _source_bytes(module_name: str) -> bytes:
    module = importlib.import_module(module_name)
    if module.__file__ is None:
        raise WorkloadCacheError(f"cannot hash {module_name!r} for the cache key: it has no file")
    return Path(module.__file__).read_bytes()


def cache_key(recipe: BuiltinWorkload, seed: int) -> str:
    """Short sha256 of the recipe's module source, the training loop, the seed and torch x.y.

    Example:
        >>> from envs.workloads.digits import WORKLOAD
        >>> len(cache_key(WORKLOAD, seed=0))
        12
    """
    torch_version = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    digest = hashlib.sha256()
    for part in (
        _source_bytes(recipe.source_module),
        _source_bytes(_TRAINING_MODULE),
        f"name={recipe.name};seed={seed};torch={torch_version};format={FORMAT_VERSION}".encode(),
    ):
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:12]


def cache_path(recipe: BuiltinWorkload, seed: int, cache_dir: Path | None = None) -> Path:
    """Where the weights of ``recipe`` trained with ``seed`` are (or will be) cached."""
    return _path(recipe, cache_key(recipe, seed), cache_dir)


def _path(recipe: BuiltinWorkload, key: str, cache_dir: Path | None) -> Path:
    root = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    return root / "workloads" / f"{recipe.name}-{key}.pt"


def load_or_train(
    recipe: BuiltinWorkload,
    *,
    seed: int = 0,
    cache_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> Workload:
    """Load ``recipe``'s trained weights from the cache, training and caching them if absent.

    Args:
        recipe: The built-in workload to materialise.
        seed: Training seed (initialisation, shuffling, augmentation); part of the cache key.
        cache_dir: Cache root; ``None`` uses :func:`default_cache_dir`.
        progress: Receives human-readable status lines (training epochs, cache hits).

    Returns:
        The workload with its trained model in eval mode. ``info`` holds
        ``baseline_accuracy_torch`` (eval accuracy measured right after training),
        ``train_seconds``, ``epochs``, ``seed``, ``cache_key``, ``cache_path``,
        ``trained_now``, ``train_samples``, ``eval_samples`` and ``params``.

    Raises:
        WorkloadCacheError: The cache directory cannot be created or written.
    """
    say = progress or (lambda _msg: None)
    key = cache_key(recipe, seed)
    path = _path(recipe, key, cache_dir)
    train, eval = recipe.load_data()

    loaded = _read(recipe, path, say)
    if loaded is None:
        model, metrics, trained_now = _train_and_cache(recipe, seed, path, train, eval, progress)
    else:
        (model, metrics), trained_now = loaded, False

    return Workload(
        name=recipe.name,
        model=model.eval(),
        example_input=detach(eval.head(1).inputs),
        train=train,
        eval=eval,
        description=recipe.description,
        info={
            "baseline_accuracy_torch": metrics.eval_accuracy,
            "train_seconds": metrics.train_seconds,
            "epochs": metrics.epochs,
            "seed": seed,
            "cache_key": key,
            "cache_path": str(path),
            "trained_now": trained_now,
            "train_samples": len(train),
            "eval_samples": len(eval),
            "params": sum(p.numel() for p in model.parameters()),
        },
    )


def _train_and_cache(
    recipe: BuiltinWorkload,
    seed: int,
    path: Path,
    train: DataSplit,
    eval: DataSplit,
    progress: Callable[[str], None] | None,
) -> tuple[nn.Module, TrainMetrics, bool]:
    """Train and cache under the lock; ``(model, metrics, trained_now)``."""
    say = progress or (lambda _msg: None)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_file = open(path.with_suffix(".lock"), "a+b")  # noqa: SIM115 (closed by `with`)
    except OSError as exc:
        raise WorkloadCacheError(
            f"cannot use the workload cache directory {path.parent} ({exc}); "
            f"set {CACHE_ENV} or pass cache_dir to a writable directory"
        ) from exc
    with lock_file, _exclusive_lock(lock_file):
        # Another process may have trained it while we waited for the lock.
        loaded = _read(recipe, path, say)
        if loaded is not None:
            return (*loaded, False)
        say(f"training {recipe.name} (seed {seed}); it is cached at {path} afterwards")
        model, metrics = train_classifier(
            recipe.make_model,
            train,
            eval,
            recipe.train_config,
            seed=seed,
            progress=progress,
            label=recipe.name,
        )
        _write_atomic(path, model, metrics)
        say(
            f"trained {recipe.name} in {metrics.train_seconds:.0f} s, "
            f"eval accuracy {metrics.eval_accuracy:.2f} %"
        )
        return model, metrics, True


def _read(
    recipe: BuiltinWorkload, path: Path, say: Callable[[str], None]
) -> tuple[nn.Module, TrainMetrics] | None:
    """The cached model and metrics, or ``None`` if absent or unusable (then it is retrained)."""
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        metrics = TrainMetrics.from_dict(payload["metrics"])
        # Constructing the model draws initial weights; keep that off the global RNG.
        with torch.random.fork_rng(devices=[]):
            model = recipe.make_model()
        model.load_state_dict(payload["state_dict"], strict=True)
    except Exception as exc:  # any unreadable or mismatched file is rebuilt, not fatal
        say(f"ignoring unusable cache file {path} ({type(exc).__name__}: {exc!s:.120}); retraining")
        return None
    say(f"loaded {recipe.name} from {path}")
    return model.eval(), metrics


def _write_atomic(path: Path, model: nn.Module, metrics: TrainMetrics) -> None:
    payload = {"state_dict": model.state_dict(), "metrics": metrics.to_dict()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a shared cache must stay readable
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _exclusive_lock(handle: IO[bytes]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the open file ``handle`` (a no-op without ``fcntl``)."""
    try:
        import fcntl
    except ImportError:  # Windows: no cross-process lock; the atomic write still keeps files whole
        yield
        return
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
