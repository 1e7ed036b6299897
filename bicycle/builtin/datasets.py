"""Built-in datasets: the procedural ``shapes`` dataset (with an exact oracle) and ``aligned`` folders."""
from __future__ import annotations

from bicycle.data.base import DatasetRequest
from bicycle.hookspecs import hookimpl
from bicycle.registry import DatasetSpec


def _shapes(request: DatasetRequest):
    from bicycle.data.shapes import ShapesDataset
    return ShapesDataset.from_request(request)


def _aligned(request: DatasetRequest):
    from bicycle.data.aligned import build_aligned
    return build_aligned(request)


@hookimpl
def bicycle_datasets() -> list[DatasetSpec]:
    return [
        DatasetSpec("shapes", _shapes, "procedural silhouettes -> the shape in one of K colours (no files; exact oracle)",
                    needs_path=False, has_oracle=True),
        DatasetSpec("aligned", _aligned, "pix2pix folder layout: A|B side by side, train/ and val/ subfolders",
                    needs_path=True),
    ]
