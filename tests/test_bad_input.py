"""Bad input ends in one clear line: for each case the exit code, no traceback, and a message naming the
offending flag, value or path. (Data-file cases: test_image_check.py / test_aligned.py; divergence:
test_divergence.py; crashes and disk faults: test_faults.py.)"""
from __future__ import annotations

import errno
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file, save_file

from bicycle import hookimpl, plugins
from bicycle.cli import main
from bicycle.errors import CheckpointError, ConfigError, DataError, PluginError, StorageError
from bicycle.registry import BackboneSpec

USAGE, DATA, CKPT, PLUGIN, STORAGE = (ConfigError.exit_code, DataError.exit_code, CheckpointError.exit_code,
                                      PluginError.exit_code, StorageError.exit_code)
TINY = ["--device", "cpu", "--image-size", "32", "--ngf", "8", "--nef", "8", "--ndf", "8", "--batch-size", "4",
        "--steps", "2", "--log-every", "1", "--sample-every", "100", "--checkpoint-every", "100", "--impl", "ref"]


def _ok(r, code: int, *names: str) -> None:
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output, r.output
    for name in names:
        assert name in r.output, (name, r.output)


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    plugins.set_plugins(None)
    path = tmp_path_factory.mktemp("bad") / "run"
    r = CliRunner().invoke(main, ["train", *TINY, "--run-dir", str(path)])
    assert r.exit_code == 0, r.output
    return path


# -- flags: refused before anything is built ---------------------------------------------------------
FLAGS = [
    (["--lr", "nan"], "optim.lr must be a finite number"),
    (["--lr", "-1"], "optim.lr must be positive"),
    (["--lr-d", "0"], "optim.lr_d must be positive"),
    (["--lambda-l1", "-1"], "loss.l1 must not be negative"),
    (["--lambda-gan", "-1"], "loss.gan must not be negative"),
    (["--lambda-gan2", "nan"], "loss.gan2 must be a finite number"),
    (["--decay-start", "1.5"], "optim.decay_start must be within [0, 1]"),
    (["--lambda-kl", "inf"], "loss.kl must be a finite number"),
    (["--lambda-z", "nan"], "loss.z must be a finite number"),
    (["--kl-warmup", "2"], "loss.kl_warmup must be within"),
    (["--device", "foo"], "unknown device 'foo'"),
    (["--d-layers", "4"], "net.d_layers 4 is too deep for 32 px: a PatchGAN there takes at most 3"),
    (["--steps", str(10**10)], "train.steps 10000000000 is beyond 1e+09 steps"),
    (["--steps", str(2**70)], f"train.steps {2**70} is beyond"),
    (["--direction", "BtoA"], "built-in dataset 'shapes' is generated A->B only"),
    (["--device", "cuda:x"], "unknown device 'cuda:x'"),
    (["--seed", "-1"], "train.seed must be within"),
    (["--seed", str(2**40)], "train.seed must be within"),
    (["--image-size", "100000"], "image size 100000 is too large"),
    (["--image-size", "16"], "image size 16 is too small"),
    (["--batch-size", "3"], "train.batch_size must be even"),
    (["--steps", "0"], "train.steps must be at least 1"),
    (["--nz", "0"], "net.nz must be at least 1"),
    (["--backbone", "unet9000"], "unknown backbone 'unet9000'"),
    (["--inject", "sideways"], "unknown injector 'sideways'"),
    (["--data", "no/such/folder"], "no/such/folder"),
    (["--data", "imagenet"], "unknown dataset 'imagenet'"),
    (["--cuda-graphs"], "--cuda-graphs needs a CUDA device"),
    (["--backbone", "unet256", "--image-size", "64"], "64"),
    (["--load-size", "16"], "data.load_size (16) must be at least"),
]


@pytest.mark.parametrize("extra,message", FLAGS, ids=[" ".join(f) for f, _ in FLAGS])
def test_a_bad_flag_is_a_usage_error_naming_it(tmp_path, extra, message):
    base = list(TINY)
    for flag in ("--device", "--image-size", "--batch-size", "--steps"):  # the case's own value wins
        if flag in extra and flag in base:
            i = base.index(flag)
            del base[i:i + 2]
    r = invoke("train", *base, *extra, "--run-dir", str(tmp_path / "run"))
    _ok(r, USAGE, message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra,message", [(["--device", "nope"], "unknown device 'nope'"),
                                           (["--seed", "-3"], "--seed must be within")])
@pytest.mark.parametrize("command", ["sample", "eval"])
def test_inference_commands_check_their_flags_first(run, tmp_path, command, extra, message):
    args = [command, "--checkpoint", str(run), *extra]
    args += ["--data", "shapes", "--out", str(tmp_path / "o")] if command == "sample" else ["--inputs", "2", "--samples", "2"]
    _ok(invoke(*args), USAGE, message)


# -- resume ---------------------------------------------------------------------------------------------

def test_resume_with_fewer_steps_than_done_is_refused(run):
    _ok(invoke("train", "--resume", str(run), "--steps", "1"), USAGE, "--steps 1 is below the run's current step 2")


def test_resume_with_another_run_dir_is_refused(run, tmp_path):
    _ok(invoke("train", "--resume", str(run), "--run-dir", str(tmp_path / "elsewhere")), USAGE,
        "--run-dir", str(tmp_path / "elsewhere"))


def test_resume_with_a_changed_architecture_is_refused(run):
    _ok(invoke("train", "--resume", str(run), "--nz", "3"), USAGE, "net.nz (run: 8, requested: 3)")


def test_resume_of_a_folder_without_checkpoints_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    _ok(invoke("train", "--resume", str(tmp_path / "empty")), CKPT, "no checkpoint in", str(tmp_path / "empty"))


def test_a_run_dir_holding_a_run_is_not_overwritten(run):
    _ok(invoke("train", *TINY, "--run-dir", str(run)), USAGE, f"run dir {run} already holds a run")


# -- output paths -------------------------------------------------------------------------------------

def test_a_run_dir_inside_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    _ok(invoke("train", *TINY, "--run-dir", str(tmp_path / "f" / "run")), STORAGE, str(tmp_path / "f"), "is a file")


def test_an_unwritable_run_dir_is_refused_before_training(tmp_path, monkeypatch):
    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(tempfile, "mkstemp", denied)
    _ok(invoke("train", *TINY, "--run-dir", str(tmp_path / "run")), STORAGE, "--run-dir", "Permission denied")
    assert not (tmp_path / "run").exists()


def test_no_room_for_a_checkpoint_is_refused_before_training(tmp_path, monkeypatch):
    import shutil
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 30, 1 << 30, 1 << 20))
    _ok(invoke("train", *TINY, "--run-dir", str(tmp_path / "run")), STORAGE, "1 MiB free", "checkpoint")


def test_sample_out_that_is_a_file_is_refused(run, tmp_path):
    (tmp_path / "o").write_text("x")
    _ok(invoke("sample", "--checkpoint", str(run), "--data", "shapes", "--out", str(tmp_path / "o")), USAGE,
        "--out", "is a file")


def test_eval_json_that_is_a_folder_is_refused(run, tmp_path):
    _ok(invoke("eval", "--checkpoint", str(run), "--json", str(tmp_path), "--inputs", "2"), USAGE, "--json", "is a directory")


def test_eval_json_in_an_unwritable_folder_is_refused(run, tmp_path, monkeypatch):
    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(tempfile, "mkstemp", denied)
    _ok(invoke("eval", "--checkpoint", str(run), "--json", str(tmp_path / "r.json"), "--inputs", "2"), STORAGE,
        "--json", "Permission denied")


# -- checkpoints and data given to a trained model ----------------------------------------------------

def test_a_missing_checkpoint(tmp_path):
    _ok(invoke("sample", "--checkpoint", str(tmp_path / "x.safetensors"), "--data", "shapes", "--out",
               str(tmp_path / "o")), CKPT, "x.safetensors does not exist")


def test_a_file_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"\x00" * 40)
    _ok(invoke("eval", "--checkpoint", str(tmp_path / "x.safetensors")), CKPT, "x.safetensors")


def _rewrite_meta(run: Path, tmp_path: Path, **changes: str) -> Path:
    from bicycle import io
    src = io.resolve_checkpoint_path(run)
    meta = {**io.load_checkpoint(src).metadata, **changes}
    dst = tmp_path / "edited.safetensors"
    save_file(load_file(str(src)), str(dst), metadata=meta)
    return dst


@pytest.mark.parametrize("field,value,message", [("step", "abc", "unreadable step 'abc'"),
                                                 ("config", "{not json", "unreadable config"),
                                                 ("format", "other/9", "is not a bicycle checkpoint")])
def test_checkpoint_metadata_that_does_not_parse(run, tmp_path, field, value, message):
    path = _rewrite_meta(run, tmp_path, **{field: value})
    _ok(invoke("eval", "--checkpoint", str(path), "--inputs", "2"), CKPT, str(path), message)


def test_eval_on_data_with_other_channels_converts_them_to_the_models(run, tmp_path):
    """RGB A|B files for a 1->3 model: A is read as grey (ITU-R 601 luma), as the original's --input_nc 1."""
    (tmp_path / "rgb" / "val").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)).save(tmp_path / "rgb" / "val" / f"{i}.png")
    r = invoke("eval", "--checkpoint", str(run), "--data", str(tmp_path / "rgb"), "--inputs", "2")
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output


# -- plugins --------------------------------------------------------------------------------------------

def _use(monkeypatch, *objs) -> None:
    """The process's plugin set: the built-ins and ``objs``; one that cannot even be built fails where the CLI
    first asks for the plugins, as an installed broken plugin would."""
    try:
        plugins.set_plugins(plugins.build_plugins(list(objs), autoload=False))
    except PluginError:
        monkeypatch.setattr(plugins, "get_plugins", lambda: plugins.build_plugins(list(objs), autoload=False))


class _WrongType:
    __name__ = "wrong_type"

    @hookimpl
    def bicycle_backbones(self):
        return BackboneSpec("odd", lambda a, i: None, lambda s: None)  # a spec, not a list of specs


def _backbone_plugin(name: str, build):
    class P:
        __name__ = name

        @hookimpl
        def bicycle_backbones(self):
            return [BackboneSpec("bad", build, lambda s: None)]
    return P()


def _raises(args, injector):
    raise RuntimeError("no GPU kernels for this backbone")


def _exits(args, injector):
    raise SystemExit(3)


@pytest.mark.parametrize("plugin,message", [
    (_WrongType(), "returned BackboneSpec from bicycle_backbones; expected a list"),
    (_backbone_plugin("raiser", _raises), "plugin 'raiser': building backbone 'bad' failed: RuntimeError"),
    (_backbone_plugin("exiter", _exits), "plugin 'exiter': building backbone 'bad' failed: called sys.exit(3)"),
    (_backbone_plugin("nonmodule", lambda a, i: object()), "built a object, not a torch.nn.Module"),
], ids=["wrong-type", "build-raises", "build-exits", "not-a-module"])
def test_a_broken_plugin_is_caught_and_named(tmp_path, monkeypatch, plugin, message):
    _use(monkeypatch, plugin)
    r = invoke("train", *TINY, "--backbone", "bad", "--run-dir", str(tmp_path / "run"))
    _ok(r, PLUGIN, message)


def test_a_plugin_failing_at_import_is_named_and_env_still_lists_it(monkeypatch):
    class EP:
        name, value = "fragile", "fragile_pkg.plugin"

        def load(self):
            raise SystemExit("fragile: no licence file")

    monkeypatch.setenv(plugins.AUTOLOAD_ENV, "0")
    monkeypatch.setattr(plugins, "entry_points", lambda group: [EP()])
    _ok(invoke("plugins"), PLUGIN, "plugin 'fragile'", "failed to import", "sys.exit")
    r = invoke("env")
    _ok(r, 0, "broken plugin 'fragile'", "BICYCLE_DISABLE_PLUGINS=fragile")


def test_an_observer_that_raises_is_disabled_with_one_warning_and_training_goes_on(tmp_path, monkeypatch):
    class Noisy:
        __name__ = "noisy_logger"
        calls = 0

        @hookimpl
        def bicycle_train_step(self, step, metrics):
            Noisy.calls += 1
            raise ValueError("disk quota for logs")

    _use(monkeypatch, Noisy())
    r = invoke("train", *TINY, "--run-dir", str(tmp_path / "run"))
    _ok(r, 0, "plugin 'noisy_logger' raised in bicycle_train_step: ValueError: disk quota for logs", "disabled")
    assert r.output.count("raised in bicycle_train_step") == 1 and Noisy.calls == 1
    assert "disabled" in (tmp_path / "run" / "train.log").read_text()


def test_training_writes_a_plain_text_log_of_the_console(run):
    text = (run / "train.log").read_text()
    assert "bicycle train from scratch" in text and "checkpoint:" in text and "\r" not in text and "\x1b" not in text


def test_config_json_records_are_parseable(run):  # the run dir's own files stay well-formed
    assert json.loads((run / "config.json").read_text())["preset"] == "demo"


# -- outputs never overwrite a run's own files; an existing output only with --force --------------------
def _protected_targets(run: Path) -> dict[str, Path]:
    ckpt = sorted((run / "checkpoints").glob("step_*.safetensors"))[-1]
    return {"checkpoint": ckpt, "latest": run / "checkpoints" / "latest", "config": run / "config.json",
            "in-checkpoints": run / "checkpoints" / "new.safetensors"}


def _output_args(command: str, run: Path, target: Path) -> list[str]:
    return {"export": ["export", str(run), "--out", str(target)],
            "export-onnx": ["export", str(run), "--onnx", str(target)],
            "eval": ["eval", "--checkpoint", str(run), "--inputs", "2", "--samples", "2", "--json", str(target)],
            "bench": ["bench", "--device", "cpu", "--quick", "--size", "64", "--json", str(target)]}[command]


@pytest.mark.parametrize("command", ["export", "export-onnx", "eval", "bench"])
@pytest.mark.parametrize("target", ["checkpoint", "latest", "config", "in-checkpoints"])
def test_an_output_over_a_runs_own_files_is_refused_even_with_force(run, command, target):
    path = _protected_targets(run)[target]
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for force in ([], ["--force"]):
        r = invoke(*_output_args(command, run, path), *force)
        _ok(r, USAGE, str(path))
        assert "run dir" in r.output, r.output
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("out", ["checkpoints", "run", "inside"])
def test_sample_out_in_a_run_dir_or_its_checkpoints_is_refused(run, out):
    path = {"checkpoints": run / "checkpoints", "run": run, "inside": run / "checkpoints" / "grids"}[out]
    before = sorted(p for p in run.rglob("*"))
    _ok(invoke("sample", "--checkpoint", str(run), "--out", str(path), "--samples", "2", "--inputs", "1"), USAGE,
        str(path), "run dir")
    assert sorted(p for p in run.rglob("*")) == before


def test_convert_original_out_inside_a_runs_checkpoints_is_refused(run, tmp_path):
    out = run / "checkpoints" / "converted"
    _ok(invoke("convert-original", "--G", str(tmp_path / "G.pth"), "--out", str(out)), USAGE, str(out), "run dir")
    assert not out.exists()


def test_a_training_checkpoint_outside_a_run_dir_is_never_overwritten(run, tmp_path):
    copy = tmp_path / "kept.safetensors"
    copy.write_bytes(sorted((run / "checkpoints").glob("step_*.safetensors"))[-1].read_bytes())
    before = copy.read_bytes()
    _ok(invoke("export", str(run), "--out", str(copy), "--force"), USAGE, str(copy), "training checkpoint")
    assert copy.read_bytes() == before


@pytest.mark.parametrize("command", ["export", "eval", "bench"])
def test_an_existing_output_file_needs_force(run, tmp_path, command):
    path = tmp_path / "out.file"
    path.write_bytes(b"mine")
    _ok(invoke(*_output_args(command, run, path)), USAGE, str(path), "--force")
    assert path.read_bytes() == b"mine"
    r = invoke(*_output_args(command, run, path), "--force")
    assert r.exit_code == 0, r.output
    assert path.read_bytes() != b"mine"


def test_sample_into_earlier_outputs_needs_force(run, tmp_path):
    out = tmp_path / "o"
    args = ["sample", "--checkpoint", str(run), "--out", str(out), "--samples", "2", "--inputs", "1"]
    assert invoke(*args).exit_code == 0
    grid = (out / "grid.png").read_bytes()
    _ok(invoke(*args, "--seed", "5"), USAGE, str(out), "--force")
    assert (out / "grid.png").read_bytes() == grid
    r = invoke(*args, "--seed", "5", "--force")
    assert r.exit_code == 0, r.output
    assert (out / "grid.png").read_bytes() != grid and not list(out.glob(".*"))


def test_bench_json_in_an_unwritable_folder_is_one_line(tmp_path, monkeypatch):
    from fault_helpers import chmod_binds, deny_writes_in
    folder = tmp_path / "ro"
    folder.mkdir()
    if chmod_binds(tmp_path):
        folder.chmod(0o500)
    else:
        deny_writes_in(monkeypatch, folder)
    try:
        _ok(invoke("bench", "--device", "cpu", "--quick", "--size", "64", "--json", str(folder / "b.json")), STORAGE,
            str(folder / "b.json"))
    finally:
        folder.chmod(0o700)


def test_resume_room_is_estimated_from_the_real_checkpoint(run, monkeypatch):
    import shutil
    from bicycle import io
    size = io.resolve_checkpoint_path(run).stat().st_size
    free = {"n": size + (3 << 20)}
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 30, 1 << 30, free["n"]))
    from bicycle.commands.preflight import _mib, check_train
    from bicycle.plugins import get_plugins
    ckpt = io.load_checkpoint(run)
    check_train(ckpt.config, get_plugins().registry, run, resume=True)  # room for one more checkpoint: accepted
    free["n"] = size // 2
    with pytest.raises(StorageError, match=rf"MiB free; a checkpoint of this run needs {_mib(size)} MiB"):
        check_train(ckpt.config, get_plugins().registry, run, resume=True)
