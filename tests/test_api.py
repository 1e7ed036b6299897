"""The Python API as a notebook user calls it: bicycle.load, translate, encode, interpolate; export."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file, save_file

import bicycle
from bicycle.cli import main
from bicycle.errors import CheckpointError, ConfigError, DataError, NonFiniteError
from bicycle.inference.sample import GIF_FRAME_MS

TINY = ["--image-size", "32", "--ngf", "8", "--nef", "8", "--ndf", "8", "--batch-size", "4", "--steps", "4",
        "--log-every", "2", "--sample-every", "4", "--checkpoint-every", "4", "--impl", "ref"]
ROOT = Path(__file__).resolve().parents[1]


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from bicycle import plugins
    plugins.set_plugins(None)
    run = tmp_path_factory.mktemp("api") / "run"
    result = invoke("train", *TINY, "--run-dir", run)
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture(scope="module")
def inputs(run: Path, tmp_path_factory) -> list[Path]:
    """Three RGB input images of another size than the model's (48 px: resized on the way in)."""
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        p = folder / f"in_{i}.png"
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_translate_one_input_gives_n_images_and_a_list_gives_lists(run, inputs):
    model = bicycle.load(run, device="cpu")
    outs = model.translate(inputs[0], n=5, seed=1)
    assert len(outs) == 5 and all(isinstance(o, Image.Image) and o.size == (32, 32) and o.mode == "RGB" for o in outs)
    rows = model.translate(inputs, n=2, seed=1)
    assert len(rows) == 3 and all(len(r) == 2 for r in rows)
    t = model.translate(inputs, n=2, seed=1, tensors=True)
    assert t.shape == (3, 2, 3, 32, 32) and t.dtype == torch.float32 and t.abs().max() <= 1


def test_the_same_seed_gives_the_same_outputs_whatever_follows_and_however_batched(run, inputs, monkeypatch):
    import bicycle.inference.model as api
    model = bicycle.load(run, device="cpu")
    alone = model.translate(inputs[0], n=8, seed=3, tensors=True)
    assert torch.equal(alone, model.translate(inputs[0], n=8, seed=3, tensors=True))
    monkeypatch.setattr(api, "BATCH", 5)  # 3 inputs x 8 codes in chunks of 5 pairs
    together = model.translate(inputs, n=8, seed=3, tensors=True)
    torch.testing.assert_close(together[0], alone, rtol=0, atol=1e-6)
    assert not torch.equal(model.translate(inputs[0], n=8, seed=4, tensors=True), alone)


def test_every_kind_of_input_is_the_same_image(run, inputs):
    model = bicycle.load(run, device="cpu")
    pil = Image.open(inputs[0])
    arr = np.asarray(pil)
    ref = model.prepare(inputs[0])
    assert ref.shape == (1, 1, 32, 32)  # shapes: 1-channel inputs; RGB is converted by ITU-R 601 luma
    for x in (pil, arr, str(inputs[0]), ref[0], ref, pil.convert("L"), np.asarray(pil.convert("L"))):
        assert torch.equal(model.prepare(x), ref)
    grey = model.prepare(pil.convert("L"), channels=3)  # grey -> 3 channels by repetition
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])
    rgba = np.concatenate([arr, np.full((48, 48, 1), 7, np.uint8)], 2)  # alpha dropped
    assert torch.equal(model.prepare(rgba, channels=3), model.prepare(arr, channels=3))


def test_sample_writes_what_translate_returns(run, inputs, tmp_path):
    out = tmp_path / "out"
    result = invoke("sample", "--checkpoint", run, "--input", inputs[0].parent, "--samples", "3", "--seed", "5",
                    "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    model = bicycle.load(run, device="cpu")
    rows = model.translate(inputs, n=3, seed=5)
    for path, row in zip(inputs, rows):
        for k, img in enumerate(row):
            assert np.array_equal(np.asarray(Image.open(out / path.stem / f"sample_{k:02d}.png")), np.asarray(img))


def test_reference_translates_with_the_code_of_the_guide_image(run, inputs):
    model = bicycle.load(run, device="cpu")
    guide = inputs[2]
    code = model.encode(guide)
    assert code.shape == (model.nz,) and model.encode(inputs).shape == (3, model.nz)
    with torch.no_grad():
        mu, _ = model.nets.E(model.prepare(guide, channels=3))
        want = model.nets.G(model.prepare(inputs[0]), mu)
    got = model.translate(inputs[0], reference=guide, tensors=True)
    assert got.shape == (1, 3, 32, 32)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-6)
    assert torch.equal(got, model.translate(inputs[0], z=code, tensors=True))
    assert len(model.translate(inputs[0], reference=[inputs[1], inputs[2]])) == 2  # one output per reference


def test_interpolate_walks_from_z0_to_z1(run, inputs):
    model = bicycle.load(run, device="cpu")
    z0, z1 = torch.zeros(model.nz), torch.ones(model.nz)
    frames = model.interpolate(inputs[0], z0, z1, frames=4, tensors=True)
    assert frames.shape == (4, 3, 32, 32)
    ends = model.translate(inputs[0], z=torch.stack([z0, z1]), tensors=True)
    torch.testing.assert_close(frames[[0, -1]], ends, rtol=0, atol=1e-6)
    assert len(model.interpolate(inputs[0], inputs[1], inputs[2], frames=3)) == 3  # between two references


@pytest.mark.parametrize("call, error, words", [
    (lambda m, x: m.translate(x, z=torch.zeros(3)), DataError, "z must be"),
    (lambda m, x: m.translate(torch.zeros(1, 3, 16, 16)), DataError, "[N, 1, 32, 32]"),
    (lambda m, x: m.translate(np.zeros((8, 8, 3), np.float32)), DataError, "uint8"),
    (lambda m, x: m.translate(torch.full((1, 32, 32), float("nan"))), DataError, "NaN"),
    (lambda m, x: m.translate(12), TypeError, "int"),
    (lambda m, x: m.translate([]), DataError, "no inputs"),
    (lambda m, x: m.translate(x, n=0), ConfigError, "n must be"),
    (lambda m, x: m.translate(x, z=torch.zeros(8), reference=x), ConfigError, "not both"),
    (lambda m, x: m.translate("missing.png"), DataError, "missing.png"),
])
def test_bad_inputs_are_named(run, inputs, call, error, words):
    model = bicycle.load(run, device="cpu")
    with pytest.raises(error, match=re.escape(words)):
        call(model, inputs[0])


def test_non_finite_weights_are_refused_naming_the_file(run, tmp_path):
    src = sorted((run / "checkpoints").glob("step_*.safetensors"))[-1]
    from safetensors import safe_open
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(src))
    key = next(k for k in tensors if k.startswith("G.") and tensors[k].is_floating_point())
    tensors[key][0] = float("nan")
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(NonFiniteError, match=re.escape(str(bad))):
        bicycle.load(bad)


@pytest.mark.parametrize("dtype, tol", [("fp32", 0.0), ("fp16", 2e-2), ("bf16", 6e-2)])
def test_exported_weights_load_and_translate_like_the_run(run, inputs, tmp_path, dtype, tol):
    out = tmp_path / f"model_{dtype}.safetensors"
    result = invoke("export", run, "--out", out, "--dtype", dtype)
    assert result.exit_code == 0, result.output
    full = sorted((run / "checkpoints").glob("step_*.safetensors"))[-1].stat().st_size
    posterior = sum(t.numel() * t.element_size() for k, t in load_file(str(out)).items() if k.startswith("posterior."))
    assert f"wrote {out}" in result.output and out.stat().st_size - posterior < full / (3 if dtype == "fp32" else 6)
    assert all(k.split(".")[0] in ("G", "E", "posterior") for k in load_file(str(out)))  # no D, no optimizer state
    assert any(k.startswith("posterior.") for k in load_file(str(out)))  # the run's posterior, fitted by train
    want = bicycle.load(run, "cpu").translate(inputs[0], n=2, seed=0, tensors=True)
    got = bicycle.load(out, "cpu").translate(inputs[0], n=2, seed=0, tensors=True)
    assert (got - want).abs().max() <= tol
    result = invoke("sample", "--checkpoint", out, "--input", inputs[0], "--samples", "2", "--out", tmp_path / "s")
    assert result.exit_code == 0, result.output


def test_exported_weights_cannot_resume_training(run, tmp_path):
    out = tmp_path / "weights"
    (out / "checkpoints").mkdir(parents=True)
    assert invoke("export", run, "--out", tmp_path / "w.safetensors").exit_code == 0  # never into a run's checkpoints/
    (tmp_path / "w.safetensors").rename(out / "checkpoints" / "step_00000004.safetensors")
    (out / "config.json").write_text((run / "config.json").read_text())
    r = CliRunner().invoke(main, ["train", "--resume", str(out), "--steps", "8"])
    assert r.exit_code == CheckpointError.exit_code and "inference weights" in r.output, r.output
    assert "Traceback" not in r.output


def test_export_needs_something_to_write(run):
    r = CliRunner().invoke(main, ["export", str(run)])
    assert r.exit_code == 2 and "nothing to export" in r.output


def gif_milliseconds(path: Path) -> int:
    """Total duration of a looping GIF (Pillow merges identical consecutive frames, adding their durations)."""
    gif = Image.open(path)
    assert gif.size == (32, 32) and gif.info.get("loop") == 0
    total = 0
    for i in range(gif.n_frames):
        gif.seek(i)
        total += gif.info["duration"]
    return total


def test_sample_without_inputs_uses_the_checkpoints_own_dataset_and_interpolates(run, tmp_path):
    out = tmp_path / "own"
    result = invoke("sample", "--checkpoint", run, "--inputs", "2", "--samples", "2", "--interpolate", "5",
                    "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "the checkpoint's own dataset 'shapes' (val split)" in result.output and "oracle: valid rate" in result.output
    assert gif_milliseconds(out / "input_000" / "interpolation.gif") == 5 * GIF_FRAME_MS
    strip = Image.open(out / "input_000" / "interpolation.png")
    assert strip.size[0] > 5 * 32 and strip.size[1] < 2 * 32
    grid = Image.open(out / "grid.png")  # layout kept: A, B, encoded, 2 samples
    assert grid.size == (2 + 5 * 34, 2 + 2 * 34)


def test_interpolating_between_two_references(run, inputs, tmp_path):
    out = tmp_path / "refs"
    result = invoke("sample", "--checkpoint", run, "--input", inputs[0], "--reference", inputs[1],
                    "--reference", inputs[2], "--interpolate", "3", "--out", out)
    assert result.exit_code == 0, result.output
    assert (out / inputs[0].stem / "reference_01.png").is_file()
    assert gif_milliseconds(out / inputs[0].stem / "interpolation.gif") == 3 * GIF_FRAME_MS
    model = bicycle.load(run, "cpu")
    first = model.translate(inputs[0], reference=inputs[1])[0]
    assert np.array_equal(np.asarray(Image.open(out / inputs[0].stem / "reference_00.png")), np.asarray(first))


@pytest.mark.parametrize("args, words", [
    (["--interpolate", "1"], "at least 2 frames"),
    (["--interpolate", "3", "--samples", "1"], "--samples 2"),
    (["--reference", "nope.png"], "nope.png does not exist"),
    (["--input", "x.png", "--data", "shapes"], "at most one"),
])
def test_sample_flags_are_checked_before_loading(run, tmp_path, args, words):
    r = CliRunner().invoke(main, ["sample", "--checkpoint", str(run), "--out", str(tmp_path / "o"), *args])
    assert r.exit_code != 0 and words in r.output and "Traceback" not in r.output, r.output


def readme_python_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Use it from Python"):]
    return re.search(r"```python\n(.+?)\n```", section, re.S).group(1)


def test_the_readme_example_runs(run, inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").symlink_to(run.parent)
    for name, src in (("edges.png", inputs[0]), ("shoe.png", inputs[1])):
        (tmp_path / name).write_bytes(src.read_bytes())
    code = readme_python_example().replace("runs/shoes", f"runs/{run.name}")
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "outputs" / "0.png").is_file()


# -- bad input: one BicycleError line, never a raw torch exception or a silently wrong output --------------
BAD_API_INPUT = {
    "nan-codes": (lambda m, x: m.translate(x, z=torch.full((2, m.nz), float("nan"))), DataError, "z holds NaN or inf"),
    "inf-code": (lambda m, x: m.interpolate(x, torch.full((m.nz,), float("inf")), torch.zeros(m.nz)), DataError,
                 "NaN or inf"),
    "codes-not-numbers": (lambda m, x: m.translate(x, z="abc"), DataError, "z must be numbers"),
    "no-codes": (lambda m, x: m.translate(x, z=torch.zeros(0, m.nz)), DataError, "z holds no codes"),
    "tensor-out-of-range": (lambda m, x: m.translate(torch.rand(1, m.config.net.in_channels, 32, 32) * 10 - 5), DataError, "in [-1, 1]"),
    "empty-batch": (lambda m, x: m.translate(torch.zeros(0, 3, 32, 32)), DataError, "an empty batch"),
    "empty-array": (lambda m, x: m.translate(np.zeros((0, 0), np.uint8)), DataError, "empty (0x0 px)"),
    "empty-image": (lambda m, x: m.translate(Image.new("RGB", (0, 0))), DataError, "empty (0x0 px)"),
    "seed-string": (lambda m, x: m.translate(x, seed="abc"), ConfigError, "seed must be an integer"),
    "seed-float": (lambda m, x: m.translate(x, seed=1.7), ConfigError, "seed must be an integer"),
    "seed-bool": (lambda m, x: m.translate(x, seed=True), ConfigError, "seed must be an integer"),
    "seed-huge": (lambda m, x: m.translate(x, seed=2**70), ConfigError, "seed must be within [0, 2147483647]"),
    "seed-negative": (lambda m, x: m.translate(x, seed=-1), ConfigError, "seed must be within [0, 2147483647]"),
    "n-float": (lambda m, x: m.translate(x, n=1.5), ConfigError, "n must be an integer"),
    "n-negative": (lambda m, x: m.translate(x, n=-2), ConfigError, "n must be at least 1"),
    "random-z-n": (lambda m, x: m.random_z(1, 0), ConfigError, "n must be at least 1"),
    "frames-float": (lambda m, x: m.interpolate(x, torch.zeros(m.nz), torch.ones(m.nz), frames=2.5), ConfigError,
                     "frames must be an integer"),
}


@pytest.mark.parametrize("case", sorted(BAD_API_INPUT))
def test_bad_api_input_is_one_bicycle_error_line(run, inputs, case):
    from bicycle.errors import BicycleError
    call, error, words = BAD_API_INPUT[case]
    model = bicycle.load(run, device="cpu")
    with pytest.raises(error, match=re.escape(words)) as info:
        call(model, inputs[0])
    assert isinstance(info.value, BicycleError) and "\n" not in str(info.value)


def test_a_tensor_a_rounding_error_outside_the_range_is_accepted(run):
    model = bicycle.load(run, device="cpu")
    c = model.config.net.in_channels
    assert model.translate(torch.full((c, 32, 32), 1.0005), n=1, seed=0, tensors=True).shape[0] == 1


@pytest.mark.parametrize("seed", [0, 3, 2**31 - 1, -1, 2**31])
def test_the_cli_and_the_api_accept_the_same_seeds(run, inputs, tmp_path, seed):
    model = bicycle.load(run, device="cpu")
    r = invoke("sample", "--checkpoint", str(run), "--input", str(inputs[0]), "--samples", "1",
               "--out", str(tmp_path / "o"), "--seed", str(seed), "--device", "cpu")
    try:
        model.translate(inputs[0], n=1, seed=seed)
        api_ok = True
    except ConfigError:
        api_ok = False
    assert (r.exit_code == 0) == api_ok, r.output
    if api_ok:  # numpy integers are seeds too, the same codes as the Python int
        torch.testing.assert_close(model.random_z(1, 2, np.int64(seed)), model.random_z(1, 2, seed), rtol=0, atol=0)
