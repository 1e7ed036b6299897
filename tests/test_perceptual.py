"""LPIPS and FID arithmetic against independent straightforward computations, with tiny generated networks
saved to safetensors; weight-file checks; ``bicycle eval --lpips-weights/--inception-weights``.
Parity with the published lpips 0.1 / pytorch-fid packages is not tested here (they are not dependencies): see
tools/perceptual_parity.py and tools/results/perceptual_parity_20261201.json."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from bicycle.errors import CheckpointError
from bicycle.inference.perceptual import (ALEX_CHANNELS, LPIPS, LPIPS_SCALE, LPIPS_SHIFT, AlexNetFeatures, FIDInceptionV3,
                                consecutive_pair_lpips, fid, frechet_distance, gaussian_fit,
                                inception_expected_shapes, load_inception, load_lpips)

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------- tiny net

def tiny_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"c1.weight": torch.randn(4, 3, 3, 3, generator=g) * 0.5, "c1.bias": torch.randn(4, generator=g) * 0.1,
            "c2.weight": torch.randn(5, 4, 3, 3, generator=g) * 0.5, "c2.bias": torch.randn(5, generator=g) * 0.1,
            "lin0": torch.rand(1, 4, 1, 1, generator=g), "lin1": torch.rand(1, 5, 1, 1, generator=g)}


class TinyNet(torch.nn.Module):
    """conv 3->4 k3 p1, relu (tap), conv 4->5 k3 s2 p1, relu (tap)."""

    def __init__(self, w):
        super().__init__()
        self.w = w

    def forward(self, x):
        a = F.relu(F.conv2d(x, self.w["c1.weight"], self.w["c1.bias"], padding=1))
        b = F.relu(F.conv2d(a, self.w["c2.weight"], self.w["c2.bias"], stride=2, padding=1))
        return [a, b]


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_file(tiny_weights(), str(path))
    w = load_file(str(path))
    return w, LPIPS(TinyNet(w), [w["lin0"], w["lin1"]])


def reference_lpips(w, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Per-pixel loops in float64 numpy over the tiny net's features."""
    shift = np.array(LPIPS_SHIFT).reshape(1, 3, 1, 1)
    scale = np.array(LPIPS_SCALE).reshape(1, 3, 1, 1)
    if x.shape[1] == 1:
        x, y = x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)
    xs = torch.from_numpy((x.double().numpy() - shift) / scale).float()
    ys = torch.from_numpy((y.double().numpy() - shift) / scale).float()
    net = TinyNet(w)
    fx, fy = net(xs), net(ys)
    out = np.zeros(x.shape[0])
    for layer, (a, b) in enumerate(zip(fx, fy)):
        a, b = a.double().numpy(), b.double().numpy()
        lin = w[f"lin{layer}"].double().numpy().reshape(-1)
        _, c, h, wd = a.shape
        for n in range(a.shape[0]):
            acc = 0.0
            for i in range(h):
                for j in range(wd):
                    va, vb = a[n, :, i, j], b[n, :, i, j]
                    ua = va / (math.sqrt(float((va ** 2).sum())) + 1e-10)
                    ub = vb / (math.sqrt(float((vb ** 2).sum())) + 1e-10)
                    acc += sum(lin[k] * (ua[k] - ub[k]) ** 2 for k in range(c))
            out[n] += acc / (h * wd)
    return out


def test_lpips_matches_a_straightforward_computation(tiny):
    w, lp = tiny
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1, torch.rand(3, 3, 8, 8, generator=g) * 2 - 1
    got = lp(x, y)
    assert got.shape == (3,)
    np.testing.assert_allclose(got.double().numpy(), reference_lpips(w, x, y), rtol=1e-5, atol=1e-7)
    assert torch.allclose(lp(x, y), lp(y, x)) and float(lp(x, x).abs().max()) == 0.0


def test_one_channel_images_are_repeated_to_three(tiny):
    w, lp = tiny
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(2, 1, 8, 8, generator=g) * 2 - 1, torch.rand(2, 1, 8, 8, generator=g) * 2 - 1
    np.testing.assert_allclose(lp(x, y).double().numpy(), reference_lpips(w, x, y), rtol=1e-5, atol=1e-7)
    assert torch.allclose(lp(x, y), lp(x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)))


def test_lpips_diversity_uses_the_consecutive_pairs(tiny):
    _, lp = tiny
    outs = torch.rand(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    got = consecutive_pair_lpips(lp, outs, batch=2)
    want = [np.mean([float(lp(outs[m, i:i + 1], outs[m, i + 1:i + 2])) for i in range(3)]) for m in range(2)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    assert torch.isnan(consecutive_pair_lpips(lp, outs[:, :1])).all()


# ------------------------------------------------------------------------------------------- LPIPS file

def alex_file(path, layout: str = "torchvision", seed: int = 0, drop: str | None = None, extra: str | None = None):
    torch.manual_seed(seed)
    net = AlexNetFeatures()
    tensors = {}
    for k, v in net.features.state_dict().items():
        idx, name = k.split(".")
        slice_of = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}[int(idx)]
        key = f"features.{k}" if layout == "torchvision" else f"net.slice{slice_of}.{k}"
        tensors[key] = v.clone()
    for i, c in enumerate(ALEX_CHANNELS):
        tensors[f"lin{i}.model.1.weight"] = torch.rand(1, c, 1, 1)
    if layout == "lpips":
        tensors["scaling_layer.shift"] = torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1)
        tensors["scaling_layer.scale"] = torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1)
    lin = [tensors[f"lin{i}.model.1.weight"] for i in range(5)]
    if drop:
        tensors.pop(drop)
    if extra:
        tensors[extra] = torch.zeros(1)
    save_file(tensors, str(path))
    return net, lin


def test_alexnet_lpips_loads_from_either_key_layout(tmp_path):
    net, lin = alex_file(tmp_path / "tv.safetensors")
    alex_file(tmp_path / "lp.safetensors", layout="lpips")
    direct = LPIPS(net, lin)
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    a, b = load_lpips(tmp_path / "tv.safetensors"), load_lpips(tmp_path / "lp.safetensors")
    assert torch.equal(a(x, y), direct(x, y)) and torch.equal(b(x, y), direct(x, y))
    assert [f.shape[1] for f in net(x)] == list(ALEX_CHANNELS)
    with pytest.raises(ValueError, match="at least 31x31"):
        a(x[..., :16, :16], y[..., :16, :16])


def test_lpips_full_state_dict_with_lins_aliases_loads(tmp_path):
    """lpips.LPIPS().state_dict() also holds ``lins.N.model.1.weight`` (its ModuleList) beside ``linN``."""
    net, lin = alex_file(tmp_path / "lp.safetensors", layout="lpips")
    t = load_file(str(tmp_path / "lp.safetensors"))
    full = {**t, **{f"lins.{i}.model.1.weight": t[f"lin{i}.model.1.weight"].clone() for i in range(5)}}
    save_file(full, str(tmp_path / "full.safetensors"))
    only_lins = {k: v for k, v in full.items() if not k.startswith("lin") or k.startswith("lins.")}
    save_file(only_lins, str(tmp_path / "lins.safetensors"))
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    direct = LPIPS(net, lin)(x, y)
    assert torch.equal(load_lpips(tmp_path / "full.safetensors")(x, y), direct)
    assert torch.equal(load_lpips(tmp_path / "lins.safetensors")(x, y), direct)
    full["lins.2.model.1.weight"] = full["lins.2.model.1.weight"] + 1
    save_file(full, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match="differs from the other tensor named lin2.model.1.weight"):
        load_lpips(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("kwargs,message", [
    ({"drop": "lin3.model.1.weight"}, "missing LPIPS .* tensor\\(s\\) lin3.model.1.weight"),
    ({"drop": "features.6.bias"}, "missing .*features.6.bias"),
    ({"extra": "features.12.weight"}, "unexpected tensor\\(s\\) features.12.weight"),
])
def test_lpips_file_problems_name_the_tensor(tmp_path, kwargs, message):
    alex_file(tmp_path / "w.safetensors", **kwargs)
    with pytest.raises(CheckpointError, match=message):
        load_lpips(tmp_path / "w.safetensors")


def test_lpips_wrong_shape_missing_file_and_pickles_are_clear_errors(tmp_path):
    alex_file(tmp_path / "w.safetensors")
    t = load_file(str(tmp_path / "w.safetensors"))
    t["lin0.model.1.weight"] = torch.rand(1, 32, 1, 1)
    save_file(t, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match=r"lin0.model.1.weight has shape \(1, 32, 1, 1\).*\(1, 64, 1, 1\)"):
        load_lpips(tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_lpips(tmp_path / "nope.safetensors")
    torch.save({"lin0.model.1.weight": torch.zeros(1)}, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match="not a readable safetensors file.*pickled"):
        load_lpips(tmp_path / "w.pth")


# ------------------------------------------------------------------------------------------- FID

def reference_frechet(mu1, s1, mu2, s2) -> float:
    """numpy, general (non-symmetric) eigenvalues of S1 S2: tr sqrt(S1 S2) = sum sqrt(lambda_i)."""
    lam = np.linalg.eigvals(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2)
                 - 2 * np.sqrt(np.clip(lam.real, 0, None)).sum())


def test_gaussian_fit_is_mean_and_unbiased_covariance():
    f = torch.randn(20, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    mu, s = gaussian_fit(f)
    np.testing.assert_allclose(mu.numpy(), f.numpy().mean(0))
    np.testing.assert_allclose(s.numpy(), np.cov(f.numpy(), rowvar=False), rtol=1e-12)
    with pytest.raises(ValueError):
        gaussian_fit(f[:1])


def test_frechet_distance_closed_forms_and_a_general_case():
    # 1-D: (mu1 - mu2)^2 + (sigma1 - sigma2)^2
    d = frechet_distance(torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([-2.0]), torch.tensor([[9.0]]))
    assert math.isclose(d, 9 + 1, rel_tol=1e-12)
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    got = frechet_distance(*(torch.from_numpy(v) for v in (mu1, s1, mu2, s2)))
    assert math.isclose(got, reference_frechet(mu1, s1, mu2, s2), rel_tol=1e-9)
    assert abs(frechet_distance(*(torch.from_numpy(v) for v in (mu1, s1, mu1, s1)))) < 1e-9


def test_fid_with_rank_deficient_covariances_is_finite_and_matches():
    # fewer samples than feature dimensions, as with few eval inputs: singular covariances
    g = torch.Generator().manual_seed(6)
    fake, real = torch.rand(5, 3, 8, 8, generator=g) * 2 - 1, torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    w = tiny_weights()
    net = lambda x: F.adaptive_avg_pool2d(TinyNet(w)(x)[1], 2).flatten(1)  # noqa: E731  [N, 20]
    got = fid(net, fake, real, batch=2)
    f1, f2 = net(fake).double().numpy(), net(real).double().numpy()
    want = reference_frechet(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
    assert math.isfinite(got) and got >= 0
    assert math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)
    # sqrt of near-zero eigenvalues amplifies rounding (sqrt(1e-16) = 1e-8): zero only up to that, relative to tr S
    assert abs(fid(net, fake, fake)) < 1e-6 * np.trace(np.cov(f1, rowvar=False))


def test_inception_has_torchvision_inception3_names_and_parameter_count():
    shapes = inception_expected_shapes()
    # torchvision's Inception3 has 27,161,264 parameters; less AuxLogits (3,326,696) and fc (2,049,000):
    params = sum(s.numel() for k, s in shapes.items() if not k.endswith(("running_mean", "running_var")))
    assert params == 27_161_264 - 3_326_696 - 2_049_000
    assert sum(k.endswith(".conv.weight") for k in shapes) == 94
    for key, shape in [("Conv2d_1a_3x3.conv.weight", (32, 3, 3, 3)), ("Conv2d_4a_3x3.bn.running_var", (192,)),
                       ("Mixed_5b.branch_pool.conv.weight", (32, 192, 1, 1)),
                       ("Mixed_6b.branch7x7dbl_2.conv.weight", (128, 128, 7, 1)),
                       ("Mixed_6e.branch7x7_2.conv.weight", (192, 192, 1, 7)),
                       ("Mixed_7a.branch3x3_2.conv.weight", (320, 192, 3, 3)),
                       ("Mixed_7b.branch3x3dbl_3b.conv.weight", (384, 384, 3, 1)),
                       ("Mixed_7c.branch_pool.conv.weight", (192, 2048, 1, 1))]:
        assert tuple(shapes[key]) == shape, key


def inception_file(path, drop: str | None = None):
    torch.manual_seed(0)
    net = FIDInceptionV3()
    tensors = {k: v.clone() for k, v in net.state_dict().items()}
    tensors["fc.weight"], tensors["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)  # ignored
    if drop:
        tensors.pop(drop)
    save_file(tensors, str(path))
    return net


def test_inception_loads_from_safetensors_and_gives_2048_features(tmp_path):
    direct = inception_file(tmp_path / "inc.safetensors").eval()
    net = load_inception(tmp_path / "inc.safetensors")
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        got = net(x)
        assert got.shape == (2, 2048) and torch.isfinite(got).all()
        assert torch.equal(got, direct(x.repeat(1, 3, 1, 1)))
    inception_file(tmp_path / "bad.safetensors", drop="Mixed_6c.branch7x7_3.bn.running_mean")
    with pytest.raises(CheckpointError, match="missing FID Inception-v3 tensor\\(s\\) Mixed_6c.branch7x7_3.bn.running_mean"):
        load_inception(tmp_path / "bad.safetensors")


# ------------------------------------------------------------------------------------------- CLI

TINY = ["--image-size", "32", "--ngf", "8", "--nef", "8", "--ndf", "8", "--batch-size", "4", "--steps", "2",
        "--log-every", "2", "--sample-every", "2", "--checkpoint-every", "2", "--impl", "ref"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from bicycle import plugins
    from bicycle.cli import main
    plugins.set_plugins(None)
    run = tmp_path_factory.mktemp("perc") / "run"
    result = CliRunner().invoke(main, ["train", *TINY, "--run-dir", str(run)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return run


def invoke(*args):
    from bicycle.cli import main
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_eval_without_weights_reports_null_and_which_flag_gives_each(run, tmp_path):
    out = tmp_path / "e.json"
    result = invoke("eval", "--checkpoint", str(run), "--inputs", "2", "--samples", "2", "--json", str(out))
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["diversity_lpips"] is None and data["fid"] is None
    assert data["diversity_pixel_l1"] is not None
    assert len(data["notes"]) == 2
    assert [n for n in data["notes"] if "--lpips-weights PATH" in n and n.startswith("diversity_lpips")]
    assert [n for n in data["notes"] if "--inception-weights PATH" in n and n.startswith("fid")]
    assert result.output.count("--lpips-weights") == 1 and result.output.count("--inception-weights") == 1
    assert data["protocol"]["lpips"] is None and data["protocol"]["fid"] is None


def test_eval_with_weights_reports_lpips_diversity_and_fid(run, tmp_path):
    alex_file(tmp_path / "alex.safetensors")
    inception_file(tmp_path / "inc.safetensors")
    out = tmp_path / "e.json"
    result = invoke("eval", "--checkpoint", str(run), "--inputs", "2", "--samples", "3", "--json", str(out),
                    "--lpips-weights", str(tmp_path / "alex.safetensors"),
                    "--inception-weights", str(tmp_path / "inc.safetensors"))
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert isinstance(data["diversity_lpips"], float) and data["diversity_lpips"] >= 0
    assert isinstance(data["fid"], float) and math.isfinite(data["fid"])
    assert data["notes"] == []
    assert data["protocol"]["lpips"].startswith("bicycle-lpips/1") and data["protocol"]["fid"].startswith("bicycle-fid/1")
    assert "alex.safetensors sha256:" in data["protocol"]["lpips_weights"]
    assert "inc.safetensors sha256:" in data["protocol"]["fid_weights"]


def test_eval_with_a_bad_weights_file_is_one_clear_line(run, tmp_path):
    alex_file(tmp_path / "alex.safetensors", drop="lin4.model.1.weight")
    result = invoke("eval", "--checkpoint", str(run), "--inputs", "2", "--samples", "2",
                    "--lpips-weights", str(tmp_path / "alex.safetensors"))
    assert result.exit_code == CheckpointError.exit_code
    assert "--lpips-weights" in result.output and "lin4.model.1.weight" in result.output
