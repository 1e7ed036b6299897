"""Pytest side of the conformance kit. In a plugin's ``tests/conftest.py``::

    from bicycle.testing.fixtures import *  # noqa: F401,F403

then subclass a base class in a test module (its name must start with ``Test``)::

    class TestMyBackbone(BackboneConformance):
        backbone = "mybackbone"          # looked up in the registry: built-ins + entry points

Each base class runs one test per check; a failing check's message names the component and the check;
the CUDA-graph check is skipped without a GPU.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bicycle.data.base import DatasetRequest
from bicycle.registry import GeneratorArgs, Registry
from bicycle.testing.cases import tiny_generator_args
from bicycle.testing.kit import check_backbone, check_dataset, check_injector
from bicycle.testing.report import Report

__all__ = ["BackboneConformance", "DatasetConformance", "InjectorConformance", "bicycle_registry",
           "one_torch_thread", "tiny_args"]


@pytest.fixture
def bicycle_registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    """A fresh registry with third-party autoloading on: built-ins + every installed ``bicycle`` entry point."""
    from bicycle import plugins
    monkeypatch.delenv(plugins.AUTOLOAD_ENV, raising=False)
    return plugins.build_plugins(autoload=True).registry


@pytest.fixture
def tiny_args() -> GeneratorArgs:
    """GeneratorArgs: 1 -> 3 channels, nz 8, 32 px, ngf 8, no dropout."""
    return tiny_generator_args()


@pytest.fixture
def one_torch_thread():
    """Run a test on one intra-op thread (small convolutions are faster so on busy machines)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _assert_check(report: Report, check: str) -> None:
    picked = [r for r in report.results if r.check == check]
    assert picked, f"the kit ran no {check!r} check"
    failed = [r for r in picked if r.status == "failed"]
    assert not failed, "\n".join(r.line() for r in failed)
    if all(r.status == "skipped" for r in picked):
        pytest.skip(picked[0].detail)


class _GeneratorConformance:
    """Shared test methods; subclasses define ``_report(registry)``."""

    image_size: int = 32
    in_channels: int = 1
    out_channels: int = 3
    nz: int = 8
    ngf: int = 8

    def generator_args(self) -> GeneratorArgs:
        return tiny_generator_args(self.in_channels, self.out_channels, self.nz, self.image_size, self.ngf)

    def _report(self, registry: Registry, skip: tuple[str, ...]) -> Report:
        raise NotImplementedError

    def _check(self, registry: Registry, check: str) -> None:
        others = ("output_shape_and_range", "z_sensitivity", "gradient_flow", "safetensors_round_trip",
                  "determinism", "batch_merge", "cuda_graph", "injection_contract")
        _assert_check(self._report(registry, tuple(c for c in others if c != check)), check)

    def test_output_shape_and_range(self, bicycle_registry: Registry, one_torch_thread: None) -> None:
        self._check(bicycle_registry, "output_shape_and_range")

    def test_z_sensitivity(self, bicycle_registry: Registry, one_torch_thread: None) -> None:
        self._check(bicycle_registry, "z_sensitivity")

    def test_gradient_flow(self, bicycle_registry: Registry, one_torch_thread: None) -> None:
        self._check(bicycle_registry, "gradient_flow")

    def test_safetensors_round_trip(self, bicycle_registry: Registry, one_torch_thread: None) -> None:
        self._check(bicycle_registry, "safetensors_round_trip")

    def test_determinism(self, bicycle_registry: Registry, one_torch_thread: None) -> None:
        self._check(bicycle_registry, "determinism")

    def test_batch_merge(self, bicycle_registry: Registry, one_torch_thread: None) -> None:
        self._check(bicycle_registry, "batch_merge")

    def test_injection_contract(self, bicycle_registry: Registry, one_torch_thread: None) -> None:
        self._check(bicycle_registry, "injection_contract")

    def test_cuda_graph(self, bicycle_registry: Registry) -> None:
        if not torch.cuda.is_available():
            pytest.skip("CUDA-graph capture needs a CUDA device")
        self._check(bicycle_registry, "cuda_graph")


class BackboneConformance(_GeneratorConformance):
    """Set ``backbone`` (a registered name) and optionally ``injectors`` (names) and ``image_size``."""

    backbone: str = ""
    injectors: tuple[str, ...] = ("input", "all")

    def _report(self, registry: Registry, skip: tuple[str, ...]) -> Report:
        return check_backbone(registry.backbone(self.backbone), [registry.injector(n) for n in self.injectors],
                              self.generator_args(), registry=registry, skip=skip)

    def test_size_declarations(self, bicycle_registry: Registry) -> None:
        _assert_check(self._report(bicycle_registry, ("output_shape_and_range", "z_sensitivity", "gradient_flow",
                                                      "safetensors_round_trip", "determinism", "cuda_graph",
                                                      "injection_contract")), "size_declarations")


class InjectorConformance(_GeneratorConformance):
    """Set ``injector`` (a registered name) and optionally ``backbones`` (names) and ``image_size``."""

    injector: str = ""
    backbones: tuple[str, ...] = ("unet",)

    def _report(self, registry: Registry, skip: tuple[str, ...]) -> Report:
        return check_injector(registry.injector(self.injector), [registry.backbone(n) for n in self.backbones],
                              self.generator_args(), registry=registry, skip=skip)

    def test_injector_standalone(self, bicycle_registry: Registry, one_torch_thread: None) -> None:
        report = check_injector(bicycle_registry.injector(self.injector), [], registry=bicycle_registry)
        _assert_check(report, "injector_standalone")


class DatasetConformance:
    """Set ``dataset`` (a registered name); override ``dataset_request`` for folder datasets."""

    dataset: str = ""
    image_size: int = 32

    @pytest.fixture
    def dataset_request(self, tmp_path: Path) -> DatasetRequest:
        return DatasetRequest(split="train", image_size=self.image_size)

    @pytest.fixture
    def dataset_report(self, bicycle_registry: Registry, dataset_request: DatasetRequest) -> Report:
        return check_dataset(bicycle_registry.dataset(self.dataset), dataset_request)

    def test_protocol(self, dataset_report: Report) -> None:
        _assert_check(dataset_report, "protocol")

    def test_pairs_dtype_and_range(self, dataset_report: Report) -> None:
        _assert_check(dataset_report, "pairs_dtype_and_range")

    def test_pair_alignment(self, dataset_report: Report) -> None:
        _assert_check(dataset_report, "pair_alignment")

    def test_determinism(self, dataset_report: Report) -> None:
        _assert_check(dataset_report, "determinism")

    def test_oracle(self, dataset_report: Report) -> None:
        _assert_check(dataset_report, "oracle")
