"""The README's two commands: CI runs exactly the README's test command."""

from __future__ import annotations

import re

from conftest import REPO


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)


def test_ci_runs_exactly_the_readme_test_command():
    test_command = readme_commands()[1]
    assert "pytest" in test_command
    ci_lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci_lines[-1] == test_command


def test_readme_main_command_trains_then_generates_on_the_default():
    main = readme_commands()[0]
    assert "pip install -e ." in main and "experiments/train.py" in main and "experiments/generate.py" in main
