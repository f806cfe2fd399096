from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeppt.data import (
    ANIMAL_CLASSES,
    DETAIL_LOST_MAX,
    RAISE_TIMES,
    SMALL_SIDE,
    DataRecord,
    NeedsImageSize,
    detail_lost,
    detail_side,
    few_shot,
    fingerprint,
    load_dataset,
    load_folder,
    load_npz,
    load_target,
    train_test_split,
)
from edgeppt.errors import EdgepptError


def _write(path, size=(10, 10), value=128, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 0, 0)).save(path)


def test_builtin_animals_loads_without_tensorflow_and_selects_classes():
    ds = load_dataset("animals:elephant,giraffe")
    assert ds.classes == ["elephant", "giraffe"] and ds.shape == (1, 28, 28)
    assert ds.counts() == [1000, 1000]
    assert 0.0 <= ds.x.min() and ds.x.max() <= 1.0
    assert len(load_dataset("animals").classes) == len(ANIMAL_CLASSES) == 10


def test_digits_and_resize():
    ds = load_dataset("digits:0,1,2", image_size=16)
    assert ds.shape == (1, 16, 16) and ds.classes == ["0", "1", "2"]


def test_folder_rgb_gray_and_resize(tmp_path):
    for c in ("cat", "dog"):
        for i in range(3):
            _write(tmp_path / c / f"{i}.png", mode="RGB" if i else "L")
    ds = load_folder(tmp_path, image_size=8)
    # one gray picture among colour ones (sorted first here) does not make the set gray: colour where any image is
    assert ds.classes == ["cat", "dog"] and len(ds) == 6 and ds.shape == (3, 8, 8)
    per_channel = ds.x.mean((2, 3))
    gray, red = torch.tensor([128 / 255] * 3), torch.tensor([128 / 255, 0, 0])
    assert all(torch.allclose(c, e, atol=1 / 255) for c, e in zip(per_channel, [gray, red, red] * 2))
    assert load_folder(tmp_path, image_size=8, channels=1).shape == (1, 8, 8)  # asked for gray: gray
    (tmp_path / "cat" / "9.png").unlink(missing_ok=True)
    Image.new("RGB", (10, 12)).save(tmp_path / "cat" / "9.png")  # one image not square: refused from its header
    with pytest.raises(NeedsImageSize, match="not square|mixed sizes"):
        load_folder(tmp_path)


def _gradient(bits: int) -> np.ndarray:
    return np.linspace(0, 2 ** bits - 1, 16 * 16).reshape(16, 16)


def test_deep_and_turned_images_read_as_their_pixels(tmp_path):
    """A 16-bit image is scaled to 8 bits, not clipped white; a float one in [0, 1] not clipped black; a photo's
    EXIF orientation is applied; a .npz of 16-bit pixels is scaled by its type, and negative pixels are refused."""
    eight = _gradient(8).astype(np.uint8)
    (tmp_path / "a").mkdir()
    Image.fromarray(eight).save(tmp_path / "a" / "eight.png")
    Image.fromarray(_gradient(16).astype(np.uint16)).save(tmp_path / "a" / "sixteen.png")
    Image.fromarray(_gradient(16).astype(np.uint16)).save(tmp_path / "a" / "sixteen.tif")
    Image.fromarray((_gradient(8) / 255).astype(np.float32)).save(tmp_path / "a" / "float.tif")
    ds = load_folder(tmp_path)
    assert ds.shape == (1, 16, 16) and not ds.skipped and len(ds) == 4
    for x in ds.x:  # every file holds the same picture at another depth
        assert (x[0] * 255 - torch.from_numpy(eight).float()).abs().max() <= 1.0
    turned = Image.fromarray(np.tile(np.arange(8, dtype=np.uint8) * 30, (4, 1)))  # 4 high, 8 wide
    exif = turned.getexif()
    exif[0x0112] = 6  # EXIF Orientation: the camera was turned; a viewer turns the picture 90 degrees clockwise
    (tmp_path / "photos" / "b").mkdir(parents=True)
    turned.save(tmp_path / "photos" / "b" / "turned.jpg", exif=exif, quality=100)
    upright = load_folder(tmp_path / "photos", image_size=8).x[0, 0]
    assert upright[-1, 0] > upright[0, 0] + 0.5 and (upright[:, 0] - upright[:, -1]).abs().max() < 0.1  # top dark
    np.savez(tmp_path / "deep.npz", x=_gradient(16).astype(np.uint16)[None].repeat(2, 0), y=np.array([0, 1]))
    assert (load_npz(tmp_path / "deep.npz").x[0, 0] * 255 - torch.from_numpy(eight).float()).abs().max() <= 1.0
    np.savez(tmp_path / "neg.npz", x=np.full((2, 4, 4), -0.5, np.float32), y=np.array([0, 1]))
    with pytest.raises(EdgepptError, match=r"neg\.npz: x holds negative values \(down to -0\.5\)"):
        load_npz(tmp_path / "neg.npz")


def test_transparent_pixels_read_as_black_whatever_the_encoder_left_under_them(tmp_path):
    """RGBA, gray + alpha, a palette with a transparent entry (PNG, and an animated GIF's first frame): the same shape
    on black, and half-transparent white as mid gray, in training (load_folder) as on the device (the runner reads
    through image_io.to_8bit)."""
    shape = np.zeros((8, 8), bool)
    shape[2:6, 2:6] = True
    alpha = np.where(shape, 255, 0).astype(np.uint8)
    alpha[0, 0] = 128
    (tmp_path / "a").mkdir()
    rgba = np.dstack([np.full((8, 8, 3), 255, np.uint8), alpha])  # white under the transparent pixels too
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a" / "rgba.png")
    Image.fromarray(np.dstack([np.full((8, 8), 255, np.uint8), alpha]), "LA").save(tmp_path / "a" / "la.png")
    palette = Image.fromarray(np.where(shape, 1, 0).astype(np.uint8), "P")
    palette.putpalette([255, 255, 255, 255, 255, 255])  # both entries white; entry 0 is transparent
    palette.save(tmp_path / "a" / "palette.png", transparency=0)
    later = Image.fromarray(np.ones((8, 8), np.uint8), "P")  # a GIF is read as its first frame
    palette.save(tmp_path / "a" / "palette.gif", transparency=0, save_all=True, append_images=[later])
    expected = np.where(shape, 255, 0)
    expected[0, 0] = 128
    for channels in (1, 3):
        ds = load_folder(tmp_path, channels=channels)
        assert ds.shape == (channels, 8, 8) and not ds.skipped and len(ds) == 4
        for name, x in zip(("la", "palette", "palette", "rgba"), ds.x):
            want = expected if name != "palette" else np.where(shape, 255, 0)
            assert (x * 255 - torch.from_numpy(want).float()).abs().max() <= 1.0, name


def test_corrupt_image_is_skipped_and_reported(tmp_path):
    for c in ("a", "b"):
        for i in range(2):
            _write(tmp_path / c / f"{i}.png")
    bad = tmp_path / "a" / "broken.png"
    bad.write_bytes(b"not an image at all")
    ds = load_folder(tmp_path)
    assert len(ds) == 4 and len(ds.skipped) == 1 and str(bad) in ds.skipped[0]


def test_an_image_that_links_to_nothing_is_skipped_and_reported(tmp_path):
    for c in ("a", "b"):
        for i in range(2):
            _write(tmp_path / c / f"{i}.png")
    (tmp_path / "b" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    ds = load_folder(tmp_path)
    assert len(ds) == 4 and ds.skipped == [f"{tmp_path / 'b' / 'gone.png'}: a link to nothing"]


def test_empty_class_folder_is_refused(tmp_path):
    _write(tmp_path / "a" / "0.png")
    (tmp_path / "b").mkdir()
    with pytest.raises(EdgepptError, match="class folder .*b holds no images"):
        load_folder(tmp_path)


def test_class_with_only_unreadable_images_is_refused(tmp_path):
    _write(tmp_path / "a" / "0.png")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(EdgepptError, match="no readable image"):
        load_folder(tmp_path)


def test_one_class_is_refused(tmp_path):
    _write(tmp_path / "only" / "0.png")
    with pytest.raises(EdgepptError, match="at least two classes"):
        load_dataset(str(tmp_path))


def test_mixed_sizes_are_refused_unless_a_size_is_given(tmp_path):
    _write(tmp_path / "a" / "0.png", size=(10, 10))
    _write(tmp_path / "b" / "0.png", size=(12, 12))
    with pytest.raises(EdgepptError, match="mixed sizes"):
        load_folder(tmp_path)
    assert load_folder(tmp_path, image_size=10).shape == (1, 10, 10)


def test_the_target_keeps_its_own_side_raised_to_the_bundles_and_lowered_only_where_no_detail_is_lost(tmp_path):
    # the built-in digits are 8x8: raised to twice their side beside a larger bundle (RAISE_TIMES), never past the
    # bundle's side (a 12-px one) nor to it (a 256-px one); a 4-px bundle leaves them; image_size decides over all
    assert RAISE_TIMES * 8 < SMALL_SIDE
    assert load_target("digits:0,1", None, None, 28).shape == (1, 16, 16)
    assert load_target("digits:0,1", None, None, 256).shape == (1, 16, 16)  # not to 256
    assert load_target("digits:0,1", None, None, 12).shape == (1, 12, 12)  # nor past the bundle's side
    big16 = load_dataset("animals:cat,dog", 16)  # 16 px targets: raised to SMALL_SIDE (under twice their side)
    np.savez(tmp_path / "d16.npz", x=(big16.x.numpy() * 255).round().astype(np.uint8), y=big16.y.numpy())
    assert load_target(str(tmp_path / "d16.npz"), None, None, 56).shape == (1, SMALL_SIDE, SMALL_SIDE)
    tiny = load_dataset("digits:0,1", 6)  # nor past four times their own side
    np.savez(tmp_path / "d6.npz", x=(tiny.x.numpy() * 255).round().astype(np.uint8), y=tiny.y.numpy())
    assert load_target(str(tmp_path / "d6.npz"), None, None, 56).shape == (1, 12, 12)
    # from SMALL_SIDE up a target keeps its side beside a bundle drawn larger (G's samples are shrunk to it)
    for side in (SMALL_SIDE, 40):
        x = load_dataset("animals:cat,dog", side)
        np.savez(tmp_path / f"d{side}.npz", x=(x.x.numpy() * 255).round().astype(np.uint8), y=x.y.numpy())
        assert load_target(str(tmp_path / f"d{side}.npz"), None, None, 56).shape == (1, side, side)
    # non-square images without a bundle (scratch) are squared as with one, so the run's one recorded side rebuilds
    # the same images for export
    np.savez(tmp_path / "wide.npz", x=np.random.default_rng(1).integers(0, 256, (4, 1, 24, 40), dtype=np.uint8),
             y=[0, 1, 0, 1])
    wide = load_target(str(tmp_path / "wide.npz"), None, None, None)
    assert wide.shape == (1, 40, 40) and fingerprint(wide) == fingerprint(load_dataset(str(tmp_path / "wide.npz"), 40))
    np.savez(tmp_path / "huge.npz", x=np.random.default_rng(2).integers(0, 256, (2, 1, 600, 600), dtype=np.uint8),
             y=[0, 1])  # and at most AUTO_SIDE_MAX
    assert load_target(str(tmp_path / "huge.npz"), None, None, None).shape == (1, 512, 512)
    assert load_target("digits:0,1", None, None, 4).shape == (1, 8, 8)
    assert load_target("digits:0,1", None, None, None).shape == (1, 16, 16)  # no bundle: raised all the same
    assert load_target("digits:0,1", 6, None, 28).shape == (1, 6, 6)
    # a folder of one size whose images hold finer detail than a smaller bundle's side: their side
    rng = np.random.default_rng(0)
    for c in "ab":
        (tmp_path / "one" / c).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8), "L").save(tmp_path / "one" / c / "0.png")
    assert detail_lost(load_folder(tmp_path / "one").x, 8) > DETAIL_LOST_MAX
    assert load_target(str(tmp_path / "one"), None, None, 8).shape == (1, 12, 12)
    # ... and images with none (8x8 digits upscaled to 24): the bundle's side, where they lose nothing
    big = load_dataset("digits:0,1", 24)
    np.savez(tmp_path / "up.npz", x=(big.x.numpy() * 255).round().astype(np.uint8), y=big.y.numpy(),
             classes=big.classes)
    assert detail_lost(big.x, 12) <= DETAIL_LOST_MAX
    assert load_target(str(tmp_path / "up.npz"), None, None, 12).shape == (1, 12, 12)
    # 8 px pictures stored at SMALL_SIDE and above train at twice the side of their detail, with a bundle or without;
    # pictures whose detail needs more than half of SMALL_SIDE keep theirs (the animals)
    for side in (SMALL_SIDE, 40):
        up = load_dataset("digits", side)
        np.savez(tmp_path / f"up{side}.npz", x=(up.x.numpy() * 255).round().astype(np.uint8), y=up.y.numpy())
        detail = detail_side(up.x, SMALL_SIDE // RAISE_TIMES)
        assert detail is not None and 8 <= detail <= 12
        for bundle in (28, None):
            assert load_target(str(tmp_path / f"up{side}.npz"), None, None, bundle).shape[1] == RAISE_TIMES * detail
    assert detail_side(load_dataset("animals:cat,dog", 28).x, SMALL_SIDE // RAISE_TIMES) is None
    assert load_target("animals:cat,dog", None, None, 28).shape == (1, 28, 28)
    # mixed sizes and non-square images take the median of their longer sides by the same rule: these hold no
    # detail (one gray level), so the bundle's side
    _write(tmp_path / "mixed" / "a" / "0.png", size=(10, 10))
    _write(tmp_path / "mixed" / "b" / "0.png", size=(12, 12))
    _write(tmp_path / "wide" / "a" / "0.png", size=(16, 10))
    _write(tmp_path / "wide" / "b" / "0.png", size=(16, 10))
    assert load_target(str(tmp_path / "mixed"), None, None, 8).shape == (1, 8, 8)
    assert load_target(str(tmp_path / "wide"), None, None, 8).shape == (1, 8, 8)
    # without a bundle too (scratch): their median side, raised as any small target is
    assert load_target(str(tmp_path / "mixed"), None, None, None).shape[1] in (2 * 10, 2 * 11, 2 * 12)
    # a resized target is rebuilt from its record (export) with the same fingerprint
    for c in "ab":
        _write(tmp_path / "small" / c / "0.png", size=(6, 6), value=40 if c == "a" else 200)
    ds = load_target(str(tmp_path / "small"), None, None, 9)
    assert ds.shape == (1, 9, 9)
    rec = DataRecord.of(str(tmp_path / "small"), None, ds, ds, ds.subset([0]))
    assert fingerprint(rec.target_set()) == fingerprint(ds)


def test_npz_layouts_and_errors(tmp_path):
    x = np.random.randint(0, 255, (6, 9, 9, 3), np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 0, 1, 0, 1]))
    ds = load_npz(tmp_path / "d.npz")
    assert ds.shape == (3, 9, 9) and ds.classes == ["0", "1"]
    np.savez(tmp_path / "bad.npz", images=x)
    with pytest.raises(EdgepptError, match=r"needs arrays 'x' \(images\) and 'y' \(labels\), found \['images'\]"):
        load_npz(tmp_path / "bad.npz")
    # other tools' names: images/labels with class names (sorted, as class folders are), np.savez's positional names
    np.savez(tmp_path / "named.npz", images=x, labels=np.array(["dog", "cat", "dog", "cat", "eel", "cat"]))
    ds = load_npz(tmp_path / "named.npz")
    assert ds.classes == ["cat", "dog", "eel"] and ds.y.tolist() == [1, 0, 1, 0, 2, 0]
    np.savez(tmp_path / "positional.npz", x, np.array([[0.0], [1.0], [0.0], [1.0], [0.0], [1.0]]))
    assert load_npz(tmp_path / "positional.npz").y.tolist() == [0, 1, 0, 1, 0, 1]  # a column of whole floats
    for y, why in ((np.full(6, 0.5), r"'y' holds float64 values; labels are integers or class names"),
                   (np.array([0, 1, -1, 0, 1, 0]), r"'y' holds negative labels \(-1\)"),
                   (np.eye(6), r"'y' has shape \(6, 6\); labels are one number")):
        np.savez(tmp_path / "odd.npz", x=x, y=y)
        with pytest.raises(EdgepptError, match=why):
            load_npz(tmp_path / "odd.npz")
    for kind in (">u2", ">f4"):  # another byte order reads as the same pixels
        wide = x.astype(np.uint16) * 257 if kind == ">u2" else x.astype(np.float32) / 255
        np.savez(tmp_path / "order.npz", x=wide.astype(kind), y=np.arange(6) % 2)
        assert torch.allclose(load_npz(tmp_path / "order.npz").x, load_npz(tmp_path / "d.npz").x, atol=1e-6)
    # 8-bit values widened to uint16, [0, 1] floats that augmentation pushed past 1, names saved as bytes
    np.savez(tmp_path / "u16.npz", x=x.astype(np.uint16), y=np.arange(6) % 2, classes=np.array([b"cat", b"dog"]))
    ds = load_npz(tmp_path / "u16.npz")
    assert torch.allclose(ds.x, load_npz(tmp_path / "d.npz").x) and ds.classes == ["cat", "dog"]
    over = x.astype(np.float32) / 255 * 1.05
    np.savez(tmp_path / "over.npz", x=over, y=np.arange(6) % 2)
    assert torch.allclose(load_npz(tmp_path / "over.npz").x, torch.from_numpy(over.clip(0, 1)).permute(0, 3, 1, 2))
    np.savez(tmp_path / "few.npz", x=x, y=np.arange(6) % 3, classes=np.array(["a", "b"]))
    with pytest.raises(EdgepptError, match=r"label 2 in 'y' but only 2 names in 'classes'"):
        load_npz(tmp_path / "few.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(EdgepptError, match=r"junk\.npz: not a \.npz file \(numpy's zip archive") as e:
        load_npz(tmp_path / "junk.npz")
    assert "pickle" not in str(e.value)  # numpy's own message suggests loading untrusted files with pickle
    np.savez(tmp_path / "objects.npz", x=np.array([object()] * 6, dtype=object), y=np.arange(6) % 2)
    with pytest.raises(EdgepptError, match="array 'x' holds Python objects, which are never unpickled"):
        load_npz(tmp_path / "objects.npz")
    # damaged in transfer: a compressed member (zlib's own error type) or a member's header, each named as damage
    np.savez_compressed(tmp_path / "c.npz", x=np.random.default_rng(0).random((500, 1, 8, 8), np.float32),
                        y=np.arange(500) % 2)
    whole = (tmp_path / "c.npz").read_bytes()
    for pos in (100, 60):
        (tmp_path / "damaged.npz").write_bytes(whole[:pos] + bytes([whole[pos] ^ 0xFF]) + whole[pos + 1:])
        with pytest.raises(EdgepptError, match=r"damaged\.npz: array 'x' cannot be read \("):
            load_npz(tmp_path / "damaged.npz")


def test_unknown_dataset_and_class():
    with pytest.raises(EdgepptError, match="not found"):
        load_dataset("no/such/folder")
    with pytest.raises(EdgepptError, match="unknown classes"):
        load_dataset("animals:unicorn,cat")


def test_splits_are_fixed_stratified_and_seeded():
    ds = load_dataset("digits:0,1,2")
    tr1, te1 = train_test_split(ds, 0.2, seed=0)
    tr2, te2 = train_test_split(ds, 0.2, seed=0)
    assert torch.equal(te1.x, te2.x) and len(tr1) + len(te1) == len(ds)
    a, _ = few_shot(tr1, 4, seed=1)
    b, _ = few_shot(tr1, 4, seed=1)
    c, _ = few_shot(tr1, 4, seed=2)
    assert a.counts() == [4, 4, 4] and torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    with pytest.raises(EdgepptError, match="fewer than labels-per-class"):
        few_shot(tr1, 10_000, seed=0)


def test_a_data_record_rebuilds_the_splits_and_notices_changed_data(tmp_path):
    from edgeppt.data import DataRecord, few_shot, load_dataset, train_test_split

    ds = load_dataset("digits:0,1,2")
    np.savez(tmp_path / "t.npz", x=(ds.x.numpy()[:, 0] * 255).round().astype(np.uint8), y=ds.y.numpy(),
             classes=ds.classes)
    full = load_dataset(str(tmp_path / "t.npz"))
    pool, test = train_test_split(full, 0.2, seed=0)
    labelled, _ = few_shot(pool, 3, seed=1)
    rec = DataRecord.model_validate_json(DataRecord.of(str(tmp_path / "t.npz"), None, full, test, labelled)
                                         .model_dump_json())
    a, b = rec.splits()
    assert torch.equal(a.x, labelled.x) and torch.equal(b.y, test.y) and len(rec.pool()) == len(pool)
    x = (ds.x.numpy()[:, 0] * 255).round().astype(np.uint8)
    x[0, 0, 0] ^= 255  # one pixel changed on disk
    np.savez(tmp_path / "t.npz", x=x, y=ds.y.numpy(), classes=ds.classes)
    with pytest.raises(EdgepptError, match="differ from the ones the run used"):
        rec.splits()


@pytest.mark.parametrize("side", [10_000, 15_000])  # 100 MP: PIL only warns; 225 MP: PIL's own error
def test_a_huge_image_is_a_named_skip_refused_from_its_header(tmp_path, monkeypatch, side, huge_png):
    """The real limit refuses a real huge PNG from its header: the pixels are never decoded."""
    import warnings

    from PIL import ImageFile

    import edgeppt.data as data

    for c in ("a", "b"):
        for i in range(2):
            _write(tmp_path / c / f"{i}.png")
    big = tmp_path / "a" / "huge.png"
    huge_png(big, side)
    assert big.stat().st_size < 2_000_000 and side * side > data.MAX_IMAGE_PIXELS
    decoded: list[str] = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: decoded.append(im.filename) or load(im))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning escapes either
        ds = load_folder(tmp_path)
    assert len(ds) == 4 and set(decoded) == {str(p) for p in tmp_path.rglob("[01].png")}  # not huge.png
    assert len(ds.skipped) == 1 and ds.skipped[0].startswith(f"{big}: image too large")
    assert "over the limit of 64 megapixels" in ds.skipped[0]


def test_the_pixel_limit_applies_to_labelled_and_unlabelled_folders(tmp_path, monkeypatch):
    import edgeppt.data as data
    from edgeppt.data import load_unlabeled

    monkeypatch.setattr(data, "MAX_IMAGE_PIXELS", 150)  # 10x10 images pass, a 13x13 one does not
    for c in ("a", "b"):
        for i in range(2):
            _write(tmp_path / c / f"{i}.png")
    _write(tmp_path / "b" / "big.png", size=(13, 13))
    ds = load_folder(tmp_path, image_size=10)
    assert len(ds) == 4 and ds.skipped == [f"{tmp_path / 'b' / 'big.png'}: image too large: 13x13 pixels "
                                           "(0.000169 megapixels), over the limit of 0.00015 megapixels "
                                           "(edgeppt.data.MAX_IMAGE_PIXELS)"]
    x, skipped, _ = load_unlabeled(str(tmp_path), 10, 1)
    assert len(x) == 4 and len(skipped) == 1 and "big.png: image too large" in skipped[0]
    assert data.skipped_summary(ds.skipped).startswith("skipped 1 image file(s): ")


def test_unlabelled_images_over_the_limit_are_a_fixed_subset_chosen_before_reading(tmp_path, monkeypatch):
    import edgeppt.data as data
    from edgeppt.data import load_unlabeled

    for i in range(6):
        _write(tmp_path / "u" / f"{i}.png")
    read: list[str] = []
    real_read = data._read_image
    monkeypatch.setattr(data, "_read_image", lambda f, c: (read.append(f.name), real_read(f, c))[1])
    x, skipped, offered = load_unlabeled(str(tmp_path / "u"), 10, 1, limit=4)
    assert x.shape == (4, 1, 10, 10) and offered == 6 and not skipped
    assert len(read) == 4  # only the chosen files are read
    first = sorted(read)
    read.clear()
    load_unlabeled(str(tmp_path / "u"), 10, 1, limit=4)
    assert sorted(read) == first  # the same subset every time
    np.savez(tmp_path / "u.npz", x=np.arange(7 * 100, dtype=np.uint8).reshape(7, 10, 10))
    x, _, offered = load_unlabeled(str(tmp_path / "u.npz"), 10, 1, limit=3)
    assert x.shape == (3, 1, 10, 10) and offered == 7
    assert len(load_unlabeled(str(tmp_path / "u.npz"), 10, 1, limit=0)[0]) == 7  # 0 keeps all


def test_float_images_a_hair_outside_0_1_stay_0_1_and_photos_get_a_side_a_cpu_can_train(tmp_path):
    """[0, 1] floats that resampling pushed to 1.0001 (or -1e-7) are [0, 1] images, not 0-255 values; a target of
    large photos keeps at most four times the bundle's side (and 512) unless image_size asks for more; an .npz of
    colour images made gray is gray as Pillow (and the device) makes it."""
    import numpy as np

    from edgeppt.data import conform

    x = np.random.default_rng(0).random((6, 8, 8)).astype(np.float32)
    x[0, 0, 0], x[1, 0, 0] = 1.0001, -1e-7
    np.savez(tmp_path / "f.npz", x=x, y=np.array([0, 1] * 3))
    ds = load_npz(tmp_path / "f.npz")
    assert ds.x.max() == 1.0 and ds.x.min() == 0.0 and ds.x.mean() > 0.3
    noisy = np.random.default_rng(1).integers(0, 256, (8, 200, 200), dtype=np.uint8)  # detail at every side
    np.savez(tmp_path / "photos.npz", x=noisy, y=np.array([0, 1] * 4))
    assert load_target(str(tmp_path / "photos.npz"), None, None, 28).shape[1:] == (112, 112)
    assert load_target(str(tmp_path / "photos.npz"), 160, None, 28).shape[1:] == (160, 160)
    blue = torch.zeros(2, 3, 4, 4)
    blue[:, 2] = 1.0
    gray = conform(load_npz_like(blue), None, 1).x
    assert torch.allclose(gray, torch.full_like(gray, 0.114))  # Pillow's L of pure blue: 29 / 255


def load_npz_like(x: torch.Tensor):
    from edgeppt.data import ImageSet

    return ImageSet(x, torch.tensor([0, 1]), ["a", "b"])


def test_npz_labels_that_skip_numbers_are_the_classes_that_occur(tmp_path):
    """Integer labels 3, 7 and 9 (no names given) are three classes named by their values, not ten with seven
    empty; labels 0..k-1 read as before."""
    import numpy as np

    x = np.zeros((6, 8, 8), np.uint8)
    np.savez(tmp_path / "gaps.npz", x=x, y=np.array([9, 3, 7, 3, 9, 7]))
    ds = load_npz(tmp_path / "gaps.npz")
    assert ds.classes == ["3", "7", "9"] and ds.y.tolist() == [2, 0, 1, 0, 2, 1]
    np.savez(tmp_path / "plain.npz", x=x, y=np.array([0, 1, 2, 0, 1, 2]))
    assert load_npz(tmp_path / "plain.npz").classes == ["0", "1", "2"]


def test_colour_turns_gray_as_pillow_turns_a_file_gray():
    """G's colour samples for a gray target (and colour images for a gray C) take the gray levels the target's files
    and the device's runner get from Pillow (ITU-R 601 luma), not the channels' plain mean."""
    from PIL import Image

    from edgeppt.data import reshape_images

    a = np.random.default_rng(0).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    a[0, 0] = (255, 0, 0)  # pure red: luma 76, mean 85
    pil = np.asarray(Image.fromarray(a, "RGB").convert("L"), dtype=np.float32)
    ours = reshape_images(torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255, None, 1)[0, 0] * 255
    assert np.abs(ours.numpy() - pil).max() <= 1.0 and abs(float(ours[0, 0]) - 76) < 1


def _images(folder, n: int = 3, side: int = 8) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("L", (side, side), 30 * i).save(folder / f"{i}.png")


def test_class_sets_a_run_cannot_use_are_refused_in_one_line(tmp_path):
    """train/ and test/ folders each holding the classes are a split, not two classes; a class folder whose name
    is not UTF-8 (a zip from another system) or an .npz class that names a path cannot become the bundle's
    samples/<class>/ and labels.txt lines."""
    import os

    from edgeppt.errors import EdgepptError
    from edgeppt.pipeline.stages import data_fingerprint

    for split in ("train", "test"):
        for c in ("cat", "dog"):
            _images(tmp_path / "split" / split / c)
    with pytest.raises(EdgepptError, match=r"test, train look like a split.*split/test"):
        load_dataset(str(tmp_path / "split"))
    assert load_dataset(str(tmp_path / "split" / "train")).classes == ["cat", "dog"]

    latin = tmp_path / "latin"
    _images(latin / "dog")
    os.mkdir(os.fsencode(latin) + b"/caf\xe9")
    _images(Path(os.fsdecode(os.fsencode(latin) + b"/caf\xe9")))
    with pytest.raises(EdgepptError, match="not a UTF-8 name") as e:
        load_dataset(str(latin))
    assert "\n" not in str(e.value)
    assert data_fingerprint(str(latin))["sha256"]  # the pipeline's check of its inputs reads any name

    np.savez(tmp_path / "ids.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.array(["/m/0dzct", "/m/0dzct", "b", "b"]))
    with pytest.raises(EdgepptError, match="cannot name a file"):
        load_dataset(str(tmp_path / "ids.npz"))


def test_a_folder_with_a_colon_in_its_name_is_a_folder(tmp_path):
    """name:classes selects classes, unless the whole spec is a path that exists."""
    for c in ("a", "b", "c"):
        _images(tmp_path / "cam:1" / c)
    assert load_dataset(str(tmp_path / "cam:1")).classes == ["a", "b", "c"]
    assert load_dataset(str(tmp_path / "cam:1") + ":c,b").classes == ["c", "b"]


def test_unlabelled_images_of_one_built_in_class():
    """Unlabelled images are images only: one class of a built-in set is a valid pool (it asked for two classes)."""
    from edgeppt.data import load_unlabeled

    x, skipped, total = load_unlabeled("digits:3", 28, 3, limit=50)
    assert x.shape == (50, 3, 28, 28) and total == len(load_dataset("digits:3,4").x[load_dataset("digits:3,4").y == 0])
    assert skipped == [] and 0 <= float(x.min()) and float(x.max()) <= 1


def test_folders_as_real_users_keep_them(tmp_path):
    """What file managers, cameras and habits leave in a target folder: a test/ folder of class folders beside the
    classes is refused (it would be learnt as a class), linked sub-folders are read (each real folder once), hidden
    files, macOS's ._ files and __MACOSX are passed over, and formats Pillow cannot read are listed as skipped."""
    import os

    root = tmp_path / "t"
    rng = np.random.default_rng(0)

    def pic(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(path)

    for c in ("cat", "dog"):
        for i in range(3):
            pic(root / c / f"{i}.png")
    pic(root / "test" / "cat" / "9.png")
    with pytest.raises(EdgepptError, match=r"test/ holds class folders \(cat\) beside the class folders"):
        load_dataset(str(root))
    (root / "test" / "cat" / "9.png").rename(root / "test" / "9.png")
    (root / "test" / "cat").rmdir()
    assert load_dataset(str(root)).classes == ["cat", "dog", "test"]  # a class named test, holding its images
    for i in range(2):
        pic(tmp_path / "elsewhere" / f"{i}.png")
    os.symlink(tmp_path / "elsewhere", root / "cat" / "linked")
    os.symlink(root / "cat", root / "cat" / "loop")  # a link back up ends, it does not recurse
    (root / "cat" / ".thumbs").mkdir()
    pic(root / "cat" / ".thumbs" / "t.png")
    (root / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    pic(root / "__MACOSX" / "cat" / "x.png")
    (root / "dog" / "phone.heic").write_bytes(b"not read")
    pic(root / "@eaDir" / "0.png")  # a Synology NAS's thumbnails, at the top and inside a class
    pic(root / "dog" / "@eaDir" / "0.png")
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(root / "dog" / "web.jfif", "JPEG")
    ds = load_dataset(str(root))
    assert ds.classes == ["cat", "dog", "test"] and ds.counts() == [3 + 2, 3 + 1, 1]  # (+ the browser's .jfif)
    assert [s.split("/")[-1] for s in ds.skipped] == ["phone.heic: .heic images are not read; convert them to PNG or "
                                                      "JPEG"]


def test_large_photos_are_never_held_at_full_size_and_mixed_sizes_keep_their_detail(tmp_path, monkeypatch):
    """A folder of one large square size is read at the side training will use (at most four times the bundle's),
    not decoded whole first; photos of mixed sizes that hold detail keep the median of their sides (capped),
    rather than all dropping to the bundle's side for one odd picture."""
    import edgeppt.data as D

    rng = np.random.default_rng(0)
    for c in "ab":
        for i in range(2):
            (tmp_path / "big" / c).mkdir(parents=True, exist_ok=True)
            noise = rng.integers(0, 256, (300, 300), dtype=np.uint8)
            Image.fromarray(noise, "L").save(tmp_path / "big" / c / f"{i}.png")
    seen = []
    real = D.detail_lost
    monkeypatch.setattr(D, "detail_lost", lambda x, side, **k: seen.append(tuple(x.shape[-2:])) or real(x, side, **k))
    assert load_target(str(tmp_path / "big"), None, None, 16).shape == (1, 64, 64)
    assert set(seen) == {(64, 64)}  # the decisions were made on images read at 64, never on 300 px ones
    for c, sides in (("a", (40, 40)), ("b", (40, 44))):
        for i, s in enumerate(sides):
            (tmp_path / "mixed" / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (s, s), dtype=np.uint8), "L").save(tmp_path / "mixed" / c / f"{i}.png")
    assert load_target(str(tmp_path / "mixed"), None, None, 16).shape == (1, 40, 40)
