"""The example plugins in plugins/: installed (into a temporary folder on sys.path, so the shared
environment is left alone), then used through their ``bicycle`` entry points like any third-party plugin."""
from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import DEFAULT_SIZE_GUIDANCE, EventAccumulator

from bicycle import plugins
from bicycle.cli import main
from bicycle.testing import check_backbone, check_injector
from bicycle.testing.fixtures import one_torch_thread  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ("resnet_generator", "adain_injector", "tensorboard_logger", "template")
TINY = ["--image-size", "32", "--ngf", "8", "--nef", "8", "--ndf", "8", "--batch-size", "4", "--steps", "4",
        "--log-every", "2", "--sample-every", "2", "--checkpoint-every", "2", "--impl", "ref"]


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


def test_a_decoder_injector_with_a_backbone_without_decoder_points_is_refused_in_one_line(examples, tmp_path):
    result = CliRunner().invoke(main, ["train", "--backbone", "resnet6", "--inject", "all-film", "--steps", "2",
                                       "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and not (tmp_path / "run").exists()
    assert ("injector 'all-film' needs a backbone with decoder injection points; backbone 'resnet6' offers none "
            "(use --inject all, or a backbone among unet, unet128, unet256)") in result.output
    assert "Traceback" not in result.output


def test_the_demo_above_32_px_keeps_concatenation_for_a_backbone_without_decoder_points(examples):
    def inject(*args: str) -> str:
        result = CliRunner().invoke(main, ["train", "--dry-run", *args])
        assert result.exit_code == 0, result.output
        return json.loads(result.output[result.output.index("{"):])["net"]["inject"]

    assert inject("--backbone", "resnet6", "--image-size", "64") == "all"
    assert inject("--backbone", "unet", "--image-size", "64") == "all-film"


def tensorboard(run_dir: Path) -> EventAccumulator:
    """What TensorBoard shows of the run: every event file of RUN/tensorboard, everything kept."""
    return EventAccumulator(str(run_dir / "tensorboard"), size_guidance=dict.fromkeys(DEFAULT_SIZE_GUIDANCE, 0)).Reload()


def train(*args: str) -> None:
    result = CliRunner().invoke(main, ["train", *args])
    assert result.exit_code == 0, result.output + repr(result.exception)


def test_cli_trains_with_the_example_backbone_and_injector(examples, tmp_path, one_torch_thread):
    run_dir = tmp_path / "run"
    args = ["train", "--backbone", "resnet6", "--inject", "adain", "--steps", "2", "--image-size", "32", "--ngf", "8",
            "--nef", "8", "--ndf", "8", "--batch-size", "2", "--impl", "ref", "--run-dir", str(run_dir)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (run_dir / "samples" / "final.png").is_file()
    acc = tensorboard(run_dir)
    assert [e.step for e in acc.Scalars("train/G_L1")] == [e.step for e in acc.Scalars("train/lr")] == [2]


def test_tensorboard_curves_continue_across_a_resume_and_a_crash(examples, tmp_path, one_torch_thread):
    run = tmp_path / "run"
    train(*TINY, "--run-dir", str(run))              # steps 1-4
    train("--resume", str(run), "--steps", "8")      # 5-8
    # a crash between logging step 8 and writing its checkpoint: the run resumes at 6 and logs 7-8 again
    (run / "checkpoints" / "step_00000008.safetensors").unlink()
    resumed_at = time.time()
    train("--resume", str(run))
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 3
    acc = tensorboard(run)
    steps = [2, 4, 6, 8]
    for name in ("G_GAN", "G_L1", "kl", "z_L1", "D", "D2", "lr", "lambda_kl", "sec_per_step"):
        assert [e.step for e in acc.Scalars(f"train/{name}")] == steps, name  # one curve, each step once
    assert acc.Scalars("train/G_L1")[-1].wall_time >= resumed_at  # step 8 of the last session, not the crashed one
    assert [(e.step, e.value) for e in acc.Scalars("train/interrupted")] == [(4, 0.0), (8, 0.0)]
    for name in ("z_sensitivity", "valid_rate", "modes_per_input"):  # shapes has an oracle
        assert [e.step for e in acc.Scalars(f"sample/{name}")] == steps, name
    assert all(0 <= e.value <= 1 for e in acc.Scalars("sample/valid_rate"))
    assert all(0 <= e.value <= 6 for e in acc.Scalars("sample/modes_per_input"))
    grids = acc.Images("sample/grid")
    assert [e.step for e in grids] == steps
    png = np.asarray(Image.open(run / "samples" / "step_00000002.png").convert("RGB"))
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(grids[0].encoded_image_string)).convert("RGB")), png)


def test_each_example_passes_its_own_tests(examples):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(examples), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    env.pop(plugins.AUTOLOAD_ENV, None)
    tests = [str(ROOT / "plugins" / name / "tests") for name in EXAMPLES]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                            capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
