"""pytest-benchmark suites for the CPU ops (C++ vs reference). Not part of the default test run.

    pytest benchmarks/test_ops_cpu_bench.py --benchmark-group-by=param:size,func
"""
from __future__ import annotations

import pytest
import torch

from bicycle import ops

pytest.importorskip("bicycle._C", reason="the C++ extension did not build")
SIZES = [1 << 16, 1 << 20, 1 << 22]
IMPLS = ["ref", "cpp"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", SIZES)
def test_reparam_kl_fwd(benchmark, size, impl):
    mu, lv, eps = (torch.randn(size // 8, 8) for _ in range(3))
    benchmark(ops.reparam_kl, mu, lv, eps, 0.01, impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", SIZES)
def test_reparam_kl_fwd_bwd(benchmark, size, impl):
    mu, lv = (torch.randn(size // 8, 8, requires_grad=True) for _ in range(2))
    eps, gz, gkl = torch.randn(size // 8, 8), torch.randn(size // 8, 8), torch.ones(())

    def step():
        return torch.autograd.grad(ops.reparam_kl(mu, lv, eps, 0.01, impl=impl), (mu, lv), (gz, gkl))

    benchmark(step)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", SIZES)
def test_lsgan_fwd_bwd(benchmark, size, impl):
    h = int((size * 0.8) ** 0.5)
    preds = [torch.randn(1, 1, h, h, requires_grad=True), torch.randn(1, 1, h // 2, h // 2, requires_grad=True)]
    benchmark(lambda: torch.autograd.grad(ops.lsgan(preds, 1.0, impl=impl), preds))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", SIZES)
def test_lsgan_d_fwd_bwd(benchmark, size, impl):
    h = int((size * 0.4) ** 0.5)
    fake = [torch.randn(1, 1, h, h, requires_grad=True), torch.randn(1, 1, h // 2, h // 2, requires_grad=True)]
    real = [torch.randn(1, 1, h, h, requires_grad=True), torch.randn(1, 1, h // 2, h // 2, requires_grad=True)]
    benchmark(lambda: torch.autograd.grad(ops.lsgan_d(fake, real, impl=impl), fake + real))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch", [2, 8])
def test_prepare_batch(benchmark, batch, impl):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 286, 286, 3), dtype=torch.uint8, generator=g)
    top, left = torch.randint(0, 31, (batch,), generator=g), torch.randint(0, 31, (batch,), generator=g)
    flip = torch.rand(batch, generator=g) < 0.5
    benchmark(ops.prepare_batch, images, top, left, flip, 256, impl=impl)
