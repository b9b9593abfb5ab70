"""The CLI's one error map: library errors are the user's to fix (exit 2, one line), the
library never imports the CLI, and everything else keeps its traceback."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from agent.cli import EXIT_USAGE, main
from agent.cli.errors import EXIT_INTERRUPTED, CliError, exit_code, message

AGENT = Path(__file__).resolve().parents[2] / "agent"


def _library_errors() -> list[BaseException]:
    from agent.config import ConfigError
    from agent.export import CandidateChoiceError, SearchSourceError
    from agent.resume import ResumeError
    from agent.search_dir import SearchDirError
    from runners.job import EvalSpecError

    return [
        ConfigError("x"),
        ResumeError("x"),
        SearchDirError("x"),
        SearchSourceError("x"),
        CandidateChoiceError("x"),
        EvalSpecError("x"),
        CliError("x"),
    ]


@pytest.mark.parametrize("error", _library_errors(), ids=lambda e: type(e).__name__)
def test_library_errors_map_to_exit_code_2(error: BaseException) -> None:
    assert exit_code(error) == EXIT_USAGE == 2


def test_bugs_are_not_user_errors_and_ctrl_c_is_130() -> None:
    assert exit_code(RuntimeError("a bug")) is None
    assert exit_code(KeyboardInterrupt()) == EXIT_INTERRUPTED == 130


def test_a_key_error_shows_its_message_unquoted() -> None:
    assert message(KeyError("no built-in workload 'x'")) == "no built-in workload 'x'"


def test_a_library_error_raised_under_a_command_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # agent.export.load_source raises SearchDirError; only the CLI turns it into an exit code
    code = main(["export", str(tmp_path), "--format", "onnx", "--out", str(tmp_path / "x")])

    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert code == EXIT_USAGE
    assert err.startswith("error: ") and "not a search directory" in err
    assert "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_a_bug_under_a_command_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("agent.export.load_source", boom)

    with pytest.raises(RuntimeError, match="a bug"):
        main(["export", "somewhere", "--format", "onnx", "--out", "x"])


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_library_code_never_imports_the_cli() -> None:
    offenders = sorted(
        f"{path.relative_to(AGENT.parent)} imports {name}"
        for path in AGENT.rglob("*.py")
        if "cli" not in path.relative_to(AGENT).parts
        for name in _imports(path)
        if name == "agent.cli" or name.startswith("agent.cli.")
    )

    assert offenders == []


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["evaluate", "--workload", "w", "--strategy", "{}", "--threads", "99"], "CPU cores"),
        (["evaluate", "--workload", "w", "--strategy", "{}", "--threads", "0"], "must be >= 1"),
        (["profile", "--workload", "w", "--runs", "0"], "must be >= 1"),
        (["profile", "--workload", "w", "--runs", "-3"], "must be >= 1"),
        (["search", "--workload", "w", "--threads", "99"], "CPU cores"),
        (["export", "d", "--format", "onnx", "--out", "o", "--max-drop", "nan"], "--max-drop"),
        (["export", "d", "--format", "onnx", "--out", "o", "--max-drop", "-5"], "--max-drop"),
    ],
)
def test_impossible_counts_are_refused_before_anything_runs(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:  # argparse's own exit, or the CLI's exit code
        code = main(argv)
        raise SystemExit(code)

    assert exited.value.code == EXIT_USAGE
    assert fragment in " ".join(capsys.readouterr().err.split())
