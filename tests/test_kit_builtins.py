"""bicycle's own components pass the conformance kit (bicycle.testing), and the kit catches broken ones."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from bicycle.data.base import DatasetRequest
from bicycle.registry import BackboneSpec, InjectionPoint, Injector, InjectorSpec
from bicycle.testing import check_backbone, check_dataset, check_generator, check_injector, tiny_generator_args
from bicycle.testing.fixtures import (BackboneConformance, DatasetConformance, InjectorConformance,  # noqa: F401
                                      bicycle_registry, one_torch_thread)


class TestUnet(BackboneConformance):
    backbone = "unet"


class TestUnet128(BackboneConformance):
    backbone = "unet128"
    injectors = ("all",)
    image_size = 128
    ngf = 4


class TestInputInjector(InjectorConformance):
    injector = "input"


class TestAllInjector(InjectorConformance):
    injector = "all"


class TestAllFilmInjector(InjectorConformance):
    injector = "all-film"


class TestShapes(DatasetConformance):
    dataset = "shapes"


class TestAligned(DatasetConformance):
    dataset = "aligned"

    @pytest.fixture
    def dataset_request(self, tmp_path: Path) -> DatasetRequest:
        from data_helpers import make_aligned_dataset
        root = make_aligned_dataset(tmp_path / "ab", n_train=3, n_val=1, size=40)
        return DatasetRequest(split="train", image_size=32, path=str(root), options=(("progress", False),))


def test_builtin_report_has_every_check(bicycle_registry, one_torch_thread):
    report = check_backbone(bicycle_registry.backbone("unet"), [bicycle_registry.injector("all")], registry=bicycle_registry)
    assert set(report.checks()) == {"size_declarations", "output_shape_and_range", "z_sensitivity", "gradient_flow",
                                    "safetensors_round_trip", "determinism", "batch_merge", "cuda_graph", "injection_contract"}
    report.raise_for_failures()
    assert ("cuda_graph" in report.checks("skipped")) == (not torch.cuda.is_available())


# -- the kit catches what it claims to catch ----------------------------------------------------------
class _IgnoresZ(Injector):
    def __init__(self, points: Sequence[InjectionPoint], nz: int) -> None:
        super().__init__()
        self._ch = {p.index: p.channels for p in points}

    def channels_after(self, index: int) -> int:
        return self._ch[index]

    def forward(self, index: int, x: Tensor, z: Tensor) -> Tensor:
        return x


class _Broken(nn.Module):
    """Out of range (no tanh), a parameter no gradient reaches, mixes samples, skips point 1."""

    def __init__(self, args, injector: InjectorSpec) -> None:
        super().__init__()
        s = args.image_size
        self.injector = injector.build([InjectionPoint(0, args.in_channels, s, s), InjectionPoint(1, 4, s, s)], args.nz)
        self.conv = nn.Conv2d(self.injector.channels_after(0), args.out_channels, 3, 1, 1)
        self.unused = nn.Parameter(torch.zeros(3))

    def forward(self, a: Tensor, z: Tensor) -> Tensor:
        out = self.conv(self.injector(0, a, z)) * 100
        return out + out.mean(0, keepdim=True)


def _broken_backbone() -> BackboneSpec:
    return BackboneSpec("broken", _Broken, lambda s: None)


def test_kit_reports_each_broken_property(bicycle_registry, one_torch_thread):
    report = check_generator(_broken_backbone(), bicycle_registry.injector("input"), tiny_generator_args())
    failed = {r.check: r.detail for r in report.failures}
    assert "outside [-1, 1]" in failed["output_shape_and_range"]
    assert "other samples" in failed["z_sensitivity"]
    assert "unused" in failed["gradient_flow"]
    assert "called the injector at points [0]" in failed["injection_contract"]
    assert "differs from two calls" in failed["batch_merge"]
    assert {"safetensors_round_trip", "determinism"} <= set(report.checks("passed"))
    with pytest.raises(AssertionError, match="backbone 'broken' \\+ injector 'input'"):
        report.raise_for_failures()


def test_batch_merge_passes_a_batch_norm_generator_because_the_step_calls_it_twice(bicycle_registry, one_torch_thread):
    report = check_generator(bicycle_registry.backbone("unet"), bicycle_registry.injector("all"),
                             tiny_generator_args(norm="batch"))
    passed = {r.check: r.detail for r in report.results if r.status == "passed"}
    assert "calls it twice" in passed["batch_merge"]


class _DecoderConcat(Injector):
    """Concatenates z at the decoder points only (changes their channels): the U-Net must build for it."""

    def __init__(self, points: Sequence[InjectionPoint], nz: int) -> None:
        super().__init__()
        self.nz = nz
        self._ch = {p.index: p.channels + (nz if p.decoder else 0) for p in points}
        self._decoder = {p.index for p in points if p.decoder}

    def channels_after(self, index: int) -> int:
        return self._ch[index]

    def forward(self, index: int, x: Tensor, z: Tensor) -> Tensor:
        if index not in self._decoder:
            return x
        n, _, h, w = x.shape
        return torch.cat([x, z.view(n, self.nz, 1, 1).expand(n, self.nz, h, w)], 1)


def test_a_decoder_injector_that_changes_channels_passes_inside_the_unet(bicycle_registry, one_torch_thread):
    spec = InjectorSpec("dec_cat", _DecoderConcat, decoder=True)
    report = check_injector(spec, registry=bicycle_registry)
    report.raise_for_failures()
    assert "9 points" in {r.check: r.detail for r in report.results}["injection_contract"]


def test_kit_skips_a_decoder_injector_in_a_backbone_without_decoder_points(bicycle_registry, one_torch_thread):
    from bicycle.nn.unet import UNetGenerator

    plain = BackboneSpec("plain", lambda args, inj: UNetGenerator(args, inj, 5), lambda s: None)  # no decoder_points
    report = check_generator(plain, bicycle_registry.injector("all-film"), tiny_generator_args())
    assert not report.failures and set(report.checks("skipped")) == set(report.checks())
    assert "does not offer" in report.results[0].detail


@pytest.mark.parametrize("injector, declares, message", [
    ("all", True, "did not ask for them"),         # decoder points forced on an injector that did not ask
    ("all-film", False, "none were declared"),     # a decoder request ignored
])
def test_kit_catches_a_backbone_that_gets_decoder_points_wrong(bicycle_registry, one_torch_thread, injector, declares,
                                                               message):
    from bicycle.nn.unet import UNetGenerator

    def wrong(args, inj):
        return UNetGenerator(args, dataclasses.replace(inj, decoder=declares), 5)

    report = check_generator(BackboneSpec("wrong", wrong, lambda s: None, decoder_points=True),
                             bicycle_registry.injector(injector), tiny_generator_args())
    assert message in {r.check: r.detail for r in report.failures}["injection_contract"]


def test_kit_catches_an_injector_that_ignores_z(bicycle_registry, one_torch_thread):
    report = check_injector(InjectorSpec("deaf", _IgnoresZ), registry=bicycle_registry)
    failed = {r.check: r.detail for r in report.failures}
    assert "does not depend on z" in failed["injector_standalone"]
    assert "does not depend on z" in failed["z_sensitivity"]


def test_kit_catches_a_dataset_with_a_wrong_range_and_a_lying_oracle_flag(bicycle_registry):
    from bicycle.data.shapes import ShapesDataset
    from bicycle.registry import DatasetSpec

    class Loud(ShapesDataset):
        def __getitem__(self, index):
            a, b = super().__getitem__(index)
            return a * 2, b

    spec = DatasetSpec("loud", lambda req: Loud(req.image_size, req.split, req.seed, 6, length=8), has_oracle=False)
    failed = {r.check: r.detail for r in check_dataset(spec).failures}
    assert "outside [-1, 1]" in failed["pairs_dtype_and_range"]
    assert "has_oracle=False but the dataset provides" in failed["oracle"]


class _Spy:
    """An observer implementing every training hook, with the arguments it reads."""

    __name__ = "spy"

    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def bicycle_train_start(self, start_step: int) -> None:
        self.seen.append(("start", start_step))

    def bicycle_train_step(self, step: int, metrics: dict[str, float]) -> None:
        self.seen.append(("step", step))

    def bicycle_train_sample(self, step: int, image, measures: dict[str, float]) -> None:
        self.seen.append(("sample", step, image.shape, image.dtype.name, sorted(measures)))

    def bicycle_train_checkpoint(self, step: int) -> None:
        self.seen.append(("checkpoint", step))

    def bicycle_train_end(self, step: int, interrupted: bool) -> None:
        self.seen.append(("end", step, interrupted))


def test_simulate_training_calls_the_observer_hooks_in_the_loops_order(tmp_path: Path):
    from bicycle.testing import simulate_training
    from bicycle.testing.observers import GRID_SHAPE

    spy = _Spy()
    calls = simulate_training(spy, tmp_path, steps=4)
    def sample(step: int) -> tuple:
        return ("sample", step, GRID_SHAPE, "uint8", ["modes_per_input", "valid_rate", "z_sensitivity"])

    assert spy.seen == [("start", 0), ("step", 2), sample(2), ("checkpoint", 2),
                        ("step", 4), sample(4), ("checkpoint", 4), ("end", 4, False)]
    assert [c.hook for c in calls] == ["bicycle_train_" + s[0] for s in spy.seen]
    assert {"config", "run_dir", "step", "metrics"} <= set(calls[1].kwargs)  # the whole signature, recorded
    assert {"G_L1", "lr", "lambda_kl", "sec_per_step"} <= set(calls[1].kwargs["metrics"])

    spy.seen.clear()
    simulate_training(spy, tmp_path, steps=6, start_step=4, crash=True, oracle=False)
    assert spy.seen == [("start", 4), ("step", 6), ("sample", 6, GRID_SHAPE, "uint8", ["z_sensitivity"])]


def test_simulate_training_refuses_an_argument_the_hook_does_not_have(tmp_path: Path):
    from bicycle.testing import simulate_training

    class Typo:
        __name__ = "typo"

        def bicycle_train_sample(self, step, grid):
            pass

    with pytest.raises(Exception, match="grid"):
        simulate_training(Typo(), tmp_path, steps=2)
