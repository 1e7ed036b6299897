"""The README opens with exactly two commands, and CI runs the second one."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text(), re.S)


def test_readme_opens_with_install_and_train_then_install_and_test():
    train, test = readme_commands()[:2]
    assert train.endswith("&& bicycle train") and train.startswith("pip install")
    assert test.startswith("pip install") and "[test]" in test and test.endswith("&& pytest")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci
