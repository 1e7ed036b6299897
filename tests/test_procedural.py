"""The ``procedural:N`` task family and its oracle: the tasks' ranges, the oracle accepting the task's own
B and rejecting the failures seen in practice (stripes, dot grids, a mix of two modes, a shape elsewhere),
per input kind, and the dataset through the CLI."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bicycle.cli import main
from bicycle.data.base import oracle_of
from bicycle.data.procedural import (LEVEL, MIN_DISTANCE, TRAIN_LENGTH, VAL_LENGTH, ProceduralDataset, draw_task,
                                     parse_task)
from bicycle.errors import ConfigError
from bicycle.inference.metrics import ideal_distinct_modes

SIZE, COUNT = 64, 40


def _seeds(kind: str, n: int) -> list[int]:
    return [s for s in range(200) if draw_task(s).input_kind == kind][:n]


def test_tasks_cover_the_documented_ranges_and_are_deterministic():
    tasks = [draw_task(s) for s in range(200)]
    again = draw_task(7)
    assert again.describe() == draw_task(7).describe() and np.array_equal(again.p_mode, draw_task(7).p_mode)
    for t in tasks:
        assert 2 <= len(t.fills) <= 8 and 1 <= len(t.backgrounds) <= 4
        colours = np.concatenate([t.fills, t.backgrounds])
        gaps = np.abs(colours[:, None] - colours[None]).max(-1) + np.eye(len(colours)) * 1e9
        assert gaps.min() >= MIN_DISTANCE and colours.min() >= 0 and colours.max() <= 255
        assert abs(t.p_mode.sum() - 1) < 1e-9 and (t.p_mode > 0).all() and len(t.p_mode) == t.num_modes
        assert 0 <= t.noise <= 8 and (t.shading == 0 or 4 <= t.shading <= 16)
        assert 0.04 <= t.area[0] < t.area[1] <= 0.25 and t.kinds
        assert {"silhouette": t.line_px == 0, "outline": 1 <= t.line_px <= 4, "edges": t.line_px == 1}[t.input_kind]
    kinds = {t.input_kind for t in tasks}
    assert kinds == {"silhouette", "outline", "edges"}
    assert any(t.shading for t in tasks) and any(not t.shading for t in tasks)
    assert any(np.allclose(t.p_mode, t.p_mode[0]) for t in tasks) and any(t.p_mode.max() > 2 / t.num_modes for t in tasks)
    mid = np.concatenate([t.fills for t in tasks])
    assert ((mid > 64) & (mid < 192)).all(-1).any()  # mid-tones are drawn
    ds = ProceduralDataset(3, 32, "val")
    a1, b1 = ds[5]
    a2, b2 = ProceduralDataset(3, 32, "val")[5]
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    assert len(ProceduralDataset(3, 32)) == TRAIN_LENGTH and len(ds) == VAL_LENGTH
    assert a1.shape == (1, 32, 32) and b1.shape == (3, 32, 32) and b1.min() >= -1 and b1.max() <= 1


def _corrupted(ds: ProceduralDataset, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    """The failures the oracle must reject: stripes and dot grids of period 2-8 px at amplitude
    max(3 sigma, 12) levels, a pixel mix of two modes, the shape drawn elsewhere (IoU < 0.5)."""
    n, s = len(a), a.shape[-1]
    amp = max(3 * ds.task.noise, 12) / LEVEL
    x = torch.arange(s)
    periods = [2 + i % 7 for i in range(n)]
    stripes = torch.stack([((x % p < p / 2).float() * 2 - 1).expand(s, s) for p in periods])[:, None]
    dots = torch.stack([(((x[None] % p < p / 2) & (x[:, None] % p < p / 2)).float() * 2 - 1) for p in periods])[:, None]
    other = b.clone()
    nb = len(ds.backgrounds)
    for k in range(n):
        p = ds.params(k)
        if ds.num_modes == 1:
            continue
        mode = (p["mode"] + 1 + k % (ds.num_modes - 1)) % ds.num_modes
        raw = ds._b(ds._inside(p), torch.from_numpy(ds.task.fills[mode // nb]),
                    torch.from_numpy(ds.task.backgrounds[mode % nb]), p)
        other[k] = (raw.round().clamp(0, 255) / LEVEL - 1).float()
    pool_a, pool_b = ds.get_batch(list(range(100, 140)))
    regions, pool = ds.region_of(a)[:, 0], ds.region_of(pool_a)[:, 0]
    iou = (regions[:, None] & pool[None]).flatten(2).sum(-1) / (regions[:, None] | pool[None]).flatten(2).sum(-1)
    elsewhere = pool_b[(iou + (iou >= 0.5) * 10).argmin(1)]
    assert (iou.min(1).values < 0.5).all()
    return {"stripes": b + amp * stripes, "dot grid": b + amp * dots, "mix of two modes": 0.5 * (b + other),
            "shape elsewhere": elsewhere}


@pytest.mark.parametrize("kind", ["silhouette", "outline", "edges"])
def test_the_oracle_accepts_the_tasks_own_b_and_rejects_corruptions(kind):
    accepted = right_mode = total = 0
    rejected: dict[str, int] = {}
    for seed in _seeds(kind, 2):
        ds = ProceduralDataset(seed, SIZE, "val")
        a, b = ds.get_batch(list(range(COUNT)))
        accepted += int(ds.is_valid(a, b).sum())
        right_mode += int((ds.mode_of(a, b) == torch.tensor([ds.params(i)["mode"] for i in range(COUNT)])).sum())
        total += COUNT
        for name, bad in _corrupted(ds, a, b).items():
            if name == "mix of two modes" and ds.num_modes == 1:
                continue
            rejected[name] = rejected.get(name, 0) + int((~ds.is_valid(a, bad)).sum())
    assert accepted >= 0.99 * total and right_mode >= 0.99 * total, (accepted, right_mode, total)
    for name, count in rejected.items():
        assert count >= 0.99 * total, (name, count, total)


@pytest.mark.parametrize("kind", ["silhouette", "outline", "edges"])
def test_the_oracle_holds_at_128_px(kind):
    ds = ProceduralDataset(_seeds(kind, 3)[2], 128, "val")
    a, b = ds.get_batch(list(range(16)))
    assert ds.is_valid(a, b).all()
    bad = _corrupted(ds, a, b)
    assert (~ds.is_valid(a, bad["stripes"])).all() and (~ds.is_valid(a, bad["shape elsewhere"])).all()


def test_the_true_mode_probabilities_give_the_ideal_mode_count():
    ds = ProceduralDataset(5, 32, "val")
    a, _ = ds.get_batch([0, 1])
    probs = ds.mode_probabilities(a)
    assert probs.shape == (2, ds.num_modes) and torch.allclose(probs.sum(1), torch.ones(2))
    ideal = ideal_distinct_modes(probs.double(), 20)
    assert torch.allclose(ideal, (1 - (1 - probs.double()) ** 20).sum(1))
    assert oracle_of(ds) is ds


def test_task_numbers_are_checked_in_one_line():
    assert parse_task("12") == 12
    for bad in (None, "", "x", "-1", "1.5"):
        with pytest.raises(ConfigError, match="procedural:N"):
            parse_task(bad)
    with pytest.raises(ConfigError):
        draw_task(-3)


def test_train_on_a_procedural_task_from_the_cli(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--data", "procedural:4", "--image-size", "32", "--steps", "2", "--ngf", "8", "--nef", "8",
            "--ndf", "8", "--batch-size", "2", "--checkpoint-every", "2", "--sample-every", "100", "--run-dir", str(run),
            "--impl", "ref"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "oracle: valid rate" in r.output and (run / "checkpoints" / "latest").is_file()
    r = CliRunner().invoke(main, ["train", "--data", "procedural:nope", "--image-size", "32", "--steps", "1",
                                  "--run-dir", str(tmp_path / "bad")])
    assert r.exit_code != 0 and "procedural:N" in r.output and "Traceback" not in r.output
