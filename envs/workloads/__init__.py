"""Workloads: a trained model plus the data and metric it is judged by.

Built-ins are trained on first use and cached (:mod:`envs.workloads.cache`); bring-your-own
workloads are loaded from a ``module:function`` spec.

Example:
    >>> from envs.workloads import list_workloads
    >>> list_workloads()
    ['digits-resnet', 'mnist1d-cnn', 'mnist1d-transformer']
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from envs.workloads import digits, mnist1d
from envs.workloads.base import DataSplit, Metric, Workload, accuracy
from envs.workloads.cache import BuiltinWorkload, WorkloadCacheError, load_or_train

__all__ = [
    "BUILTINS",
    "BuiltinWorkload",
    "DataSplit",
    "Metric",
    "UnknownWorkloadError",
    "Workload",
    "WorkloadCacheError",
    "WorkloadSpecError",
    "accuracy",
    "get_workload",
    "list_workloads",
    "load_workload_spec",
]

BUILTINS: dict[str, BuiltinWorkload] = {
    recipe.name: recipe for recipe in (digits.WORKLOAD, mnist1d.CNN, mnist1d.TRANSFORMER)
}
"""The built-in workloads by name (a constant table; nothing registers at run time)."""


class UnknownWorkloadError(KeyError):
    """No built-in workload has the requested name."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


class WorkloadSpecError(ValueError):
    """A bring-your-own ``module:function`` spec cannot be loaded or does not give a Workload."""


def list_workloads() -> list[str]:
    """Names of the built-in workloads, sorted."""
    return sorted(BUILTINS)


def get_workload(
    name: str,
    *,
    seed: int = 0,
    cache_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> Workload:
    """A built-in workload, trained on first use and cached on disk afterwards.

    Args:
        name: One of :func:`list_workloads`.
        seed: Training seed; each seed is trained and cached separately.
        cache_dir: Cache root; default ``$LAYERPILOT_CACHE`` or ``~/.cache/layerpilot``.
        progress: Receives human-readable status lines (e.g. training epochs).

    Returns:
        The workload; ``info`` holds ``baseline_accuracy_torch``, ``train_seconds``,
        ``cache_key``, ``train_samples`` and ``eval_samples`` among others.

    Raises:
        UnknownWorkloadError: ``name`` is not a built-in workload.
        WorkloadCacheError: The cache directory is not usable.
    """
    recipe = BUILTINS.get(name)
    if recipe is None:
        raise UnknownWorkloadError(
            f"no built-in workload {name!r}; known workloads: {', '.join(list_workloads())} "
            "(or bring your own with --model module:function)"
        )
    return load_or_train(recipe, seed=seed, cache_dir=cache_dir, progress=progress)


def load_workload_spec(spec: str) -> Workload:
    """Call a bring-your-own ``"module.path:function"`` or ``"path/to/file.py:function"``.

    The function takes no arguments and returns a :class:`Workload`. A ``.py`` path is imported
    as a standalone module (relative to the current directory); a dotted path is imported
    normally, so the package must be importable (installed or on ``PYTHONPATH``).

    Example:
        >>> wl = load_workload_spec("examples/byo_model.py:build")  # doctest: +SKIP
        >>> wl.name
        'byo-digits-cnn'

    Raises:
        WorkloadSpecError: The spec is malformed, the module or function cannot be found, the
            function needs arguments, it returns something other than a ``Workload``, or
            importing the module or calling the function raised (the message names the
            exception and the line of the user's code it came from; the original is chained).
    """
    target, sep, func_name = spec.rpartition(":")
    if not sep or not target or not func_name.isidentifier():
        raise WorkloadSpecError(
            f"malformed workload spec {spec!r}: expected 'module.path:function' or "
            "'path/to/file.py:function', e.g. 'examples/byo_model.py:build'"
        )
    try:
        module = _import_target(target, spec)
    except WorkloadSpecError:
        raise
    except Exception as exc:
        raise WorkloadSpecError(
            f"importing {target!r} (spec {spec!r}) raised {_where(exc)}"
        ) from exc
    func = getattr(module, func_name, None)
    if func is None:
        defined = sorted(
            n
            for n, v in vars(module).items()
            if callable(v)
            and not n.startswith("_")
            and getattr(v, "__module__", None) == module.__name__
        )
        raise WorkloadSpecError(
            f"{target!r} has no attribute {func_name!r} (spec {spec!r}); "
            f"functions and classes it defines: {', '.join(defined) or 'none'}"
        )
    if not callable(func):
        raise WorkloadSpecError(f"{spec!r}: {func_name!r} is a {type(func).__name__}, not callable")
    try:
        inspect.signature(func).bind()
    except TypeError as exc:
        raise WorkloadSpecError(
            f"{spec!r} cannot be called with no arguments ({exc}); the function must take no "
            "arguments and return a Workload"
        ) from exc
    except ValueError:  # no introspectable signature (some builtins): just call it
        pass
    try:
        result = func()
    except Exception as exc:
        raise WorkloadSpecError(f"{spec!r} raised {_where(exc)}") from exc
    if not isinstance(result, Workload):
        raise WorkloadSpecError(
            f"{spec!r} returned {type(result).__name__}, not a Workload; build one with "
            "envs.workloads.Workload(name, model, example_input, train, eval)"
        )
    return result


def _where(exc: BaseException) -> str:
    """``TypeName: message (file.py:line)``: the exception and the deepest frame it came from."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    place = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{place}"


def model_file(spec: str) -> Path | None:
    """The ``.py`` file a ``path/to/file.py:function`` spec imports (None for a dotted module)."""
    target = spec.rpartition(":")[0]
    if Path(target).suffix == ".py" or "/" in target or "\\" in target:
        return Path(target)
    return None


def pin_model_spec(spec: str) -> tuple[str, str | None]:
    """``(spec with an absolute file path, sha256 of the file)`` for a file spec; a dotted
    module spec is returned as it is, with no digest (it is trusted as installed code)."""
    path = model_file(spec)
    if path is None or not path.is_file():
        return spec, None
    absolute = path.resolve()
    return f"{absolute}:{spec.rpartition(':')[2]}", file_digest(absolute)


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, hex."""
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _import_target(target: str, spec: str) -> ModuleType:
    path = Path(target)
    if path.suffix == ".py" or "/" in target or "\\" in target:
        if not path.is_file():
            raise WorkloadSpecError(
                f"workload file {str(path)!r} does not exist (spec {spec!r}); paths are "
                f"relative to the current directory {Path.cwd()}"
            )
        module_name = f"layerpilot_byo_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        if module_spec is None or module_spec.loader is None:
            raise WorkloadSpecError(f"cannot import {str(path)!r} as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        # Registered so that dataclasses and pickling inside the file can resolve the module.
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(module_name, None)
            raise
        return module
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (target == exc.name or target.startswith(exc.name + ".")):
            raise WorkloadSpecError(
                f"cannot import {target!r} (spec {spec!r}): no module named {exc.name!r}; "
                "install its package or add it to PYTHONPATH, or give a file path like "
                "'path/to/file.py:function'"
            ) from exc
        raise WorkloadSpecError(
            f"importing {target!r} failed: it needs the module {exc.name!r}, which is not installed"
        ) from exc
