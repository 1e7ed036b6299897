"""The observer hooks write one event file per training session; steps append to the newest."""
from pathlib import Path

from bicycle_tensorboard import plugin, read_events


def test_hooks_write_scalars(tmp_path: Path):
    plugin.bicycle_train_start(run_dir=tmp_path, start_step=0)
    plugin.bicycle_train_step(step=2, metrics={"G_L1": 1.5, "lr": 0.0002}, run_dir=tmp_path)
    plugin.bicycle_train_end(step=2, run_dir=tmp_path, interrupted=False)
    (path,) = (tmp_path / plugin.FOLDER).iterdir()
    version, scalars = read_events(path)
    assert version == "brain.Event:2"
    assert [(s.step, s.tag, s.value) for s in scalars] == [
        (2, "train/G_L1", 1.5), (2, "train/lr", scalars[1].value), (2, "train/interrupted", 0.0)]
