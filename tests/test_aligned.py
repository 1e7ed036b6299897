"""The aligned (pix2pix layout) dataset and the image helpers behind it."""
from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from data_helpers import make_aligned_dataset, pattern, save, side_by_side  # noqa: E402

from bicycle.data.aligned import AlignedDataset, build_aligned  # noqa: E402
from bicycle.data.base import DatasetRequest, PairedDataset  # noqa: E402
from bicycle.data.images import (  # noqa: E402
    list_images,
    load_image_file,
    load_input_images,
    scan_images,
)
from bicycle.errors import ConfigError, DataError  # noqa: E402

STEP = 1 / 127.5


def ds(root, split="train", size=16, **kw):
    kw.setdefault("progress", False)
    return AlignedDataset(root, split, size, **kw)


# -- layout ------------------------------------------------------------------------------------


def test_layout_splits_and_shapes(tmp_path):
    root = make_aligned_dataset(tmp_path / "d", n_train=3, n_val=2, size=16)
    train, val = ds(root, "train"), ds(root, "val")
    assert isinstance(train, PairedDataset)
    assert (len(train), len(val)) == (3, 2)
    assert [p.name for p in train.paths] == ["000.png", "001.png", "002.png"]
    assert all(p.parent == root / "val" for p in val.paths)
    a, b = train[0]
    assert a.shape == b.shape == (3, 16, 16) and a.dtype == torch.float32
    assert train.a_channels == train.b_channels == 3 and train.image_size == 16
    assert -1.0 <= float(a.min()) and float(a.max()) <= 1.0


def test_exact_halves_without_resize(tmp_path):
    a = pattern(8, 8, 3, seed=1)
    b = pattern(8, 8, 3, seed=2)
    save(side_by_side(a, b), tmp_path / "train" / "x.png")
    ta, tb = ds(tmp_path, "train", 8)[0]
    torch.testing.assert_close(ta, torch.from_numpy(a).permute(2, 0, 1).float() / 127.5 - 1)
    torch.testing.assert_close(tb, torch.from_numpy(b).permute(2, 0, 1).float() / 127.5 - 1)
    # BtoA swaps
    sa, sb = ds(tmp_path, "train", 8, direction="BtoA")[0]
    assert torch.equal(sa, tb) and torch.equal(sb, ta)


def test_direction_swap_with_resize(tmp_path):
    root = make_aligned_dataset(tmp_path, n_train=2, size=12)
    ab = ds(root, "train", 8, load_size=10, flip=True, seed=3)
    ba = ds(root, "train", 8, load_size=10, flip=True, seed=3, direction="BtoA")
    for i in range(2):
        (a1, b1), (a2, b2) = ab[i], ba[i]
        assert torch.equal(a1, b2) and torch.equal(b1, a2)
    with pytest.raises(ConfigError, match="direction"):
        ds(root, direction="sideways")


def test_build_aligned_from_request(tmp_path):
    root = make_aligned_dataset(tmp_path, n_train=2, n_val=1, size=16)
    req = DatasetRequest(split="val", image_size=8, path=str(root), direction="BtoA", flip=True,
                         load_size=12, seed=5, options=(("progress", False), ("cache_mb", 1)))
    d = build_aligned(req)
    assert isinstance(d, AlignedDataset) and len(d) == 1
    assert (d.direction, d.load_size, d.seed, d.flip) == ("BtoA", 12, 5, False)  # val never flips
    assert d.cache_bytes == 1 << 20
    with pytest.raises(ConfigError, match="folder"):
        build_aligned(DatasetRequest(split="train", image_size=8))


def test_flat_folder_used_for_every_split(tmp_path, capsys):
    a = pattern(8, 8)
    save(side_by_side(a, 255 - a), tmp_path / "only.png")
    d_train = AlignedDataset(tmp_path, "train", 8)
    d_val = ds(tmp_path, "val", 8)
    assert d_train.paths == d_val.paths == [tmp_path / "only.png"]
    assert "no train/ or val/ folder" in capsys.readouterr().err


def test_missing_split_folder_is_named(tmp_path):
    root = make_aligned_dataset(tmp_path, n_train=1, n_val=0)
    assert not (root / "val").exists()
    with pytest.raises(DataError, match=str(root / "val")):
        ds(root, "val")


def test_listing_extensions_case_and_order(tmp_path):
    a = pattern(8, 8)
    for name in ["b.PNG", "a.jpg", "c.JpEg", "d.bmp", "e.webp", "10.png", "2.png"]:
        save(side_by_side(a, a), tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "._a.jpg").write_bytes(b"junk")  # macOS resource fork: ignored
    (tmp_path / "sub.png").mkdir()  # a folder with an image name: ignored
    names = [p.name for p in list_images(tmp_path)]
    assert names == ["10.png", "2.png", "a.jpg", "b.PNG", "c.JpEg", "d.bmp", "e.webp"]


# -- channels ----------------------------------------------------------------------------------


def test_grayscale_gives_one_channel(tmp_path):
    for i in range(2):
        a = pattern(8, 8, 1, seed=i)
        save(side_by_side(a, 255 - a), tmp_path / "train" / f"{i}.png")
    d = ds(tmp_path, "train", 8)
    assert d.a_channels == d.b_channels == 1
    a, b = d[1]
    assert a.shape == b.shape == (1, 8, 8)
    torch.testing.assert_close(b, -a)
    ga, gb = d.get_batch([0, 1])
    assert ga.shape == (2, 1, 8, 8)


@pytest.mark.parametrize("mode", ["RGBA", "P"])
def test_rgba_and_palette_give_rgb(tmp_path, mode):
    arr = pattern(8, 16, 4 if mode == "RGBA" else 3)
    save(arr, tmp_path / "train" / "x.png", mode=mode)
    assert Image.open(tmp_path / "train" / "x.png").mode == mode
    d = ds(tmp_path, "train", 8)
    assert d.a_channels == 3
    assert d[0][0].shape == (3, 8, 8)
    assert load_image_file(tmp_path / "train" / "x.png").shape == (8, 16, 3)


def test_sixteen_bit_grayscale(tmp_path):
    arr = (np.arange(8 * 16, dtype=np.uint16).reshape(8, 16) * 500).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    out = load_image_file(tmp_path / "g16.png")
    assert out.shape == (8, 16, 1) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :, 0], (arr >> 8).astype(np.uint8))


def test_channel_mismatch_names_first_differing_file(tmp_path):
    save(side_by_side(pattern(8, 8, 3), pattern(8, 8, 3)), tmp_path / "train" / "a.png")
    save(side_by_side(pattern(8, 8, 3), pattern(8, 8, 3)), tmp_path / "train" / "b.png")
    save(side_by_side(pattern(8, 8, 1), pattern(8, 8, 1)), tmp_path / "train" / "c.png")
    save(side_by_side(pattern(8, 8, 1), pattern(8, 8, 1)), tmp_path / "train" / "d.png")
    with pytest.raises(DataError, match=r"c\.png has 1 channel") as e:
        ds(tmp_path, "train", 8)
    assert "d.png" not in str(e.value)


# -- augmentation ------------------------------------------------------------------------------


def test_crop_flip_deterministic_per_seed_epoch_index(tmp_path):
    root = make_aligned_dataset(tmp_path, n_train=6, size=16)
    d1 = ds(root, "train", 8, load_size=16, flip=True, seed=7)
    d2 = ds(root, "train", 8, load_size=16, flip=True, seed=7)
    for epoch in (0, 3):
        d1.set_epoch(epoch)
        d2.set_epoch(epoch)
        # same (seed, epoch, index) -> same data, whatever the order of access / batch composition
        a1, b1 = d1.get_batch([0, 1, 2, 3, 4, 5])
        for i in (5, 2, 0):
            a2, b2 = d2[i]
            assert torch.equal(a1[i], a2) and torch.equal(b1[i], b2)
    e0 = [d1.crop_params(i, epoch=0) for i in range(6)]
    e1 = [d1.crop_params(i, epoch=1) for i in range(6)]
    assert e0 != e1
    d1.set_epoch(1)
    assert [d1.crop_params(i) for i in range(6)] == e1
    other_seed = ds(root, "train", 8, load_size=16, flip=True, seed=8)
    assert [other_seed.crop_params(i, epoch=0) for i in range(6)] != e0
    # crops stay in range, flips happen both ways over a few epochs
    allp = [d1.crop_params(i, epoch=e) for i in range(6) for e in range(8)]
    assert all(0 <= t <= 8 and 0 <= l <= 8 for t, l, _ in allp)
    assert {f for *_, f in allp} == {True, False}
    assert len({(t, l) for t, l, _ in allp}) > 10


def test_no_flip_unless_requested_and_val_is_centre(tmp_path):
    root = make_aligned_dataset(tmp_path, n_train=4, n_val=2, size=16)
    d = ds(root, "train", 8, load_size=12, flip=False)
    assert not any(d.crop_params(i, epoch=e)[2] for i in range(4) for e in range(10))
    v = ds(root, "val", 8, load_size=12, flip=True)
    assert [v.crop_params(i, epoch=e) for i in range(2) for e in range(3)] == [(2, 2, False)] * 6


def test_crop_and_flip_match_manual_computation(tmp_path):
    root = make_aligned_dataset(tmp_path, n_train=3, size=16)
    d = ds(root, "train", 8, load_size=14, flip=True, seed=1)
    seen_flip = False
    for epoch in range(4):
        d.set_epoch(epoch)
        for i in range(3):
            top, left, flip = d.crop_params(i)
            seen_flip |= flip
            a_full, b_full = d.load_pair(i)
            assert a_full.shape == (14, 14, 3)
            for full, got in ((a_full, d[i][0]), (b_full, d[i][1])):
                crop = full[top : top + 8, left : left + 8]
                if flip:
                    crop = crop[:, ::-1]
                want = torch.from_numpy(crop.copy()).permute(2, 0, 1).float() / 127.5 - 1
                torch.testing.assert_close(got, want)
    assert seen_flip


def test_alignment_preserved_under_crop_and_flip(tmp_path):
    # B = 255 - A pixel for pixel, so a shared resize/crop/flip keeps B == -A (to one rounding step)
    root = make_aligned_dataset(tmp_path, n_train=4, size=20)
    for direction in ("AtoB", "BtoA"):
        d = ds(root, "train", 12, load_size=18, flip=True, seed=2, direction=direction)
        flips = set()
        for epoch in range(4):
            d.set_epoch(epoch)
            a, b = d.get_batch(list(range(4)))
            torch.testing.assert_close(b, -a, atol=1.01 * STEP, rtol=0)
            flips |= {d.crop_params(i)[2] for i in range(4)}
            # and a misaligned pair would NOT pass: shifting B by one pixel breaks it
            assert (b[..., 1:] + a[..., :-1]).abs().max() > 10 * STEP
        assert flips == {True, False}


def test_get_batch_equals_stacked_getitem(tmp_path):
    root = make_aligned_dataset(tmp_path, n_train=5, size=16)
    d = ds(root, "train", 8, load_size=12, flip=True, seed=4)
    d.set_epoch(2)
    idx = [4, 0, 2, 2, -1]
    a, b = d.get_batch(idx)
    assert a.shape == (5, 3, 8, 8)
    fresh = ds(root, "train", 8, load_size=12, flip=True, seed=4)
    fresh.set_epoch(2)
    items = [fresh[i] for i in idx]
    assert torch.equal(a, torch.stack([x for x, _ in items]))
    assert torch.equal(b, torch.stack([y for _, y in items]))
    ea, eb = d.get_batch([])
    assert ea.shape == (0, 3, 8, 8) and eb.shape == (0, 3, 8, 8)
    with pytest.raises(IndexError):
        d[5]


def test_cache_is_bounded_and_pickle_drops_it(tmp_path):
    root = make_aligned_dataset(tmp_path, n_train=5, size=16)
    per_item = 2 * 16 * 16 * 3
    d = ds(root, "train", 8, load_size=16, cache_bytes=2 * per_item)
    ref = ds(root, "train", 8, load_size=16, cache_bytes=0)
    for i in [0, 1, 2, 3, 4, 0, 1]:
        assert torch.equal(d[i][0], ref[i][0])
        assert d.cached_bytes <= 2 * per_item
    assert d.cached_bytes == 2 * per_item and ref.cached_bytes == 0
    clone = pickle.loads(pickle.dumps(d))
    assert clone.cached_bytes == 0 and torch.equal(clone[3][1], d[3][1])


def test_bad_sizes_are_config_errors(tmp_path):
    root = make_aligned_dataset(tmp_path, n_train=1)
    with pytest.raises(ConfigError, match="load_size"):
        ds(root, "train", 16, load_size=8)


# -- start-up check and errors -----------------------------------------------------------------


def test_missing_root_is_named(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nope")):
        ds(tmp_path / "nope")


def test_empty_folder_is_named(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=str(tmp_path / "train")) as e:
        ds(tmp_path, "train")
    assert "no images" in str(e.value)
    empty = tmp_path / "empty_root"
    empty.mkdir()
    with pytest.raises(DataError, match=str(empty)):
        ds(empty, "train")


def test_corrupt_file_is_named(tmp_path):
    root = make_aligned_dataset(tmp_path, n_train=3)
    bad = root / "train" / "001.png"
    bad.write_bytes(b"this is not a png at all")
    with pytest.raises(DataError, match=rf"cannot read image {bad}: truncated or not an image"):
        ds(root, "train")


def test_truncated_png_is_named(tmp_path):
    root = make_aligned_dataset(tmp_path, n_train=3, size=32)
    bad = root / "train" / "002.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=f"cannot read image {bad}"):
        ds(root, "train")


def test_several_bad_files_give_one_error(tmp_path):
    root = make_aligned_dataset(tmp_path, n_train=4)
    for n in ("001.png", "003.png"):
        (root / "train" / n).write_bytes(b"junk")
    with pytest.raises(DataError, match=r"2 of 4 images in .*train cannot be used: 001\.png \(truncated or not an "
                                         r"image\), 003\.png \("):
        ds(root, "train")
    for i in range(4, 12):
        (root / "train" / f"{i:03d}.png").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"10 of 12 images .*: 001\.png .*, 006\.png \([^)]*\) and 5 more$"):
        ds(root, "train")


def test_odd_width_is_named(tmp_path):
    root = make_aligned_dataset(tmp_path, n_train=2)
    bad = save(pattern(8, 17), root / "train" / "odd.png")
    with pytest.raises(DataError, match=rf"{bad} is 17x8.*even"):
        ds(root, "train")
    save(pattern(8, 1), root / "train" / "odd.png")
    with pytest.raises(DataError, match=rf"{bad} is 1x8.*too narrow"):
        ds(root, "train")


def test_truncated_jpeg_fails_at_start_up_naming_it(tmp_path):
    # a header check cannot see a JPEG cut short; the start-up check decodes every file
    a = pattern(32, 32)
    bad = save(side_by_side(a, a), tmp_path / "train" / "x.jpg")
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match=f"cannot read image {bad}: truncated$"):
        ds(tmp_path, "train", 8)


def test_progress_line(tmp_path, capsys):
    a = pattern(8, 8)
    for i in range(37):
        save(side_by_side(a, a), tmp_path / "train" / f"{i:02d}.png")
    AlignedDataset(tmp_path, "train", 8)
    err = capsys.readouterr().err
    folder = tmp_path / "train"
    assert f"checking 37 images in {folder} ..." in err
    assert err.endswith("100%\n")
    assert 2 <= err.count("\r") <= 12
    # off: nothing written
    AlignedDataset(tmp_path, "train", 8, progress=False)
    assert capsys.readouterr().err == ""


def test_scan_images_reports_sizes_and_empty_list(tmp_path, capsys):
    p1 = save(pattern(6, 10, 1), tmp_path / "g.png")
    p2 = save(pattern(4, 8, 3), tmp_path / "c.png")
    infos = scan_images([p1, p2], progress=False)
    assert [(i.width, i.height, i.channels) for i in infos] == [(10, 6, 1), (8, 4, 3)]
    with pytest.raises(DataError, match="no images"):
        scan_images([], progress=False, label=str(tmp_path))


# -- inputs for `bicycle sample --input` ------------------------------------------------------


def test_load_input_images(tmp_path):
    save(pattern(10, 14, 3), tmp_path / "in" / "b.png")
    save(pattern(5, 5, 1), tmp_path / "in" / "a.jpg")
    x = load_input_images(tmp_path / "in", 8, 3)
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    g = load_input_images(tmp_path / "in", 8, 1)
    assert g.shape == (2, 1, 8, 8)
    # a grayscale file converted to 3 channels repeats the gray value
    assert torch.equal(x[0, 0], x[0, 1]) and torch.equal(x[0, 1], x[0, 2])
    one = load_input_images(tmp_path / "in" / "b.png", 10, 3)
    assert one.shape == (1, 3, 10, 10)
    same = load_input_images(tmp_path / "in" / "b.png", 8, 3)
    assert torch.equal(same[0], x[1])
    with pytest.raises(DataError, match=str(tmp_path / "missing")):
        load_input_images(tmp_path / "missing", 8, 3)
    (tmp_path / "in" / "c.png").write_bytes(b"junk")
    with pytest.raises(DataError, match=str(tmp_path / "in" / "c.png")):
        load_input_images(tmp_path / "in", 8, 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=str(tmp_path / "empty")):
        load_input_images(tmp_path / "empty", 8, 3)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="not an image file"):
        load_input_images(tmp_path / "notes.txt", 8, 3)
