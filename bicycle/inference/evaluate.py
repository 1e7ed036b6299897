"""``bicycle eval``: realism and diversity of a trained model, with the dataset's oracle when it has one."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import torch

from bicycle.build import build_eval_dataset, check_channels
from bicycle.data.base import oracle_of
from bicycle.errors import BicycleError
from bicycle.io import atomic_write_bytes, writing
from bicycle.inference.loading import describe_weights, load_model, pick_weights
from bicycle.inference.metrics import PROTOCOL_VERSION, consecutive_pair_l1, mode_statistics, prior_coverage, z_sensitivity
from bicycle.models import MODELS
from bicycle.nets import Nets
from bicycle.inference.perceptual import FID_VERSION, LPIPS_VERSION, consecutive_pair_lpips, fid
from bicycle.plugins import get_plugins
from bicycle.inference.sample import encoded_outputs, random_outputs
from bicycle.inference.zsource import PRIOR, ZSource, z_source_for

BATCH = 64
COVERED = 0.5  # prior_coverage at or above which a random z counts as covered


@torch.no_grad()
def _outputs(nets: Nets, a: torch.Tensor, b: torch.Tensor, z: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random-z outputs [M, N, C, H, W] and encoded outputs [M, C, H, W] (or None), in chunks, on the CPU."""
    outs, encs = [], []
    per = max(1, BATCH // z.shape[1])
    for i in range(0, a.shape[0], per):
        ai, bi, zi = a[i:i + per].to(device), b[i:i + per].to(device), z[i:i + per].to(device)
        outs.append(random_outputs(nets.G, ai, zi).cpu())
        enc = encoded_outputs(nets, ai, bi)
        if enc is not None:
            encs.append(enc.cpu())
    return torch.cat(outs), (torch.cat(encs) if encs else None)


@torch.no_grad()
def _posteriors(nets: Nets, b: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """E's (mu, logvar) [M, nz] for the ground truths, on the CPU; None without an encoder."""
    if nets.E is None:
        return None
    parts = [nets.E(b[i:i + BATCH].to(device)) for i in range(0, b.shape[0], BATCH)]
    return torch.cat([mu for mu, _ in parts]).cpu(), torch.cat([lv for _, lv in parts]).cpu()


LPIPS_NOTE = "diversity_lpips: not computed; give --lpips-weights PATH (AlexNet + LPIPS lin layers, safetensors)"
FID_NOTE = "fid: not computed; give --inception-weights PATH (pytorch-fid Inception-v3, safetensors)"


def evaluate(nets: Nets, dataset, nz: int, n_inputs: int, n_samples: int, seed: int, device,
             lpips: Callable | None = None, fid_net: Callable | None = None,
             weight_tags: dict[str, str] | None = None, variational: bool = True, source: ZSource = PRIOR) -> dict:
    """Measures over the first ``n_inputs`` pairs of ``dataset`` with ``n_samples`` random z ([nz]) each.
    ``lpips`` (x, y -> [N]) adds ``diversity_lpips``; ``fid_net`` (images -> [N, D]) adds ``fid``;
    each is None (with a line in ``notes``) when not given. ``variational``: the model trains E as a
    posterior (see ``ModelSpec``); otherwise E's variance is untrained and ``prior_coverage`` is None.
    ``source``: where the random codes come from (:class:`~bicycle.inference.zsource.ZSource`; the prior N(0, I),
    the paper's, by default)."""
    m = min(n_inputs, len(dataset))
    a, b = dataset.get_batch(list(range(m)))
    z = source.draw(m, n_samples, nz, seed)
    for _, net in nets.items():
        net.eval()
    outs, enc = _outputs(nets, a, b, z, device)
    result: dict = {
        "diversity_pixel_l1": float(consecutive_pair_l1(outs).mean()) if n_samples > 1 else None,
        "z_sensitivity": z_sensitivity(outs) if (m > 1 and n_samples > 1) else None,
        "encoded_recon_l1": float((enc - b).abs().mean()) if enc is not None else None,
    }
    posteriors = _posteriors(nets, b, device) if variational else None
    coverage = prior_coverage(*posteriors, z.reshape(m * n_samples, nz)).view(m, n_samples) if posteriors else None
    result["prior_coverage"] = float(coverage.mean()) if coverage is not None else None
    notes: list[str] = []
    if lpips is None:
        result["diversity_lpips"] = None
        notes.append(LPIPS_NOTE)
    elif n_samples < 2:
        result["diversity_lpips"] = None
        notes.append("diversity_lpips: not computed; needs --samples of at least 2")
    else:
        result["diversity_lpips"] = float(consecutive_pair_lpips(lpips, outs, device).mean())
    if fid_net is None:
        result["fid"] = None
        notes.append(FID_NOTE)
    elif m < 2:
        result["fid"] = None
        notes.append("fid: not computed; needs --inputs of at least 2")
    else:
        result["fid"] = fid(fid_net, outs.reshape(m * n_samples, *outs.shape[2:]), b, device)
    oracle = oracle_of(dataset)
    if oracle is not None:
        flat_a = a.unsqueeze(1).expand(m, n_samples, *a.shape[1:]).reshape(m * n_samples, *a.shape[1:])
        flat = outs.reshape(m * n_samples, *outs.shape[2:])
        valid = oracle.is_valid(flat_a, flat).view(m, n_samples)
        modes = oracle.mode_of(flat_a, flat).view(m, n_samples)
        probs = dataset.mode_probabilities(a) if hasattr(dataset, "mode_probabilities") else \
            torch.full((m, oracle.num_modes), 1.0 / oracle.num_modes)
        result.update(mode_statistics(valid, modes, probs))
        if enc is not None:
            ok = oracle.is_valid(a, enc) & (oracle.mode_of(a, enc) == oracle.mode_of(a, b))
            result["encoded_mode_rate"] = float(ok.double().mean())
        else:
            result["encoded_mode_rate"] = None
        result.update(_valid_by_coverage(valid, coverage))
    result["protocol"] = {"version": PROTOCOL_VERSION, "inputs": m, "samples": n_samples, "seed": seed,
                          "pairing": "consecutive pairs of each input's samples (N-1 per input)",
                          "z": _z_words(source), "z_source": source.name, "temperature": source.temperature,
                          "inputs_taken": f"the first {m} pairs of the evaluation split",
                          "lpips": LPIPS_VERSION if result["diversity_lpips"] is not None else None,
                          "fid": FID_VERSION if result["fid"] is not None else None}
    for key, tag in (weight_tags or {}).items():
        result["protocol"][f"{key}_weights"] = tag
    result["notes"] = notes
    result["z_source"] = source.name
    return result


def _z_words(source: ZSource) -> str:
    spread = "" if source.temperature == 1.0 else f", spread scaled by temperature {source.temperature:g}"
    if source.mixture is None:
        return f"N(0, I){spread}, drawn on the CPU from torch.Generator(seed)"
    return (f"the aggregate posterior of the training split, a mixture of {source.mixture.k} Gaussians "
            f"({source.origin or 'posterior.safetensors'}){spread}, drawn on the CPU from torch.Generator(seed), "
            f"input by input")


def _valid_by_coverage(valid: torch.Tensor, coverage: torch.Tensor | None) -> dict[str, float | None]:
    """valid, coverage: [M, N]. valid_rate where the prior is covered (coverage >= 0.5) and where not."""
    out: dict[str, float | None] = {"valid_rate_covered": None, "valid_rate_uncovered": None}
    if coverage is None:
        return out
    covered = coverage >= COVERED
    for key, sel in (("valid_rate_covered", covered), ("valid_rate_uncovered", ~covered)):
        out[key] = float(valid[sel].double().mean()) if bool(sel.any()) else None
    return out


def run_eval(checkpoint: str, data: str | None, n_inputs: int, n_samples: int, seed: int, json_path: Path | None,
             device: str, echo: Callable[[str], None] = print, lpips_weights: str | Path | None = None,
             inception_weights: str | Path | None = None, z_source: str = "prior", temperature: float = 1.0,
             weights: str = "auto") -> dict:
    """``bicycle eval``; ``weights``: which of the checkpoint's weights (:func:`~bicycle.inference.loading.pick_weights`)."""
    from bicycle.inference.perceptual import file_tag, load_inception, load_lpips
    lpips = load_lpips(lpips_weights) if lpips_weights is not None else None  # weight errors before the model
    fid_net = load_inception(inception_weights) if inception_weights is not None else None
    tags = {}
    if lpips is not None:
        tags["lpips"] = file_tag(lpips_weights)
    if fid_net is not None:
        tags["fid"] = file_tag(inception_weights)
    ckpt, nets, dev = load_model(checkpoint, device, weights)
    chosen = pick_weights(ckpt, weights)
    source, other = _sources(ckpt, z_source, temperature)  # a missing or stale posterior: an error before the data
    echo(describe_weights(ckpt, chosen))
    lpips = lpips.to(dev) if lpips is not None else None
    fid_net = fid_net.to(dev) if fid_net is not None else None
    cfg = ckpt.config
    if data is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data=data))
    registry = get_plugins().registry
    ds = build_eval_dataset(cfg, registry, "the evaluation", echo=echo, model_channels=True)
    check_channels(ds, cfg)
    by_source = {}
    for z in (source, other):
        if z is source or z.mixture is not None or source.mixture is not None:
            by_source[z.name] = evaluate(nets, ds, cfg.net.nz, n_inputs, n_samples, seed, dev, lpips=lpips,
                                         fid_net=fid_net, weight_tags=tags,
                                         variational=MODELS[cfg.train.model].variational, source=z)
    result = dict(by_source[source.name])
    result["by_z_source"] = {name: _measures(by_source[name]) if name in by_source else None
                             for name in ("prior", "posterior")}
    if "posterior" not in by_source:
        result["notes"] = result["notes"] + [f"by_z_source: no posterior ({other.why})"]
    result.update(checkpoint=str(ckpt.path), step=ckpt.step, model=cfg.train.model, data=cfg.data.data, weights=chosen)
    for key, value in result.items():
        if key not in ("protocol", "notes", "by_z_source"):
            echo(f"{key:>24}: {value:.4f}" if isinstance(value, float) else f"{key:>24}: {value}")
    for name, measures in result["by_z_source"].items():
        if measures is not None:
            echo(f"{'by_z_source ' + name:>24}: " + ", ".join(f"{k} {v:.4f}" for k, v in measures.items()
                                                              if isinstance(v, float)))
    for note in result["notes"]:
        echo(f"note: {note}")
    if json_path is not None:
        with writing(json_path):
            atomic_write_bytes(json_path, (json.dumps(result, indent=2) + "\n").encode())
    return result


def _sources(ckpt, z_source: str, temperature: float) -> tuple[ZSource, ZSource]:
    """(the source asked for, the other one of ``by_z_source``: the checkpoint's mixture, or the prior)."""
    from bicycle.inference.posterior import embedded_posterior

    def resolve(name: str) -> ZSource:
        embedded = embedded_posterior(ckpt.tensors, ckpt.path) if ckpt.weights_only and name != "prior" else None
        return z_source_for(name, temperature, ckpt.path, ckpt.step, ckpt.config.net.nz, ckpt.weights_only, embedded)

    chosen = resolve(z_source)
    if chosen.mixture is not None:
        return chosen, resolve("prior")
    try:
        return chosen, resolve("auto")
    except BicycleError as exc:
        return chosen, ZSource(temperature=temperature, why=f"auto: {exc}")


def _measures(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("protocol", "notes", "z_source")}
