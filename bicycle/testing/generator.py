"""Checks of a generator (a backbone with an injector): each returns a detail string or raises
:class:`~bicycle.testing.report.ConformanceError` (or CheckSkipped). Shapes: A [N, in, S, S],
z [N, nz], G(A, z) = B [N, out, S, S] in [-1, 1]."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from bicycle.nets import couples_samples
from bicycle.testing.cases import GeneratorCase
from bicycle.testing.report import CheckSkipped, ConformanceError

RANGE_TOLERANCE = 1e-5
Z_RELATIVE = 1e-6


def _forward(g: nn.Module, a: Tensor, z: Tensor) -> Tensor:
    with torch.no_grad():
        return g(a, z)


def check_output_shape_and_range(case: GeneratorCase) -> str:
    """G(A, z) is float32 [N, out, S, S], finite, within [-1, 1]."""
    g = case.build().eval()
    out = _forward(g, *case.inputs())
    if not isinstance(out, Tensor):
        raise ConformanceError(f"{case.subject}: forward returned {type(out).__name__}, expected a Tensor")
    if tuple(out.shape) != case.expected_shape():
        raise ConformanceError(f"{case.subject}: output shape {tuple(out.shape)}, expected {case.expected_shape()}")
    if out.dtype != torch.float32:
        raise ConformanceError(f"{case.subject}: output dtype {out.dtype}, expected torch.float32")
    if not torch.isfinite(out).all():
        raise ConformanceError(f"{case.subject}: output has NaN or Inf")
    lo, hi = out.min().item(), out.max().item()
    if lo < -1 - RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        raise ConformanceError(f"{case.subject}: output range [{lo:.4g}, {hi:.4g}] is outside [-1, 1] (end with tanh)")
    return f"shape {tuple(out.shape)}, range [{lo:.3g}, {hi:.3g}]"


def check_z_sensitivity(case: GeneratorCase) -> str:
    """Another z changes the output; changing sample 0's z leaves the other samples' outputs alone."""
    if case.batch < 2:
        raise ConformanceError(f"{case.subject}: the z check needs a batch of at least 2")
    g = case.build().eval()
    a, z = case.inputs()
    out = _forward(g, a, z)
    z2 = z.clone()
    z2[0] = torch.randn(case.args.nz, generator=torch.Generator().manual_seed(99)) * 2
    out2 = _forward(g, a, z2)
    scale = out.abs().max().clamp_min(1e-6).item()
    change = (out2[0] - out[0]).abs().max().item()
    if change <= Z_RELATIVE * scale:
        raise ConformanceError(f"{case.subject}: the output does not depend on z (max change {change:.3g} "
                               f"for output scale {scale:.3g}); is the injector applied?")
    leak = (out2[1:] - out[1:]).abs().max().item()
    if leak > 1e-5 * max(1.0, scale):
        raise ConformanceError(f"{case.subject}: changing z of sample 0 changed the output of other samples "
                               f"by {leak:.3g} (in eval mode samples must be independent)")
    return f"max change {change:.3g} (output scale {scale:.3g})"


def check_gradient_flow(case: GeneratorCase) -> str:
    """In train mode, a loss on G(A, z) gives every trainable parameter (and z) a finite, non-zero gradient."""
    g = case.build().train()
    a, z = case.inputs()
    z.requires_grad_(True)
    out = g(a, z)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    (out * weights).sum().backward()
    params = [(n, p) for n, p in g.named_parameters() if p.requires_grad]
    if not params:
        raise ConformanceError(f"{case.subject}: the generator has no trainable parameters")
    missing = [n for n, p in params if p.grad is None]
    bad = [n for n, p in params if p.grad is not None and not torch.isfinite(p.grad).all()]
    zero = [n for n, p in params if p.grad is not None and not p.grad.abs().max() > 0]
    problems = []
    if missing:
        problems.append(f"no gradient reaches {', '.join(missing[:8])}" + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))
    if bad:
        problems.append(f"non-finite gradient in {', '.join(bad[:8])}")
    if zero:
        problems.append(f"zero gradient in {', '.join(zero[:8])}")
    if z.grad is None or not z.grad.abs().max() > 0:
        problems.append("no gradient reaches z")
    if problems:
        raise ConformanceError(f"{case.subject}: " + "; ".join(problems))
    return f"{len(params)} parameter tensors and z receive gradients"


def check_batch_merge(case: GeneratorCase) -> str:
    """In train mode, one call on two concatenated batches gives what two calls give: the training step
    merges G(A1, z_enc) and G(A1, z_rand) into one call (``bicycle.models.call_twice``). A generator with
    torch BatchNorm layers passes as is: the step detects them and calls it twice."""
    g = case.build().train()
    if couples_samples(g):
        return "has BatchNorm: the training step calls it twice"
    (a1, z1), (a2, z2) = case.inputs(0), case.inputs(1)
    with torch.no_grad():
        merged = g(torch.cat([a1, a2]), torch.cat([z1, z2]))
        separate = torch.cat([g(a1, z1), g(a2, z2)])
    if not torch.allclose(merged, separate, rtol=1e-4, atol=1e-5):
        diff = (merged - separate).abs().max().item()
        raise ConformanceError(f"{case.subject}: in train mode one call on two batches differs from two calls by "
                               f"{diff:.3g}; the training step merges G's two calls, so samples must be independent "
                               f"(batch statistics only through torch.nn BatchNorm layers, which it detects)")
    return "one call on two batches = two calls"


def state_tensors(module: nn.Module) -> dict[str, Tensor]:
    """The state dict as bicycle's checkpoints store it (detached, CPU, contiguous)."""
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def check_safetensors_round_trip(case: GeneratorCase) -> str:
    """The state dict saves as safetensors (no shared storage, tensors only) and, loaded strictly into a
    generator built under another seed, reproduces the outputs exactly."""
    g1 = case.build(seed=0).eval()
    g2 = case.build(seed=1).eval()
    tensors = state_tensors(g1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "g.safetensors"
        try:
            save_file(tensors, str(path))
        except Exception as exc:
            raise ConformanceError(f"{case.subject}: the state dict cannot be saved as safetensors: {exc}") from exc
        loaded = load_file(str(path))
    result = g2.load_state_dict(loaded, strict=True)
    if getattr(result, "missing_keys", None) or getattr(result, "unexpected_keys", None):
        raise ConformanceError(f"{case.subject}: strict load reported {result}")
    a, z = case.inputs()
    if not torch.equal(_forward(g1, a, z), _forward(g2, a, z)):
        raise ConformanceError(f"{case.subject}: a generator loaded from safetensors gives different outputs")
    return f"{len(tensors)} tensors"


def check_determinism(case: GeneratorCase, seed: int = 0) -> str:
    """The same seed builds the same weights; the same inputs give bit-identical outputs."""
    g1, g2 = case.build(seed).eval(), case.build(seed).eval()
    s1, s2 = state_tensors(g1), state_tensors(g2)
    if s1.keys() != s2.keys():
        raise ConformanceError(f"{case.subject}: two builds have different state dict keys")
    differ = [k for k in s1 if not torch.equal(s1[k], s2[k])]
    if differ:
        raise ConformanceError(f"{case.subject}: under seed {seed}, two builds differ in {', '.join(differ[:8])}")
    a, z = case.inputs()
    o1, o2, o3 = _forward(g1, a, z), _forward(g1, a, z), _forward(g2, a, z)
    if not (torch.equal(o1, o2) and torch.equal(o1, o3)):
        raise ConformanceError(f"{case.subject}: the same inputs give different outputs")
    return ""


def check_cuda_graph(case: GeneratorCase) -> str:
    """On a GPU: forward + backward captured in a CUDA graph and replayed on new inputs match eager."""
    if not torch.cuda.is_available():
        raise CheckSkipped("needs a CUDA device")
    dev = torch.device("cuda")
    g = case.build().to(dev).train()
    static_a, static_z = case.inputs(0, dev)
    weights = torch.randn(case.expected_shape(), generator=torch.Generator().manual_seed(7)).to(dev)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            g.zero_grad(set_to_none=True)
            (g(static_a, static_z) * weights).sum().backward()
    torch.cuda.current_stream().wait_stream(side)
    g.zero_grad(set_to_none=True)
    from bicycle.train.graph import capturing

    graph = torch.cuda.CUDAGraph()
    try:
        with capturing(graph):
            static_out = g(static_a, static_z)
            (static_out * weights).sum().backward()
    except Exception as exc:
        raise ConformanceError(f"{case.subject}: cannot be captured in a CUDA graph: {type(exc).__name__}: {exc}") from exc
    new_a, new_z = case.inputs(1, dev)
    static_a.copy_(new_a)
    static_z.copy_(new_z)
    graph.replay()
    torch.cuda.synchronize()
    replay_out = static_out.clone()
    replay_grads = {n: p.grad.clone() for n, p in g.named_parameters() if p.grad is not None}
    g.zero_grad(set_to_none=True)
    eager = g(new_a, new_z)
    (eager * weights).sum().backward()
    if not torch.allclose(replay_out, eager, rtol=1e-3, atol=1e-4):
        diff = (replay_out - eager).abs().max().item()
        raise ConformanceError(f"{case.subject}: CUDA-graph replay output differs from eager by {diff:.3g}")
    off = [n for n, p in g.named_parameters()
           if n in replay_grads and not torch.allclose(replay_grads[n], p.grad, rtol=1e-3, atol=1e-4)]
    if off:
        raise ConformanceError(f"{case.subject}: CUDA-graph replay gradients differ from eager in {', '.join(off[:8])}")
    return "replay matches eager"


GENERATOR_CHECKS = {
    "output_shape_and_range": check_output_shape_and_range,
    "z_sensitivity": check_z_sensitivity,
    "gradient_flow": check_gradient_flow,
    "safetensors_round_trip": check_safetensors_round_trip,
    "determinism": check_determinism,
    "batch_merge": check_batch_merge,
    "cuda_graph": check_cuda_graph,
}
