"""Built-in datasets: the procedural ``shapes`` dataset and its harder variants (``shapes-fillbg``,
``shapes-outline-big``, ``shapes-unequal`` and the held-out ``shapes-outline``; all with exact oracles,
see :mod:`bicycle.data.shape_variants`), the ``procedural:N`` family (:mod:`bicycle.data.procedural`) and
``aligned`` folders."""
from __future__ import annotations

from functools import partial

from bicycle.data.base import DatasetRequest
from bicycle.hookspecs import hookimpl
from bicycle.registry import DatasetSpec


def _shapes(request: DatasetRequest):
    from bicycle.data.shapes import ShapesDataset
    return ShapesDataset.from_request(request)


def _shape_variant(name: str, request: DatasetRequest):
    from bicycle.data.shape_variants import build_variant
    return build_variant(name, request)


def _variant_specs() -> list[DatasetSpec]:
    from bicycle.data.shape_variants import VARIANTS
    return [DatasetSpec(name, partial(_shape_variant, name), v.description, needs_path=False, has_oracle=True)
            for name, v in VARIANTS.items()]


def _procedural(request: DatasetRequest):
    from bicycle.data.procedural import build_procedural
    return build_procedural(request)


def _aligned(request: DatasetRequest):
    from bicycle.data.aligned import build_aligned
    return build_aligned(request)


@hookimpl
def bicycle_datasets() -> list[DatasetSpec]:
    return [
        DatasetSpec("shapes", _shapes, "procedural silhouettes -> the shape in one of K colours (no files; exact oracle)",
                    needs_path=False, has_oracle=True),
        *_variant_specs(),
        DatasetSpec("procedural", _procedural, "a family of tasks, --data procedural:N for task N: silhouette, outline or "
                    "edge map -> 2-8 fills x 1-4 backgrounds with noise and shading (no files; exact oracle)",
                    needs_path=False, has_oracle=True),
        DatasetSpec("aligned", _aligned, "pix2pix folder layout: A|B side by side, train/ and val/ subfolders",
                    needs_path=True),
    ]
