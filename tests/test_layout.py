"""The package's shape: commands in bicycle/commands/, inference without training code, a small top level."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import bicycle
from bicycle.commands import COMMANDS

ROOT = Path(bicycle.__file__).parent


def test_the_top_level_is_small_and_cli_only_assembles():
    top = sorted(p.name for p in ROOT.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert len(top) <= 15, top
    assert len((ROOT / "cli.py").read_text().splitlines()) <= 100
    assert not {"misc", "utils", "core", "common"} & {p.name for p in ROOT.iterdir() if p.is_dir()}


def test_every_command_has_its_module_in_commands():
    from bicycle.cli import main
    assert set(main.commands) == set(COMMANDS)
    for name, (module, _) in COMMANDS.items():
        assert (ROOT / "commands" / f"{module}.py").is_file(), name


def test_inference_runs_without_training_code():
    code = ("import sys\n"
            "import bicycle.inference.model, bicycle.inference.sample, bicycle.inference.evaluate\n"
            "import bicycle.inference.posterior, bicycle.inference.loading\n"
            "print(sorted(m for m in sys.modules if m.startswith(('bicycle.train', 'bicycle.commands'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_loop_leaves_the_ranks_to_a_coordinator():
    import inspect

    from bicycle.train import loop
    source = inspect.getsource(loop._train)
    assert len(source.splitlines()) <= 80
    assert "group" not in source and "launched" not in source


def test_the_loop_takes_its_data_and_resolved_config_from_one_call():
    import ast

    from bicycle.train import loop
    tree = ast.parse(Path(loop.__file__).read_text())
    from_build = {a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module == "bicycle.build"
                  for a in node.names}
    assert from_build == {"prepare_run"}
