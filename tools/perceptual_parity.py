"""Numerical parity of ``bicycle.inference.perceptual`` (LPIPS, FID) with the published packages lpips 0.1 (net='alex')
and pytorch-fid (``pt_inception-2015-12-05`` layout, pool3 features, ``calculate_frechet_distance``).

Not part of CI: it needs lpips, pytorch-fid, torchvision and scipy, which bicycle does not depend on. Run it in
a separate virtual environment (bicycle itself is imported from this checkout; only ``bicycle.inference.perceptual``,
which needs no compiled extension)::

    python3 -m venv /tmp/parity-venv
    /tmp/parity-venv/bin/pip install torch==2.14.1 torchvision lpips pytorch-fid scipy numpy pillow safetensors pluggy
    /tmp/parity-venv/bin/python tools/perceptual_parity.py --json tools/results/perceptual_parity_<date>.json

Nothing is downloaded: any call to ``torch.hub.load_state_dict_from_url`` raises.
- LPIPS: lpips' own shipped linear-layer weights (``lpips/weights/v0.1/alex.pth``, the real calibrated ones) with a
  seeded random AlexNet trunk (``pnet_rand=True``: torchvision builds AlexNet with ``weights=None``). The weights
  are exported to safetensors with lpips' names (``net.sliceS.I.*``, ``lin{0..4}.model.1.weight``) and read by
  ``bicycle.inference.perceptual.load_lpips``. Compared: the scaled input, the five relu taps and the distances, on seeded
  random images in [-1, 1] (64 and 128 px, batch 4; RGB, plus a 1-channel batch that bicycle repeats to RGB).
- FID: pytorch-fid's ``InceptionV3()`` (``use_fid_inception=True``) with ``load_state_dict_from_url`` patched to
  return a seeded random state dict of torchvision's Inception3 shapes (num_classes=1008, no aux logits; the
  same key set as the real ``pt_inception-2015-12-05`` file), whose BatchNorm running statistics are then
  calibrated on one seeded batch so that activations stay O(1) through the network. That state dict (fc.* and
  num_batches_tracked included) is saved to safetensors and read by ``bicycle.inference.perceptual.load_inception``.
  pytorch-fid takes images in [0, 1] (resize to 299, then 2x-1); bicycle takes [-1, 1] (resize to 299): the
  same images are given as (x+1)/2 and x. Compared: pool3 features (299 px and 128 px, batch 8), and the FID of
  64 vs 64 images (bicycle ``fid`` vs pytorch-fid's features + ``np.cov`` + ``calculate_frechet_distance``),
  plus ``frechet_distance`` vs ``calculate_frechet_distance`` on the same statistics, both for the 2048-d
  rank-deficient 64-image statistics and for full-rank 64-d statistics (4096 samples).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import io
import json
import os
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

SEEDS = {"lpips_trunk": 1234, "lpips_images": 2024, "inception_weights": 4321, "inception_calibration": 77,
         "fid_images": 2025, "synthetic_stats": 99}
LPIPS_TOL_ABS = 1e-5
FEAT_TOL_ABS = 1e-5
FID_TOL_REL = 1e-5


def _no_download(*args, **kwargs):
    raise RuntimeError(f"perceptual_parity: a download was attempted ({args[:1]}); nothing may be downloaded")


torch.hub.load_state_dict_from_url = _no_download
import torch.utils.model_zoo  # noqa: E402

torch.utils.model_zoo.load_url = _no_download


def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def maxabs(a, b) -> float:
    a = torch.as_tensor(a).double()
    b = torch.as_tensor(b).double()
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


def images(seed: int, n: int, c: int, size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g) * 2 - 1


# ------------------------------------------------------------------------------------------------ LPIPS

def lpips_checks(tmp: Path) -> dict:
    import lpips
    from bicycle.inference.perceptual import load_lpips

    torch.manual_seed(SEEDS["lpips_trunk"])
    with contextlib.redirect_stdout(io.StringIO()):
        ref = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False).eval()
    shipped_path = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
    shipped = torch.load(shipped_path, map_location="cpu", weights_only=True)
    sd = ref.state_dict()
    lin_keys = [f"lin{i}.model.1.weight" for i in range(5)]
    lin_from_shipped = max(maxabs(sd[k], shipped[k]) for k in lin_keys)

    # The export: the trunk with lpips' names, the lin layers, the scaling-layer buffers (ignored by bicycle).
    export = {k: v.detach().clone().contiguous() for k, v in sd.items()
              if k.startswith("net.") or k in lin_keys or k.startswith("scaling_layer.")}
    path = tmp / "lpips_alex_randtrunk.safetensors"
    save_file(export, str(path))
    ours = load_lpips(path).eval()

    # Does the loader take lpips' full state dict (it also holds ``lins.N.*`` aliases of ``linN.*``)?
    full_path = tmp / "lpips_full_state_dict.safetensors"
    full_note = None
    try:
        save_file({k: v.detach().clone().contiguous() for k, v in sd.items()}, str(full_path))
        load_lpips(full_path)
        full_note = "accepted"
    except Exception as exc:  # noqa: BLE001 - recorded, informational
        full_note = f"rejected: {type(exc).__name__}: {str(exc)[:200]}"

    cases = []
    worst_feat = worst_dist = worst_in = 0.0
    for i, (size, c) in enumerate([(64, 3), (128, 3), (64, 1)]):
        x = images(SEEDS["lpips_images"] + 2 * i, 4, c, size)
        y = images(SEEDS["lpips_images"] + 2 * i + 1, 4, c, size)
        xr, yr = (x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)) if c == 1 else (x, y)
        with torch.no_grad():
            d_ref = ref(xr, yr).flatten()
            d_ours = ours(x, y)
            s_ref = ref.scaling_layer(xr)
            s_ours = (xr - ours.shift) / ours.scale
            f_ref = list(ref.net(s_ref))
            f_ours = ours.net(s_ours)
        in_diff = maxabs(s_ref, s_ours)
        feat = [maxabs(a, b) for a, b in zip(f_ref, f_ours)]
        dist = maxabs(d_ref, d_ours)
        worst_feat, worst_dist, worst_in = max(worst_feat, *feat), max(worst_dist, dist), max(worst_in, in_diff)
        cases.append({"size": size, "channels": c, "batch": 4,
                      "scaled_input_max_abs_diff": in_diff,
                      "feature_max_abs_diff_relu1_5": feat,
                      "feature_max_abs_relu1_5": [float(a.abs().max()) for a in f_ref],
                      "distance_max_abs_diff": dist,
                      "distances_lpips": [round(float(v), 8) for v in d_ref],
                      "distances_bicycle": [round(float(v), 8) for v in d_ours]})
    return {
        "lin_weights": str(shipped_path.relative_to(Path(lpips.__file__).parent.parent)),
        "lin_weights_equal_shipped_max_abs_diff": lin_from_shipped,
        "trunk": "seeded random AlexNet (pnet_rand=True, torchvision weights=None, torch.manual_seed)",
        "export_keys": f"{len(export)} tensors: net.sliceS.I.*, lin0..4.model.1.weight, scaling_layer.*",
        "full_lpips_state_dict_in_load_lpips": full_note,
        "cases": cases,
        "checks": {
            "lpips_features": {"max_abs_diff": max(worst_feat, worst_in), "tol_abs": FEAT_TOL_ABS,
                               "pass": max(worst_feat, worst_in) <= FEAT_TOL_ABS},
            "lpips_distance": {"max_abs_diff": worst_dist, "tol_abs": LPIPS_TOL_ABS,
                               "pass": worst_dist <= LPIPS_TOL_ABS},
        },
    }


# ------------------------------------------------------------------------------------------------ FID

def random_inception_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """Seeded random values for torchvision Inception3(num_classes=1008, aux_logits=False): the key set and
    shapes of pytorch-fid's pt_inception-2015-12-05 state dict (FID blocks subclass torchvision's)."""
    import torchvision

    with torch.device("meta"):
        tv = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in tv.state_dict().items():
        shape = tuple(v.shape)
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(0, dtype=torch.long)
        elif k.endswith("conv.weight") or k == "fc.weight":
            fan_in = int(np.prod(shape[1:]))
            out[k] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        elif k.endswith("bn.weight"):
            out[k] = 0.75 + 0.5 * torch.rand(shape, generator=g)
        elif k.endswith("bn.bias") or k == "fc.bias":
            out[k] = 0.1 * torch.randn(shape, generator=g)
        elif k.endswith("running_mean"):
            out[k] = torch.zeros(shape)
        elif k.endswith("running_var"):
            out[k] = torch.ones(shape)
        else:
            raise KeyError(k)
    return out


def calibrated_inception_state_dict() -> dict[str, torch.Tensor]:
    """Random weights, then BatchNorm running statistics set to one seeded batch's statistics (cumulative
    average, one forward in train mode through pytorch-fid's own FID Inception), so activations stay O(1)."""
    import pytorch_fid.inception as pfi

    sd = random_inception_state_dict(SEEDS["inception_weights"])
    pfi.load_state_dict_from_url = lambda *a, **k: {kk: vv.clone() for kk, vv in sd.items()}
    net = pfi.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    # The calibration batch is of the kinds of input the checks feed: 299-px noise, and 128/64-px noise that
    # the network upsamples to 299 (much smoother, so statistics from 299-px noise alone would leave its
    # pool3 features ~100x larger than O(1)).
    g = torch.Generator().manual_seed(SEEDS["inception_calibration"])
    small = [F.interpolate(torch.rand(2, 3, s, s, generator=g), size=(299, 299), mode="bilinear",
                           align_corners=False) for s in (128, 64)]
    with torch.no_grad():
        net(torch.cat([torch.rand(2, 3, 299, 299, generator=g), *small]))
    # InceptionV3 holds the same module objects as the torchvision Inception3 it was cut from: read the
    # calibrated buffers back under the torchvision names.
    calibrated = dict(sd)
    inc = _last_inception["net"]
    for k, v in inc.state_dict().items():
        calibrated[k] = v.detach().clone().contiguous()
    return calibrated


_last_inception: dict = {}


def _patch_capture():
    """Wrap pytorch_fid.inception.fid_inception_v3 to remember the torchvision-named Inception3 it builds."""
    import pytorch_fid.inception as pfi

    orig = pfi.fid_inception_v3

    def wrapped():
        net = orig()
        _last_inception["net"] = net
        return net

    pfi.fid_inception_v3 = wrapped


def fid_checks(tmp: Path, n_fid: int) -> dict:
    import pytorch_fid.inception as pfi
    from pytorch_fid.fid_score import calculate_frechet_distance

    from bicycle.inference.perceptual import extract_features, fid, frechet_distance, gaussian_fit, load_inception

    _patch_capture()
    t0 = time.perf_counter()
    sd = calibrated_inception_state_dict()
    pfi.load_state_dict_from_url = lambda *a, **k: {kk: vv.clone() for kk, vv in sd.items()}
    ref = pfi.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True).eval()
    path = tmp / "fid_inception_random.safetensors"
    save_file(sd, str(path))
    ours = load_inception(path).eval()
    setup_s = time.perf_counter() - t0

    def ref_features(x: torch.Tensor, batch: int = 8) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([ref((x[i:i + batch] + 1) / 2)[0].flatten(1).double() for i in range(0, len(x), batch)])

    cases = []
    worst_feat = 0.0
    t_feat = time.perf_counter()
    for i, (size, c) in enumerate([(299, 3), (128, 3), (64, 1)]):
        n = 8 if c == 3 else 4
        x = images(SEEDS["fid_images"] + 100 + i, n, c, size)
        xr = x.repeat(1, 3, 1, 1) if c == 1 else x
        a = ref_features(xr)
        b = extract_features(ours, x, batch=8)
        d = maxabs(a, b)
        worst_feat = max(worst_feat, d)
        # Diagnostic: bicycle's network on pytorch-fid's own 299-px input (resized in [0, 1], then 2x-1;
        # bicycle's resize to 299 is then the identity): isolates the network from the input rounding.
        x01 = F.interpolate((xr + 1) / 2, size=(299, 299), mode="bilinear", align_corners=False)
        pre = 2 * x01 - 1
        pre_bicycle = F.interpolate(xr, size=(299, 299), mode="bilinear", align_corners=False)
        with torch.no_grad():
            b_same_input = ours(pre).double()
        cases.append({"size": size, "channels": c, "batch": n, "pool3_max_abs_diff": d,
                      "pool3_max_abs": float(a.abs().max()), "pool3_mean": float(a.mean()),
                      "pool3_max_abs_diff_over_max_abs": d / float(a.abs().max()),
                      "input_diff_resize_in_pm1_vs_pytorch_fid_order": maxabs(pre, pre_bicycle),
                      "pool3_max_abs_diff_on_pytorch_fid_input": maxabs(a, b_same_input)})
    feat_s = time.perf_counter() - t_feat

    # FID 64 vs 64: two sets of seeded random images, 128 px (both sides resize to 299).
    fake = images(SEEDS["fid_images"], n_fid, 3, 128)
    real = images(SEEDS["fid_images"] + 1, n_fid, 3, 128) * 0.5  # a different distribution: FID well above 0
    t1 = time.perf_counter()
    fa, ra = ref_features(fake).numpy(), ref_features(real).numpy()
    t_ref_feat = time.perf_counter() - t1
    with contextlib.redirect_stdout(io.StringIO()) as msgs:
        fid_ref = float(calculate_frechet_distance(fa.mean(0), np.cov(fa, rowvar=False),
                                                   ra.mean(0), np.cov(ra, rowvar=False)))
    fid_ours = fid(ours, fake, real, batch=8)
    fid_s = time.perf_counter() - t1
    fid_rel = abs(fid_ours - fid_ref) / abs(fid_ref)

    # The same statistics (pytorch-fid's features) into both Fréchet distances.
    mu1, s1 = gaussian_fit(torch.from_numpy(fa))
    mu2, s2 = gaussian_fit(torch.from_numpy(ra))
    stats_cov_diff = max(maxabs(s1, np.cov(fa, rowvar=False)), maxabs(s2, np.cov(ra, rowvar=False)))
    fd_ours_same = frechet_distance(mu1, s1, mu2, s2)
    fd_rel_same = abs(fd_ours_same - fid_ref) / abs(fid_ref)

    # Full-rank statistics: 4096 samples of 64-d correlated Gaussians.
    g = np.random.default_rng(SEEDS["synthetic_stats"])
    m1, m2 = g.standard_normal((64, 64)), g.standard_normal((64, 64))
    p = g.standard_normal((4096, 64)) @ m1
    q = g.standard_normal((4096, 64)) @ m2 * 0.7 + 0.3
    fd_ref_full = float(calculate_frechet_distance(p.mean(0), np.cov(p, rowvar=False), q.mean(0),
                                                   np.cov(q, rowvar=False)))
    fd_ours_full = frechet_distance(*gaussian_fit(torch.from_numpy(p)), *gaussian_fit(torch.from_numpy(q)))
    fd_rel_full = abs(fd_ours_full - fd_ref_full) / abs(fd_ref_full)

    return {
        "weights": ("seeded random Inception3(num_classes=1008, aux_logits=False) state dict, BatchNorm running "
                    "stats calibrated on one seeded batch of 6 images; same key set as pt_inception-2015-12-05"),
        "export_keys": f"{len(sd)} tensors (fc.*, num_batches_tracked included; bicycle ignores them)",
        "setup_s": round(setup_s, 2),
        "feature_cases": cases,
        "fid_images": f"{n_fid} vs {n_fid}, 128 px RGB, uniform [-1, 1] vs uniform [-0.5, 0.5]",
        "fid_pytorch_fid": fid_ref,
        "fid_bicycle": fid_ours,
        "fid_rel_diff": fid_rel,
        "pytorch_fid_messages": msgs.getvalue().strip() or None,
        "covariance_max_abs_diff_vs_np_cov": stats_cov_diff,
        "frechet_same_stats_bicycle": fd_ours_same,
        "frechet_same_stats_rel_diff": fd_rel_same,
        "frechet_full_rank_64d": {"pytorch_fid": fd_ref_full, "bicycle": fd_ours_full, "rel_diff": fd_rel_full},
        "feature_cases_s": round(feat_s, 2),
        "fid_s": round(fid_s, 2),
        "fid_pytorch_fid_feature_extraction_s": round(t_ref_feat, 2),
        "checks": {
            "fid_pool3_features": {"max_abs_diff": worst_feat, "tol_abs": FEAT_TOL_ABS,
                                   "pass": worst_feat <= FEAT_TOL_ABS},
            "fid_end_to_end": {"rel_diff": fid_rel, "tol_rel": FID_TOL_REL, "pass": fid_rel <= FID_TOL_REL},
            "frechet_same_stats_2048d": {"rel_diff": fd_rel_same, "tol_rel": FID_TOL_REL,
                                         "pass": fd_rel_same <= FID_TOL_REL},
            "frechet_full_rank_64d": {"rel_diff": fd_rel_full, "tol_rel": FID_TOL_REL,
                                      "pass": fd_rel_full <= FID_TOL_REL},
        },
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--fid-images", type=int, default=64, help="images per FID set (default 64)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="perceptual-parity-") as d:
        tmp = Path(d)
        lp = lpips_checks(tmp)
        t_lp = time.perf_counter() - t0
        fd = fid_checks(tmp, args.fid_images)
    checks = {**lp.pop("checks"), **fd.pop("checks")}
    result = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "versions": {k: version(k) for k in ("torch", "torchvision", "lpips", "pytorch-fid", "scipy", "numpy",
                                             "safetensors")},
        "torch_threads": args.threads,
        "device": "cpu",
        "seeds": SEEDS,
        "checks": checks,
        "all_pass": all(c["pass"] for c in checks.values()),
        "lpips": lp,
        "fid": fd,
        "lpips_s": round(t_lp, 2),
        "total_s": round(time.perf_counter() - t0, 2),
    }
    for name, c in checks.items():
        val = c.get("max_abs_diff", c.get("rel_diff"))
        kind = "abs" if "tol_abs" in c else "rel"
        tol = c.get("tol_abs", c.get("tol_rel"))
        print(f"{name:28s} {kind} diff {val:.3e}  (tol {tol:.0e})  {'PASS' if c['pass'] else 'FAIL'}")
    print(f"FID 64 vs 64: pytorch-fid {fd['fid_pytorch_fid']:.6f}  bicycle {fd['fid_bicycle']:.6f}")
    print(f"versions: {result['versions']}")
    print(f"all pass: {result['all_pass']}  ({result['total_s']} s)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0 if result["all_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
