"""Repository contracts: CI runs the README's test command; generated files stay out of git."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_opens_with_two_commands():
    cmds = readme_commands()
    assert len(cmds) == 2
    assert cmds[0].endswith("dvc repro")
    assert "'.[dev]'" in cmds[1] and cmds[1].endswith("pytest")
    before = (REPO / "README.md").read_text().split("```bash", 1)[0]
    assert before.count("\n") < 8, "the two commands come first"


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci


def test_outputs_are_ignored_by_git():
    ignored = (REPO / ".gitignore").read_text()
    for entry in ("/mlflow.db", "/mlartifacts/", ".venv/", "/site/"):
        assert entry in ignored
