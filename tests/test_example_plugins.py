"""The example plugins in plugins/: installed (into a temporary folder on sys.path, so the shared
environment is left alone), then used through their ``bicycle`` entry points like any third-party plugin."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bicycle import plugins
from bicycle.testing import check_backbone, check_injector
from bicycle.testing.fixtures import one_torch_thread  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ("resnet_generator", "adain_injector", "tensorboard_logger", "template")


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pip-install every example plugin (no dependencies, offline when setuptools is present) into one folder."""
    target = tmp_path_factory.mktemp("example_plugins")
    offline = importlib.util.find_spec("setuptools") is not None
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check", "--target", str(target)]
    cmd += ["--no-build-isolation", "--no-index"] if offline else []
    result = subprocess.run(cmd + [str(ROOT / "plugins" / name) for name in EXAMPLES], capture_output=True, text=True)
    assert result.returncode == 0, f"installing the example plugins failed:\n{result.stdout}\n{result.stderr}"
    return target


@pytest.fixture
def examples(installed: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The installed examples visible to importlib.metadata, with third-party autoloading on."""
    monkeypatch.syspath_prepend(str(installed))
    monkeypatch.delenv(plugins.AUTOLOAD_ENV, raising=False)
    monkeypatch.delenv(plugins.BLOCK_ENV, raising=False)
    plugins.set_plugins(None)
    return installed


def test_entry_points_register_the_examples_without_clashes(examples):
    p = plugins.build_plugins()
    rows = {(kind, name): plugin for kind, name, plugin, _ in p.registry.listing()}
    assert rows[("backbone", "resnet6")] == rows[("backbone", "resnet9")] == "resnet_generator"
    assert rows[("injector", "adain")] == "adain_injector"
    assert rows[("injector", "template_add")] == "template"
    assert rows[("backbone", "unet")] == "bicycle.builtin.backbones"
    assert {"tensorboard_logger", "resnet_generator", "adain_injector", "template"} <= set(p.plugin_names())


def test_block_list_disables_one_example(examples, monkeypatch):
    monkeypatch.setenv(plugins.BLOCK_ENV, "adain_injector")
    registry = plugins.build_plugins().registry
    assert "adain" not in registry.names("injector") and "resnet6" in registry.names("backbone")


def test_examples_pass_the_kit(examples, one_torch_thread):
    reg = plugins.build_plugins().registry
    injectors = [reg.injector(n) for n in ("input", "all", "adain", "template_add")]
    check_backbone(reg.backbone("resnet6"), injectors, registry=reg).raise_for_failures()
    check_injector(reg.injector("adain"), [reg.backbone("unet"), reg.backbone("resnet6")], registry=reg).raise_for_failures()


def test_cli_trains_with_the_example_backbone_and_injector(examples, tmp_path, one_torch_thread):
    from click.testing import CliRunner

    from bicycle.cli import main
    from bicycle_tensorboard import read_events

    run_dir = tmp_path / "run"
    args = ["train", "--backbone", "resnet6", "--inject", "adain", "--steps", "2", "--image-size", "32", "--ngf", "8",
            "--nef", "8", "--ndf", "8", "--batch-size", "2", "--impl", "ref", "--run-dir", str(run_dir)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (run_dir / "samples" / "final.png").is_file()
    (events,) = (run_dir / "tensorboard").glob("events.out.tfevents.*")
    version, scalars = read_events(events)
    assert version == "brain.Event:2"
    assert {"train/G_L1", "train/lr"} <= {s.tag for s in scalars if s.step == 2}


def test_each_example_passes_its_own_tests(examples):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(examples), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    env.pop(plugins.AUTOLOAD_ENV, None)
    tests = [str(ROOT / "plugins" / name / "tests") for name in EXAMPLES]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                            capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
