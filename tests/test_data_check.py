"""The start-up data check: every file decoded, bad files named (or skipped with --bad-images skip), verdicts
cached under XDG_CACHE_HOME, the data fingerprint in checkpoints, and a missing val/ said where it is used."""
from __future__ import annotations

import io
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from data_helpers import make_aligned_dataset  # noqa: E402

from bicycle.cli import main  # noqa: E402
from bicycle.config import PRESETS, RESUMABLE_KEYS, replace, validate  # noqa: E402
from bicycle.data import images  # noqa: E402
from bicycle.data.aligned import AlignedDataset  # noqa: E402
from bicycle.data.images import check_images, list_images  # noqa: E402
from bicycle.errors import ConfigError, DataError  # noqa: E402
from bicycle.io import load_checkpoint  # noqa: E402
from bicycle.train.datafiles import MANIFEST_KEY, fingerprint, resume_data_warning  # noqa: E402

TINY = ["--image-size", "32", "--ngf", "8", "--nef", "8", "--ndf", "8", "--batch-size", "4", "--steps", "2",
        "--log-every", "2", "--sample-every", "2", "--checkpoint-every", "2", "--impl", "ref"]


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def counting_decoder(monkeypatch) -> list[Path]:
    calls: list[Path] = []
    real = images.decode_check

    def counted(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(images, "decode_check", counted)
    return calls


def verdict_files() -> list[Path]:
    return sorted((Path(os.environ["XDG_CACHE_HOME"]) / "bicycle" / "image-checks").glob("*.json"))


# -- bad files are named, before training ------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_a_truncated_file_in_either_split_fails_before_training(tmp_path, split, ext):
    root = make_aligned_dataset(tmp_path / "d", n_train=4, n_val=2, size=40, ext=ext)
    bad = truncate(root / split / f"001{ext}", 0.4)
    run = tmp_path / "run"
    result = cli("train", *TINY, "--data", str(root), "--run-dir", str(run))
    assert result.exit_code == DataError.exit_code, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    assert f"Error: cannot read image {bad}: truncated" in result.output
    assert not run.exists()


def test_a_broken_symlink_is_a_bad_file_named(tmp_path):
    root = make_aligned_dataset(tmp_path / "d", n_train=3, n_val=0)
    link = root / "train" / "link.png"
    os.symlink(tmp_path / "gone.png", link)
    assert link in list_images(root / "train")
    with pytest.raises(DataError, match=f"cannot read image {link}: broken symlink$"):
        AlignedDataset(root, "train", 16, progress=False)
    (root / "train" / "002.png").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"2 of 4 images in \S+ cannot be used: 002\.png \(truncated or not an image\), "
                                         r"link\.png \(broken symlink\)$"):
        AlignedDataset(root, "train", 16, progress=False)


def test_skip_leaves_bad_files_out_and_says_so(tmp_path, capsys):
    root = make_aligned_dataset(tmp_path / "d", n_train=2, n_val=4)
    truncate(root / "val" / "001.png")
    (root / "val" / "003.png").write_bytes(b"junk")
    ds = AlignedDataset(root, "val", 16, bad_images="skip")
    assert [p.name for p in ds.paths] == ["000.png", "002.png"] and len(ds) == 2
    assert [(b.path.name, b.reason) for b in ds.bad_images] == [("001.png", "truncated"),
                                                               ("003.png", "truncated or not an image")]
    assert [f[0] for f in ds.files] == ["000.png", "002.png"]
    err = capsys.readouterr().err
    assert "note: 2 of 4 images" in err and "using the other 2 (bad_images=skip)" in err
    for name in ("000.png", "002.png"):
        (root / "val" / name).write_bytes(b"junk")
    with pytest.raises(DataError, match="4 of 4 images"):  # nothing left to use
        AlignedDataset(root, "val", 16, bad_images="skip", progress=False)


def test_a_bad_val_file_is_an_error_not_a_fallback(tmp_path):
    from bicycle.build import build_eval_dataset
    from bicycle.plugins import get_plugins

    root = make_aligned_dataset(tmp_path / "d", n_train=2, n_val=2)
    bad = truncate(root / "val" / "000.png")
    cfg = replace(PRESETS["demo"], {"data.data": str(root)})
    notes: list[str] = []
    with pytest.raises(DataError, match=f"cannot read image {bad}"):
        build_eval_dataset(cfg, get_plugins().registry, echo=notes.append)
    assert notes == []


def test_bad_images_is_validated_and_not_resumable():
    with pytest.raises(ConfigError, match="data.bad_images must be one of error, skip"):
        validate(replace(PRESETS["demo"], {"data.bad_images": "ignore"}))
    assert "data.bad_images" not in RESUMABLE_KEYS
    assert PRESETS["demo"].data.bad_images == "error"


# -- the verdict cache -------------------------------------------------------------------------


def test_a_second_check_decodes_nothing_and_a_changed_file_is_checked_again(tmp_path, monkeypatch):
    root = make_aligned_dataset(tmp_path / "d", n_train=5, n_val=0)
    (root / "train" / "004.png").write_bytes(b"junk")
    paths = list_images(root / "train")
    calls = counting_decoder(monkeypatch)
    first = check_images(paths, progress=False, workers=2)
    assert len(calls) == 5 and first.cached == 0 and len(first.bad) == 1
    assert len(verdict_files()) == 1
    calls.clear()
    stream = io.StringIO()
    second = check_images(paths, progress=stream)
    assert [p.name for p in calls] == ["004.png"]  # only the bad file: bad verdicts are never cached
    assert second.cached == 4 and second.good == first.good
    assert stream.getvalue().endswith("100% (4 cached, 1 bad)\n")
    # mtime moved on: decoded again
    calls.clear()
    p1 = root / "train" / "001.png"
    st = p1.stat()
    os.utime(p1, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    check_images(paths, progress=False)
    assert sorted(p.name for p in calls) == ["001.png", "004.png"]  # decoded on a thread pool: any order
    # same mtime, another size: decoded again
    calls.clear()
    p2 = root / "train" / "002.png"
    st = p2.stat()
    p2.write_bytes(p2.read_bytes() + b"\0")
    os.utime(p2, ns=(st.st_atime_ns, st.st_mtime_ns))
    check_images(paths, progress=False)
    assert [p.name for p in calls] == ["002.png", "004.png"]


def test_threads_give_the_same_verdicts_in_order(tmp_path, monkeypatch):
    root = make_aligned_dataset(tmp_path / "d", n_train=9, n_val=0)
    truncate(root / "train" / "003.png")
    paths = list_images(root / "train")
    one = check_images(paths, progress=False, workers=1)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other-cache"))  # no verdicts there yet
    many = check_images(paths, progress=False, workers=4)
    assert many.cached == 0 and one.good == many.good and one.bad == many.bad
    assert [i.path.name for i in many.good] == [p.name for p in paths if p.name != "003.png"]


def test_a_read_only_data_folder_works(tmp_path, monkeypatch):
    root = make_aligned_dataset(tmp_path / "d", n_train=3, n_val=2)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    folders = [root, root / "train", root / "val"]
    files = [p for p in root.rglob("*") if p.is_file()]
    try:
        for p in files:
            p.chmod(0o444)
        for d in folders:
            d.chmod(0o555)
        calls = counting_decoder(monkeypatch)
        for _ in range(2):
            assert len(AlignedDataset(root, "train", 16, progress=False)) == 3
            assert len(AlignedDataset(root, "val", 16, progress=False)) == 2
        assert len(calls) == 5  # the second round came from the cache in XDG_CACHE_HOME
    finally:
        for d in folders:
            d.chmod(0o755)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written there
    assert len(verdict_files()) == 2


def test_an_unwritable_cache_dir_means_no_cache_and_one_note(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "cache"))  # cannot be created, even by root
    monkeypatch.setattr(images, "_cache_note_given", False)
    root = make_aligned_dataset(tmp_path / "d", n_train=3, n_val=0)
    paths = list_images(root / "train")
    calls = counting_decoder(monkeypatch)
    streams = [io.StringIO(), io.StringIO()]
    for stream in streams:
        assert len(check_images(paths, progress=stream).good) == 3
    assert len(calls) == 6
    assert "note: no image-check cache (cannot write" in streams[0].getvalue()
    assert "note:" not in streams[1].getvalue()


@pytest.mark.parametrize("content", [b"\x00{garbage", b'{"format": "bicycle-image-verdicts/1", "files": [1]}',
                                     b'{"format": "bicycle-image-verdicts/1", "checker": "x", "folder": "", "files": {}}'])
def test_a_corrupt_cache_file_is_ignored_and_rebuilt(tmp_path, monkeypatch, content):
    root = make_aligned_dataset(tmp_path / "d", n_train=3, n_val=0)
    paths = list_images(root / "train")
    check_images(paths, progress=False)
    (cache_file,) = verdict_files()
    cache_file.write_bytes(content)
    calls = counting_decoder(monkeypatch)
    assert len(check_images(paths, progress=False).good) == 3 and len(calls) == 3
    assert len(json.loads(cache_file.read_text())["files"]) == 3  # rewritten whole
    calls.clear()
    check_images(paths, progress=False)
    assert calls == []


def test_the_cache_remembers_a_bounded_number_of_folders(tmp_path, monkeypatch):
    from bicycle.data import verdicts

    monkeypatch.setattr(verdicts, "MAX_FOLDERS", 2)
    folders = [make_aligned_dataset(tmp_path / f"d{i}", n_train=1, n_val=0) / "train" for i in range(3)]
    for folder in folders[:2]:
        check_images(list_images(folder), progress=False)
    for f in verdict_files():  # the first folder's file the least recent, whatever the clock's resolution
        stamp = 10**9 if json.loads(f.read_text())["folder"] == str(folders[0].resolve()) else 2 * 10**9
        os.utime(f, ns=(stamp, stamp))
    check_images(list_images(folders[2]), progress=False)
    kept = {json.loads(p.read_text())["folder"] for p in verdict_files()}
    assert kept == {str(folders[1].resolve()), str(folders[2].resolve())}


# -- runs: skip mode, the fingerprint, resume over changed data, a missing val/ ----------------


@pytest.fixture()
def skipped_run(tmp_path):
    """A run trained with --bad-images skip on a folder without val/: one truncated file, one broken link."""
    root = make_aligned_dataset(tmp_path / "d", n_train=6, n_val=0, size=40)
    truncate(root / "train" / "003.png")
    os.symlink(tmp_path / "gone.png", root / "train" / "link.png")
    run = tmp_path / "run"
    result = cli("train", *TINY, "--data", str(root), "--run-dir", str(run), "--bad-images", "skip")
    assert result.exit_code == 0, result.output
    return root, run, result.output


def test_skip_trains_on_the_good_files_and_lists_the_bad_ones(skipped_run):
    root, run, output = skipped_run
    assert (run / "bad_images.txt").read_text().splitlines() == [
        f"{root / 'train' / '003.png'}\ttruncated", f"{root / 'train' / 'link.png'}\tbroken symlink"]
    assert "left out 2 bad images (--bad-images skip)" in output
    assert output.count(f"note: {root} has no val/ folder: using train/ for the sample grids") == 1
    manifest = json.loads(load_checkpoint(run).metadata[MANIFEST_KEY])
    assert list(manifest) == ["train"] and manifest["train"]["count"] == 5
    files = [tuple(f) for f in manifest["train"]["files"]]
    assert [f[0] for f in files] == ["000.png", "001.png", "002.png", "004.png", "005.png"]
    assert manifest["train"]["sha256"] == fingerprint(files)
    assert json.loads((run / "config.json").read_text())["data"]["bad_images"] == "skip"


def test_resume_over_a_changed_folder_says_what_changed(skipped_run):
    root, run, _ = skipped_run
    same = cli("train", "--resume", str(run), "--steps", "3")
    assert same.exit_code == 0, same.output
    assert "the data differs" not in same.output
    shutil.copy(root / "train" / "000.png", root / "train" / "006.png")
    (root / "train" / "005.png").unlink()
    p = root / "train" / "001.png"
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 5_000_000))
    changed = cli("train", "--resume", str(run), "--steps", "4")
    assert changed.exit_code == 0, changed.output
    assert ("warning: the data differs from the checkpoint's (train: 1 added, 1 removed, 1 changed): resuming on "
            "the files as they are now") in changed.output
    refused = cli("train", "--resume", str(run), "--bad-images", "error")
    assert refused.exit_code == 2 and "data.bad_images" in refused.output


def test_eval_and_sample_say_once_that_there_is_no_val(skipped_run, tmp_path):
    root, run, _ = skipped_run
    ev = cli("eval", "--checkpoint", str(run), "--inputs", "2", "--samples", "2")
    assert ev.exit_code == 0, ev.output
    assert ev.output.count(f"note: {root} has no val/ folder: using train/ for the evaluation") == 1
    sm = cli("sample", "--checkpoint", str(run), "--data", str(root), "--samples", "2", "--inputs", "2",
             "--out", str(tmp_path / "out"))
    assert sm.exit_code == 0, sm.output
    assert sm.output.count(f"note: {root} has no val/ folder: using train/ for the inputs") == 1


def test_resume_data_warning_counts_and_tolerates_old_or_broken_checkpoints():
    def man(*files):
        return {"files": [list(f) for f in files], "sha256": fingerprint(list(files))}

    old = {"train": man(("a", 1, 1), ("b", 2, 2)), "val": man(("v", 1, 1))}
    meta = {MANIFEST_KEY: json.dumps(old)}
    assert resume_data_warning(meta, old) is None
    assert resume_data_warning({}, old) is None  # a checkpoint from before manifests
    new = {"train": man(("a", 1, 9), ("c", 3, 3)), "val": man(("v", 1, 1))}
    assert "(train: 1 added, 1 removed, 1 changed)" in resume_data_warning(meta, new)
    assert "(val: 0 added, 1 removed, 0 changed)" in resume_data_warning(meta, {"train": old["train"]})
    assert "unreadable" in resume_data_warning({MANIFEST_KEY: "{not json"}, old)
