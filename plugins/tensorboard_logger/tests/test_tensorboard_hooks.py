"""The hooks write what TensorBoard itself reads back (its EventAccumulator): a simulated run's scalars
and grids, a resumed run whose curves continue, hooks called without bicycle_train_start."""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import DEFAULT_SIZE_GUIDANCE, EventAccumulator

from bicycle.testing import HookCall, simulate_training
from bicycle_tensorboard import FOLDER, plugin, writer_for


def read_back(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / FOLDER), size_guidance=dict.fromkeys(DEFAULT_SIZE_GUIDANCE, 0))
    return acc.Reload()


def curve(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def logged(calls: list[HookCall], hook: str, key: str) -> dict[str, list[tuple[int, float]]]:
    """tag-less view of what was passed: {name: [(step, value)]} of the ``key`` dict of each ``hook`` call."""
    out: dict[str, list[tuple[int, float]]] = {}
    for c in calls:
        if c.hook == hook:
            for name, value in c.kwargs[key].items():
                out.setdefault(name, []).append((c.kwargs["step"], value))
    return out


def pixels(event) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))


@pytest.fixture(autouse=True)
def no_open_writers():
    yield
    plugin.close_all()


def test_a_simulated_run_reads_back_as_scalars_and_images(tmp_path: Path):
    calls = simulate_training(plugin, tmp_path, steps=6)
    assert not plugin._writers  # closed by bicycle_train_end
    acc = read_back(tmp_path)
    metrics, measures = logged(calls, "bicycle_train_step", "metrics"), logged(calls, "bicycle_train_sample", "measures")
    assert {"G_L1", "kl", "lr", "lambda_kl", "sec_per_step"} <= set(metrics)
    assert set(measures) == {"z_sensitivity", "valid_rate", "modes_per_input"}
    expected = {f"train/{k}": v for k, v in metrics.items()} | {f"sample/{k}": v for k, v in measures.items()}
    expected["train/interrupted"] = [(6, 0.0)]
    assert set(acc.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        assert curve(acc, tag) == [(s, pytest.approx(v, rel=1e-6)) for s, v in points], tag
    assert acc.Tags()["images"] == ["sample/grid"]
    grids = [c.kwargs["image"] for c in calls if c.hook == "bicycle_train_sample"]
    events = acc.Images("sample/grid")
    assert [e.step for e in events] == [2, 4, 6]
    for event, grid in zip(events, grids):
        assert (event.height, event.width) == grid.shape[:2]
        np.testing.assert_array_equal(pixels(event), grid)


def test_a_resumed_run_continues_where_its_checkpoint_was(tmp_path: Path):
    # session 1 logs steps 2..8 and dies before its step-6 checkpoint counts; session 2 resumes at 4
    simulate_training(plugin, tmp_path, steps=8, seed=1, crash=True)
    plugin.close_all()  # what the process's exit does
    resumed = simulate_training(plugin, tmp_path, steps=8, start_step=4, seed=2, oracle=False)
    acc = read_back(tmp_path)  # both files: the purge applies across them
    assert len(list((tmp_path / FOLDER).glob("events.out.tfevents.*"))) == 2
    g_l1 = curve(acc, "train/G_L1")
    assert [s for s, _ in g_l1] == [2, 4, 6, 8]
    after = logged(resumed, "bicycle_train_step", "metrics")["G_L1"]
    assert g_l1[2:] == [(s, pytest.approx(v, rel=1e-6)) for s, v in after]  # the crashed 6 and 8 are gone
    assert [e.step for e in acc.Images("sample/grid")] == [2, 4, 6, 8]
    assert [s for s, _ in curve(acc, "sample/valid_rate")] == [2, 4]  # the resumed session had no oracle
    assert curve(acc, "train/interrupted") == [(8, 0.0)]


def test_hooks_without_train_start_open_the_writer_lazily(tmp_path: Path):
    plugin.bicycle_train_checkpoint(run_dir=tmp_path)  # nothing to flush: no file made
    assert not (tmp_path / FOLDER).exists()
    plugin.bicycle_train_step(step=3, metrics={"G_L1": 0.5}, run_dir=tmp_path)
    writer = writer_for(tmp_path)
    plugin.bicycle_train_sample(step=3, run_dir=tmp_path, image=np.zeros((6, 8, 3), np.uint8), measures={})
    assert writer_for(tmp_path) is writer  # one writer per run dir, kept between hooks
    plugin.bicycle_train_end(step=3, run_dir=tmp_path, interrupted=True)
    acc = read_back(tmp_path)
    assert curve(acc, "train/G_L1") == [(3, 0.5)] and curve(acc, "train/interrupted") == [(3, 1.0)]
    assert [(e.step, e.width, e.height) for e in acc.Images("sample/grid")] == [(3, 8, 6)]


def test_importing_the_plugin_leaves_tensorboard_unloaded():
    code = "import sys, bicycle_tensorboard.plugin; print([m for m in ('torch', 'tensorboard') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
