"""bicycle's conformance kit for plugin authors (importable without pytest).

    from bicycle.testing import check_backbone, check_injector, check_dataset
    check_backbone(registry.backbone("resnet6")).raise_for_failures()

Pytest users: ``from bicycle.testing.fixtures import *`` in a conftest.py gives fixtures and the
``BackboneConformance`` / ``InjectorConformance`` / ``DatasetConformance`` base classes.
Observer plugins: :func:`simulate_training` calls their hooks as a training run would.
See docs/plugins.md.
"""
from bicycle.testing.cases import GeneratorCase, tiny_generator_args
from bicycle.testing.contract import (DEFAULT_DECODER_POINTS, DEFAULT_POINTS, check_injection_contract,
                                      check_injector_standalone, default_points)
from bicycle.testing.dataset import (check_dataset_determinism, check_oracle, check_pair_alignment,
                                     check_pairs_dtype_and_range)
from bicycle.testing.generator import (check_batch_merge, check_cuda_graph, check_determinism, check_gradient_flow,
                                       check_output_shape_and_range, check_safetensors_round_trip, check_z_sensitivity)
from bicycle.testing.kit import check_backbone, check_dataset, check_generator, check_injector, default_registry
from bicycle.testing.observers import HookCall, simulate_training
from bicycle.testing.report import CheckResult, CheckSkipped, ConformanceError, Report

__all__ = [
    "CheckResult", "CheckSkipped", "ConformanceError", "DEFAULT_DECODER_POINTS", "DEFAULT_POINTS", "GeneratorCase", "HookCall", "Report",
    "check_backbone", "check_batch_merge", "check_cuda_graph", "check_dataset", "check_dataset_determinism", "check_determinism",
    "check_generator", "check_gradient_flow", "check_injection_contract", "check_injector",
    "check_injector_standalone", "check_oracle", "check_output_shape_and_range", "check_pair_alignment",
    "check_pairs_dtype_and_range", "check_safetensors_round_trip", "check_z_sensitivity", "default_points",
    "default_registry",
    "simulate_training", "tiny_generator_args",
]
