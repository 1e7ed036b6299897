"""The command line as a user runs it (tiny sizes)."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from PIL import Image

from bicycle.cli import main
from bicycle.errors import CheckpointError, DataError, OpUnavailableError

TINY = ["--image-size", "32", "--ngf", "8", "--nef", "8", "--ndf", "8", "--batch-size", "4", "--steps", "4",
        "--log-every", "2", "--sample-every", "2", "--checkpoint-every", "2", "--impl", "ref"]


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from bicycle import plugins
    plugins.set_plugins(None)
    run = tmp_path_factory.mktemp("cli") / "run"
    result = CliRunner().invoke(main, ["train", *TINY, "--run-dir", str(run)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return run, result.output


def test_train_says_its_preset_first_and_ends_with_the_oracle_report(run_dir):
    run, output = run_dir
    lines = output.splitlines()
    assert lines[0].startswith("bicycle train: preset demo")
    assert "oracle: valid rate" in output and "samples:" in output
    assert (run / "samples" / "final.png").is_file()


def test_the_final_report_shows_the_prior_and_the_default_sampler(run_dir):
    run, output = run_dir
    reports = [line for line in output.splitlines() if line.startswith("oracle: valid rate")]
    assert len(reports) == 2 and reports[0].endswith("(z from the prior)")
    assert reports[1].endswith("(z from the aggregate posterior, the default sampler)")
    assert output.index("posterior: the aggregate posterior") < output.index(reports[1])
    summary = json.loads((run / "summary.json").read_text())
    assert 0 <= summary["valid_rate"] <= 1 and 0 <= summary["auto"]["valid_rate"] <= 1
    assert summary["auto"]["final_grid"].endswith("final_auto.png") and (run / "samples" / "final_auto.png").is_file()


def test_dry_run_prints_the_resolved_config():
    result = invoke("train", "--dry-run", "--backbone", "unet256")
    assert result.exit_code == 0
    cfg = json.loads(result.output[result.output.index("{"):])
    assert cfg["net"]["image_size"] == 256 and cfg["net"]["backbone"] == "unet256"
    result = invoke("train", "--dry-run", "--backbone", "unet256", "--image-size", "512")
    assert json.loads(result.output[result.output.index("{"):])["net"]["image_size"] == 512
    paper = invoke("train", "--dry-run", "--preset", "paper")
    assert paper.output.splitlines()[0].startswith("bicycle train: preset paper")
    cfg = json.loads(paper.output[paper.output.index("{"):])
    assert (cfg["net"]["backbone"], cfg["net"]["inject"], cfg["net"]["image_size"], cfg["train"]["batch_size"]) == ("unet256", "all", 256, 2)
    assert (cfg["optim"]["lr"], cfg["loss"]["l1"], cfg["loss"]["kl"], cfg["loss"]["z"]) == (2e-4, 10.0, 0.01, 0.5)


def test_gan_weights_and_the_lr_decay_start_have_flags():
    out = invoke("train", "--dry-run", "--lambda-gan", "0.5", "--lambda-gan2", "0.25", "--decay-start", "0.8").output
    cfg = json.loads(out[out.index("{"):])
    assert (cfg["loss"]["gan"], cfg["loss"]["gan2"], cfg["optim"]["decay_start"]) == (0.5, 0.25, 0.8)


@pytest.mark.parametrize("args,message", [
    (["--backbone", "unet25"], "unknown backbone 'unet25' (did you mean 'unet256'?)"),
    (["--inject", "everywhere"], "unknown injector 'everywhere'"),
    (["--image-size", "40"], "multiple of 16, got 40"),
    (["--image-size", "16"], "too small"),
    (["--data", "no_such_dataset"], "unknown dataset 'no_such_dataset'"),
    (["--data", "./missing/folder"], "does not exist"),
    (["--batch-size", "3"], "must be even"),
    (["--keep-checkpoints", "0"], "train.keep_checkpoints must be at least 1, got 0"),
])
def test_usage_errors_are_one_clear_line_and_exit_2(args, message):
    result = CliRunner().invoke(main, ["train", "--dry-run", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_keep_checkpoints_keeps_that_many_of_the_newest(tmp_path):
    run = tmp_path / "run"
    flags = list(TINY)
    flags[flags.index("--steps") + 1] = "6"
    flags[flags.index("--checkpoint-every") + 1] = "1"
    result = invoke("train", *flags, "--keep-checkpoints", "5", "--run-dir", str(run))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*.safetensors")) == [
        f"step_{s:08d}.safetensors" for s in range(2, 7)]


def test_a_bad_folder_fails_before_training(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "broken.png").write_bytes(b"not a png")
    result = CliRunner().invoke(main, ["train", *TINY, "--data", str(tmp_path), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == DataError.exit_code
    assert "broken.png" in result.output
    assert not (tmp_path / "run").exists()


def test_an_existing_run_is_not_overwritten(run_dir):
    run, _ = run_dir
    result = CliRunner().invoke(main, ["train", *TINY, "--run-dir", str(run)])
    assert result.exit_code == 2 and "--resume" in result.output


def test_resume_continues_and_refuses_other_changes(run_dir, tmp_path):
    run, _ = run_dir
    bad = CliRunner().invoke(main, ["train", "--resume", str(run), "--nz", "4"])
    assert bad.exit_code == 2 and "net.nz" in bad.output
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    ok = invoke("train", "--resume", str(copy), "--steps", "6")
    assert ok.exit_code == 0, ok.output
    assert (copy / "checkpoints" / "latest").read_text().strip() == "step_00000006.safetensors"


def test_sample_from_the_dataset_and_from_images_without_ground_truth(run_dir, tmp_path):
    run, _ = run_dir
    out = tmp_path / "out"
    result = invoke("sample", "--checkpoint", str(run), "--data", "shapes", "--samples", "3", "--inputs", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    grid = Image.open(out / "grid.png")
    assert grid.size == (6 * 34 + 2, 2 * 34 + 2)  # input, truth, encoded, 3 samples; 2 rows
    assert len(list(out.glob("input_*/sample_*.png"))) == 6
    assert "oracle: valid rate" in result.output
    images = tmp_path / "edges"
    images.mkdir()
    for i in range(2):
        Image.new("L", (50, 40), color=40 * i).save(images / f"e{i}.png")
    out2 = tmp_path / "out2"
    result = invoke("sample", "--checkpoint", str(run / "checkpoints" / "step_00000004.safetensors"),
                    "--input", str(images), "--samples", "2", "--out", str(out2))
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(out2).as_posix() for p in out2.rglob("*.png")) == [
        "e0/sample_00.png", "e0/sample_01.png", "e1/sample_00.png", "e1/sample_01.png", "grid.png"]


def test_sample_with_a_bad_checkpoint_is_one_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["sample", "--checkpoint", str(tmp_path / "x.safetensors"), "--data", "shapes",
                                       "--out", str(tmp_path / "o")])
    assert result.exit_code == CheckpointError.exit_code and "x.safetensors does not exist" in result.output


def test_plugins_and_env_list_components():
    out = invoke("plugins").output
    for name in ("unet", "unet128", "unet256", "input", "all", "shapes", "aligned"):
        assert f"  {name} " in out
    env = invoke("env").output
    assert "torch" in env and "device:" in env and "plugins:" in env


def test_eval_writes_every_measure_and_its_protocol(run_dir, tmp_path):
    run, _ = run_dir
    out = tmp_path / "eval.json"
    result = invoke("eval", "--checkpoint", str(run), "--inputs", "3", "--samples", "4", "--json", str(out))
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    for key in ("valid_rate", "modes_per_input", "ideal_modes_per_input", "mode_jsd", "encoded_mode_rate",
                "diversity_pixel_l1", "encoded_recon_l1", "z_sensitivity"):
        assert key in data and data[key] is not None, key
    assert data["protocol"]["inputs"] == 3 and data["protocol"]["samples"] == 4
    assert 0 <= data["valid_rate"] <= 1 and 0 <= data["mode_jsd"] <= 1
    assert 0 <= data["prior_coverage"] <= 1
    rates = [data["valid_rate_covered"], data["valid_rate_uncovered"]]
    assert any(r is not None for r in rates) and all(r is None or 0 <= r <= 1 for r in rates)


def test_prior_coverage_only_for_models_that_train_a_posterior(run_dir):
    from bicycle.inference.evaluate import evaluate
    from bicycle.models import MODELS
    from bicycle.plugins import get_plugins
    from bicycle.build import build_eval_dataset
    from bicycle.inference.loading import load_model

    assert sorted(k for k, m in MODELS.items() if m.variational) == ["bicycle", "cvae-gan"]  # KL-trained encoders
    ckpt, nets, dev = load_model(run_dir[0], "cpu")
    ds = build_eval_dataset(ckpt.config, get_plugins().registry)
    result = evaluate(nets, ds, ckpt.config.net.nz, 2, 3, 0, dev, variational=False)  # as for cae-gan / clr-gan
    assert result["prior_coverage"] is None and result["valid_rate_covered"] is None
    assert result["valid_rate"] is not None


def test_the_same_command_on_a_pix2pix_folder_of_ones_own_images(tmp_path):
    from data_helpers import make_aligned_dataset

    root = make_aligned_dataset(tmp_path / "pairs", n_train=6, n_val=2, size=40)
    run = tmp_path / "run"
    result = invoke("train", *TINY, "--data", str(root), "--load-size", "36", "--run-dir", str(run))
    assert result.exit_code == 0, result.output
    assert "checking" in result.output and (run / "samples" / "final.png").is_file()  # start-up scan, then a grid
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["data"] == str(root) and cfg["net"]["in_channels"] == 3
    assert "oracle" not in result.output  # folders have no oracle
    out = tmp_path / "out"
    result = invoke("sample", "--checkpoint", str(run), "--data", str(root), "--samples", "2", "--inputs", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert (out / "grid.png").is_file()


@pytest.mark.parametrize("dry_run", [True, False])
def test_an_impl_that_cannot_run_here_fails_at_config_resolution_in_one_line(tmp_path, monkeypatch, dry_run):
    import bicycle.train.loop as loop
    from bicycle import ops

    monkeypatch.setattr(ops, "_ext", lambda: (None, "the C++ extension bicycle._C is not available (No module)"))
    steps = []
    monkeypatch.setattr(loop, "build_state", lambda *a, **k: steps.append("built") or pytest.fail("got past resolution"))
    args = ["train", "--impl", "cpp", "--device", "cpu", "--steps", "2", "--run-dir", str(tmp_path / "run")]
    r = CliRunner().invoke(main, args + (["--dry-run"] if dry_run else []))
    assert r.exit_code == OpUnavailableError.exit_code, r.output
    assert "Traceback" not in r.output and not steps
    lines = r.output.strip().splitlines()
    assert lines[-1] == ("Error: --impl cpp: unavailable on cpu tensors: the C++ extension bicycle._C is not available "
                         "(No module)")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("args, want", [
    (["--preset", "paper", "--image-size", "128"], ("unet128", 2, 2)),          # the original's 128-px recipe
    (["--preset", "paper", "--backbone", "unet128"], ("unet128", 2, 2)),
    (["--preset", "paper", "--image-size", "128", "--d-layers", "3"], ("unet128", 3, 2)),
    (["--preset", "paper"], ("unet256", 3, 2)),
    (["--d-layers", "2", "--d-scales", "1"], ("unet", 2, 1)),
])
def test_discriminator_flags_and_the_paper_recipe_per_size(args, want):
    result = invoke("train", "--dry-run", *args)
    assert result.exit_code == 0, result.output
    net = json.loads(result.output[result.output.index("{"):])["net"]
    assert (net["backbone"], net["d_layers"], net["d_scales"]) == want


@pytest.mark.parametrize("args, want", [
    ([], (5000, 500, 500)),                                                      # the demo itself: unchanged
    (["--image-size", "64"], (5000, 500, 500)),                                  # capped at the 32-px length
    (["--image-size", "96"], (5000, 500, 500)),
    (["--image-size", "128", "--backbone", "unet128"], (4500, 450, 450)),       # ends by itself
    (["--image-size", "192"], (2000, 200, 200)),
    (["--backbone", "unet256"], (1120, 112, 112)),
    (["--image-size", "128", "--steps", "300"], (300, 500, 500)),               # an explicit length wins
    (["--image-size", "128", "--sample-every", "50"], (4500, 50, 450)),
    (["--preset", "paper", "--image-size", "128"], (200_000, 1000, 1000)),     # only the demo scales
])
def test_the_demo_length_follows_the_image_size(args, want):
    result = invoke("train", "--dry-run", *args)
    assert result.exit_code == 0, result.output
    t = json.loads(result.output[result.output.index("{"):])["train"]
    assert (t["steps"], t["sample_every"], t["checkpoint_every"]) == want


@pytest.mark.parametrize("args, want", [
    ([], (8, 0.025, 32, 32, 32, 3, "all", 1e-3)),                                # the demo at 32 px: unchanged
    (["--image-size", "64"], (2, 0.01, 16, 16, 16, 2, "all-film", 2e-3)),
    (["--backbone", "unet128"], (2, 0.01, 16, 16, 16, 2, "all-film", 2e-3)),
    (["--backbone", "unet256"], (2, 0.01, 16, 16, 16, 3, "all-film", 1e-3)),    # the original's 256-px D, lr 1e-3
    (["--image-size", "128", "--lambda-kl", "0.02", "--batch-size", "8", "--nef", "32", "--d-layers", "3",
      "--inject", "all", "--lr", "1e-3"], (8, 0.02, 16, 32, 16, 3, "all", 1e-3)),  # flags win, key by key
    (["--preset", "paper", "--image-size", "128"], (2, 0.01, 64, 64, 64, 2, "all", 2e-4)),
])
def test_the_demo_above_32_px_takes_its_larger_images_recipe(args, want):
    result = invoke("train", "--dry-run", *args)
    assert result.exit_code == 0, result.output
    c = json.loads(result.output[result.output.index("{"):])
    n = c["net"]
    assert (c["train"]["batch_size"], c["loss"]["kl"], n["ngf"], n["nef"], n["ndf"], n["d_layers"], n["inject"],
            c["optim"]["lr"]) == want


@pytest.mark.parametrize("args, band", [
    ([], "32 px"),
    (["--image-size", "128"], "33-128 px"),
    (["--backbone", "unet256"], "over 128 px"),
    (["--preset", "paper", "--image-size", "128"], "128 px"),
    (["--preset", "paper"], "other sizes"),
])
def test_the_start_up_line_names_the_preset_and_the_size_band_that_applied(args, band):
    first = invoke("train", "--dry-run", *args).output.splitlines()[0]
    preset = args[1] if args[:1] == ["--preset"] else "demo"
    assert first.startswith(f"bicycle train: preset {preset}, size band {band} (")
    if band != "32 px":
        assert "32 px shapes" not in first
