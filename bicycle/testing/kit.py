"""The conformance kit's entry points: run every check on a backbone, an injector or a dataset and get a
:class:`Report` (``.raise_for_failures()`` to assert). Plain Python: no pytest needed."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from bicycle.data.base import DatasetRequest
from bicycle.registry import BackboneSpec, DatasetSpec, GeneratorArgs, InjectionPoint, InjectorSpec, Registry
from bicycle.testing.cases import GeneratorCase, tiny_generator_args
from bicycle.testing.contract import check_injection_contract, check_injector_standalone
from bicycle.testing.dataset import (build_dataset, check_dataset_determinism, check_oracle, check_pair_alignment,
                                     check_pairs_dtype_and_range)
from bicycle.testing.generator import GENERATOR_CHECKS
from bicycle.testing.report import CheckSkipped, ConformanceError, Report

BUILTIN_INJECTORS = ("input", "all")
BUILTIN_DECODER_INJECTORS = ("all-film",)  # checked too with a backbone that offers decoder points
BUILTIN_BACKBONE = "unet"


def default_registry() -> Registry:
    """The registry of the current plugin set (built-ins + entry points unless autoload is disabled)."""
    from bicycle.plugins import get_plugins
    return get_plugins().registry


def check_generator(backbone: BackboneSpec, injector: InjectorSpec, args: GeneratorArgs | None = None,
                    *, batch: int = 2, skip: Iterable[str] = ()) -> Report:
    """Every generator check on ``backbone.build(args, injector)``: output shape and range, z sensitivity,
    gradient flow, safetensors round trip, determinism, the injection contract, CUDA graph (GPU only)."""
    args = args or tiny_generator_args()
    case = GeneratorCase(backbone, injector, args, batch)
    report = Report()
    problem = backbone.check_size(args.image_size)
    if problem:
        raise ConformanceError(f"backbone {backbone.name!r} refuses the test size {args.image_size}: {problem}; "
                               "pass GeneratorArgs with a size it supports")
    checks = {**GENERATOR_CHECKS, "injection_contract": check_injection_contract}
    unfit = injector.decoder and not backbone.decoder_points

    def refused(case: GeneratorCase) -> str:
        raise CheckSkipped(f"injector {injector.name!r} needs decoder points, which backbone {backbone.name!r} does "
                           "not offer (bicycle refuses the pair)")

    for name, fn in checks.items():
        if name not in set(skip):
            report.run(name, case.subject, lambda fn=refused if unfit else fn: fn(case))
    return report


def check_backbone(backbone: BackboneSpec, injectors: Sequence[InjectorSpec] | None = None,
                   args: GeneratorArgs | None = None, *, registry: Registry | None = None,
                   skip: Iterable[str] = ()) -> Report:
    """The generator checks with each of ``injectors`` (default: the built-in "input" and "all", and "all-film"
    when the backbone offers decoder points), plus the backbone's size declarations."""
    if injectors is None:
        reg = registry or default_registry()
        names = BUILTIN_INJECTORS + (BUILTIN_DECODER_INJECTORS if backbone.decoder_points else ())
        injectors = [reg.injector(n) for n in names]
    args = args or tiny_generator_args()
    report = Report()

    def sizes() -> str:
        d = backbone.default_image_size
        if d is not None and backbone.check_size(d) is not None:
            raise ConformanceError(f"backbone {backbone.name!r}: its default_image_size {d} fails its own check_size: {backbone.check_size(d)}")
        answer = backbone.check_size(args.image_size)
        if answer is not None and not isinstance(answer, str):
            raise ConformanceError(f"backbone {backbone.name!r}: check_size must return None or a str, got {answer!r}")
        return ""

    report.run("size_declarations", f"backbone {backbone.name!r}", sizes)
    for inj in injectors:
        report.extend(check_generator(backbone, inj, args, skip=skip))
    return report


def check_injector(injector: InjectorSpec, backbones: Sequence[BackboneSpec] | None = None,
                   args: GeneratorArgs | None = None, *, points: Sequence[InjectionPoint] | None = None,
                   nz: int = 8, registry: Registry | None = None, skip: Iterable[str] = ()) -> Report:
    """The injector driven alone at ``points`` (default: a 5-level U-Net's, with its decoder points when the
    injector asks for them), then the generator checks inside each of ``backbones``
    (default: the built-in "unet")."""
    if backbones is None:
        backbones = [(registry or default_registry()).backbone(BUILTIN_BACKBONE)]
    report = Report()
    report.run("injector_standalone", f"injector {injector.name!r}",
               lambda: check_injector_standalone(injector, points, nz))
    for bb in backbones:
        report.extend(check_generator(bb, injector, args, skip=skip))
    return report


def check_dataset(spec: DatasetSpec, request: DatasetRequest | None = None) -> Report:
    """Protocol, dtype/range, pair alignment, determinism and (when provided) the oracle's consistency.
    ``request`` defaults to the train split at 32 px (folder datasets need one with a path)."""
    request = request or DatasetRequest(split="train", image_size=32)
    subject = f"dataset {spec.name!r} ({request.split}, {request.image_size} px)"
    report = Report()
    built: list = []
    report.run("protocol", subject, lambda: built.append(build_dataset(spec, request)) or f"{len(built[0])} items")
    if not built:
        return report
    ds = built[0]
    report.run("pairs_dtype_and_range", subject, lambda: check_pairs_dtype_and_range(spec, ds))
    report.run("pair_alignment", subject, lambda: check_pair_alignment(spec, ds))
    report.run("determinism", subject, lambda: check_dataset_determinism(spec, request))
    report.run("oracle", subject, lambda: check_oracle(spec, ds))
    return report
