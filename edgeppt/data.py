"""Image datasets: class folders, .npz files and the built-in sets, held in memory as tensors.

Every loader returns an `ImageSet` of float images in [0, 1], shape (N, C, H, W).
Few-shot target sets are small, so keeping them in memory makes batching a cheap index.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel

from .errors import EdgepptError
from .image_io import GRAY_MODES, full_scale, read_pixels

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".tif", ".tiff", ".webp", ".gif",  # GIF: frame 1
                  ".pbm", ".pgm", ".ppm", ".pnm", ".tga"}  # (.jfif: what browsers on Windows save photos as)
# The largest image read, in pixels (checked from the file header, before decoding): 64 MP is an 8000x8000 photo,
# about 200 MB decoded as RGB. Larger files are skipped and named, so a decompression bomb costs no memory.
MAX_IMAGE_PIXELS = 64_000_000
ANIMAL_CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
BUILTIN = {"animals": ANIMAL_CLASSES, "digits": [str(i) for i in range(10)]}
EXAMPLE_TARGET = "animals:elephant,giraffe,horse,sheep,zebra"


@dataclass
class ImageSet:
    x: torch.Tensor  # float32 (N, C, H, W) in [0, 1]
    y: torch.Tensor  # int64 (N,)
    classes: list[str]
    skipped: list[str] = field(default_factory=list)  # unreadable files, reported to the user
    index: torch.Tensor | None = None  # positions in the set it was split from (None: it is the whole set)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def subset(self, idx: torch.Tensor | np.ndarray | list[int]) -> ImageSet:
        idx = torch.as_tensor(idx, dtype=torch.long)
        origin = idx if self.index is None else self.index[idx]
        return ImageSet(self.x[idx], self.y[idx], list(self.classes), list(self.skipped), origin)

    def positions(self) -> list[int]:
        """Where these images sit in the set they were split from (all of it, when not split)."""
        return (self.index if self.index is not None else torch.arange(len(self))).tolist()

    def counts(self) -> list[int]:
        return torch.bincount(self.y, minlength=len(self.classes)).tolist()


# ---------------------------------------------------------------- built-in sets
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The animal-mnist files are numpy pickles; refuse any global but the three that rebuild an array."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        if name == "_reconstruct":
            from numpy._core.multiarray import _reconstruct
            return _reconstruct
        return getattr(np, name)


def _animal_mnist_dir() -> Path:
    spec = find_spec("animal_mnist")  # locate without importing: its __init__ wants TensorFlow
    if spec is None or not spec.submodule_search_locations:
        raise EdgepptError("the built-in 'animals' set needs the animal-mnist package: "
                           "pip install --no-deps animal-mnist")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "Animal_MNIST"


def _load_animals() -> tuple[np.ndarray, np.ndarray]:
    d = _animal_mnist_dir()
    with gzip.open(d / "animal_data_version_3.gz", "rb") as f:
        x = _NumpyOnlyUnpickler(f).load()
    with gzip.open(d / "animal_label_version_3.gz", "rb") as f:
        y = _NumpyOnlyUnpickler(f).load()
    return np.asarray(x, np.uint8)[:, None], np.asarray(y, np.int64)


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.images / 16.0 * 255).round().astype(np.uint8)[:, None]
    return x, d.target.astype(np.int64)


def load_builtin(name: str) -> ImageSet:
    loaders = {"animals": _load_animals, "digits": _load_digits}
    if name not in loaders:
        raise EdgepptError(f"unknown built-in dataset {name!r}; choose one of {sorted(loaders)}")
    x, y = loaders[name]()
    return ImageSet(torch.from_numpy(x).float() / 255.0, torch.from_numpy(y), list(BUILTIN[name]))


# ---------------------------------------------------------------- files
class ImageTooLarge(ValueError):
    """An image whose header declares more than MAX_IMAGE_PIXELS pixels: skipped like an unreadable file."""


# What reading one image file may raise; load_folder and load_unlabeled skip such a file and name it.
READ_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def _too_large(what: str) -> ImageTooLarge:
    return ImageTooLarge(f"{what}, over the limit of {MAX_IMAGE_PIXELS / 1e6:g} megapixels "
                         "(edgeppt.data.MAX_IMAGE_PIXELS)")


def open_image(path: Path) -> Image.Image:
    """Open an image, reading only its header, and refuse it when it declares too many pixels."""
    with warnings.catch_warnings():
        # PIL warns between its own limit and twice it; ours is lower and decides below.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except Image.DecompressionBombError:  # over twice PIL's own limit, which is above ours
            raise _too_large("image too large") from None
    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS:
        im.close()
        raise _too_large(f"image too large: {w}x{h} pixels ({w * h / 1e6:.3g} megapixels)")
    return im


def _read_image(path: Path, channels: int | None) -> np.ndarray:
    with open_image(path) as im:
        im.load()
        return read_pixels(im, channels)


def _skip_entry(path: Path, e: Exception) -> str:
    """How a skipped file is listed: its path, then why."""
    return f"{path}: {e}" if isinstance(e, ImageTooLarge) else f"{path}: {type(e).__name__}: {e}"


def skipped_summary(skipped: list[str], shown: int = 3) -> str:
    """One line for the user: how many image files were skipped (unreadable, or in a format not read) and the first
    few, each with its reason."""
    more = f"; and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return f"skipped {len(skipped)} image file(s): " + "; ".join(skipped[:shown]) + more


def _resize(a: np.ndarray, size: int) -> np.ndarray:
    if a.shape[1:] == (size, size):
        return a
    mode = "L" if a.shape[0] == 1 else "RGB"
    im = Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0), mode)
    im = im.resize((size, size), Image.Resampling.BILINEAR)
    b = np.asarray(im, dtype=np.uint8)
    return b[None] if b.ndim == 2 else b.transpose(2, 0, 1)


class NeedsImageSize(EdgepptError):
    """A folder whose images have no one square size: a side must be given to resize them to. `side` is the median
    of their longer sides (0 where unknown), what a side chosen for them starts from."""

    def __init__(self, message: str, side: int = 0) -> None:
        super().__init__(message)
        self.side = side


# What file managers and archivers leave among images: never images of the set (macOS's ._name files are hidden
# entries too).
IGNORED_ENTRIES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini", "$RECYCLE.BIN", "@eaDir", "#recycle"})  # (NAS)
# Image files Pillow cannot read here: listed as skipped, so that a folder of them is not silently smaller.
UNREAD_SUFFIXES = {".heic", ".heif", ".avif", ".jxl", ".dng", ".cr2", ".nef", ".arw"}


def _ignored(name: str) -> bool:
    return name.startswith(".") or name in IGNORED_ENTRIES


def image_files(folder: Path) -> tuple[list[Path], list[str]]:
    """The image files under `folder` at any depth, sorted, and the skipped entries among them (links to nothing,
    formats that are not read). Links to folders are followed, each real folder once (a link loop ends); hidden
    entries and what file managers add are passed over."""
    files: list[Path] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for top, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not _ignored(d))
        for n in names:
            suffix = Path(n).suffix.lower()
            if _ignored(n) or suffix not in IMAGE_SUFFIXES | UNREAD_SUFFIXES:
                continue
            p = Path(top, n)
            if suffix in UNREAD_SUFFIXES:
                skipped.append(f"{p}: {suffix} images are not read; convert them to PNG or JPEG")
            elif not p.exists():
                skipped.append(f"{p}: a link to nothing")
            else:
                files.append(p)
    return sorted(files), sorted(skipped)


def _headers(root: Path, files: list[Path], channels: int | None, image_size: int | None) -> tuple[int, int | None]:
    """What the images' headers say before any is decoded: colour where any image is (one gray picture among
    colour ones must not make the set gray), and, with no side given, their one square side, or a refusal where
    the sizes differ or are not square (rather than after decoding every photo of a folder at full size)."""
    colour, sizes = False, []
    for p in files:
        try:
            with open_image(p) as im:
                colour = colour or not (im.mode in GRAY_MODES or (im.mode == "P" and
                                                                   getattr(im.palette, "mode", "") == "L"))
                sizes.append((im.size, p))
        except READ_ERRORS:  # listed as skipped when it is read
            continue
    channels = channels if channels is not None else 3 if colour else 1
    shapes = {size for size, _ in sizes}
    if image_size is not None or not shapes:
        return channels, None
    if len(shapes) > 1 or any(w != h for w, h in shapes):
        (w, h), p = next(((s, p) for s, p in sizes if s != sizes[0][0] or s[0] != s[1]), sizes[0])
        what = f"mixed sizes (e.g. {h}x{w}: {p})" if len(shapes) > 1 else f"{h}x{w}, not square ({p})"
        raise NeedsImageSize(f"{root}: images have {what}. Pass an image size to resize them all "
                             "(--set image_size=N)", int(np.median([max(s) for s, _ in sizes])))
    return channels, next(iter(shapes))[0]


SPLIT_NAMES = frozenset({"train", "training", "test", "testing", "val", "valid", "validation", "eval", "dev"})


def check_class_names(names: list[str], where: str) -> None:
    """Class names become file names and lines in the export bundle (samples/<class>/, labels.txt): refuse the
    ones that cannot be (a path, an empty name, a line break, bytes that are not UTF-8)."""
    for n in names:
        try:
            n.encode("utf-8")
        except UnicodeEncodeError:
            raise EdgepptError(f"{where}: class {n.encode('utf-8', 'surrogateescape')!r} is not a UTF-8 name; "
                               "rename it") from None
        if not n.strip() or n in (".", "..") or any(c in n for c in "/\\\n\r\0"):
            raise EdgepptError(f"{where}: class name {n!r} cannot name a file (a path, an empty name or a line "
                               "break); rename it")


def _check_splits(root: Path, class_dirs: list[Path]) -> None:
    """train/ or test/ holding class folders is a split of the data, not a class (its images would be learnt as
    one class of mixed pictures): refused, whether it stands alone or beside the class folders."""
    names = {p.name for p in class_dirs}
    splits = [p for p in class_dirs if p.name.lower() in SPLIT_NAMES]
    nested = {p.name: sorted(q.name for q in p.iterdir() if q.is_dir() and not _ignored(q.name)) for p in splits}
    if splits and len(splits) == len(class_dirs) and any(nested.values()):
        raise EdgepptError(f"{root}: {', '.join(p.name for p in splits)} look like a split of the data, each "
                           f"holding class folders; give the training images' folder ({splits[0]}) as the target "
                           "(and another as the test set, if you have one)")
    for p in splits:
        shared = [n for n in nested[p.name] if n in names]
        if shared:
            raise EdgepptError(f"{root}: {p.name}/ holds class folders ({', '.join(shared[:3])}) beside the class "
                               f"folders themselves; move {p} out of {root} (and give it as --test, if it is a "
                               "test set)")


def load_folder(root: str | Path, image_size: int | None = None, channels: int | None = None,
                max_side: int | None = None) -> ImageSet:
    """A folder of class sub-folders. Unreadable files are skipped and listed in `skipped`. With no `image_size`,
    images of one square side above `max_side` are read at `max_side`."""
    root = Path(root)
    if not root.is_dir():
        raise EdgepptError(f"{root}: not a folder of class folders (nor a .npz file)")
    entries = [p for p in root.iterdir() if not _ignored(p.name)]
    dangling = sorted(p.name for p in entries if p.is_symlink() and not p.exists())
    if dangling:  # a class would vanish without a word
        raise EdgepptError(f"{root}: {', '.join(dangling)} link(s) to nothing; fix or remove the link")
    class_dirs = sorted(p for p in entries if p.is_dir())
    if not class_dirs:
        raise EdgepptError(f"{root}: no class sub-folders found (expected {root}/<class>/<image>.png)")
    check_class_names([p.name for p in class_dirs], str(root))
    _check_splits(root, class_dirs)
    images: list[np.ndarray] = []
    labels: list[int] = []
    skipped: list[str] = []
    sizes: dict[tuple[int, ...], Path] = {}  # image (H, W) -> the first file of that size
    per_class = []
    for d in class_dirs:
        files, passed = image_files(d)
        skipped += passed
        if not files:
            raise EdgepptError(f"class folder {d} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        per_class.append(files)
    if channels is None or image_size is None:  # from the headers alone, before any image is decoded
        channels, side = _headers(root, [p for files in per_class for p in files], channels, image_size)
        if image_size is None and side and max_side and side > max_side:
            image_size = max_side  # large photos: never all in memory at full size
    for ci, files in enumerate(per_class):
        for p in files:
            try:
                a = _read_image(p, channels)
            except READ_ERRORS as e:
                skipped.append(_skip_entry(p, e))
                continue
            sizes.setdefault(a.shape[1:], p)
            # Resized at once when the size is known, so memory holds one full-size image at a time.
            images.append(a if image_size is None else _resize(a, image_size))
            labels.append(ci)
    if image_size is None:
        if len(sizes) > 1:
            listed = "; ".join(f"{h}x{w} (e.g. {p})" for (h, w), p in list(sizes.items())[:3])
            raise NeedsImageSize(f"{root}: images have mixed sizes: {listed}. Pass an image size to resize them "
                                 "all (--set image_size=N)")
        (h, w), = sizes.keys() if sizes else [(0, 0)]
        if h != w:
            raise NeedsImageSize(f"{root}: images are {h}x{w}, not square. Pass an image size to resize them "
                                 "(--set image_size=N)")
        image_size = h
    images = [_resize(a, image_size) for a in images]
    y = np.asarray(labels, np.int64)
    classes = [d.name for d in class_dirs]
    for ci, name in enumerate(classes):
        if not (y == ci).any():
            raise EdgepptError(f"class {name!r} in {root} has no readable image (see the skipped files: "
                               f"{'; '.join(skipped[:3])})")
    x = torch.from_numpy(np.stack(images)).float() / 255.0
    return ImageSet(x, torch.from_numpy(y), classes, skipped)


def _open_npz(path: str | Path) -> np.lib.npyio.NpzFile:
    """numpy's .npz archive, opened without unpickling; a file that is not one gets a plain one-line error (numpy's
    own message would suggest loading it with pickle)."""
    if not zipfile.is_zipfile(path):
        raise EdgepptError(f"{path}: not a .npz file (numpy's zip archive of arrays, as np.savez writes)")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise EdgepptError(f"{path}: not a readable .npz file ({e})") from e


def _array(z: np.lib.npyio.NpzFile, key: str, path: str | Path) -> np.ndarray:
    try:
        return z[key]
    except ValueError as e:
        if "allow_pickle" in str(e):  # object arrays: reading them would unpickle
            raise EdgepptError(f"{path}: array '{key}' holds Python objects, which are never unpickled; save "
                               "numbers (or strings) only") from e
        raise EdgepptError(f"{path}: array '{key}' cannot be read ({e})") from e  # a damaged header
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as e:  # zlib's: a damaged compressed member
        raise EdgepptError(f"{path}: array '{key}' cannot be read ({e})") from e


# the names other tools save under (np.savez's own default included), tried in this order
IMAGE_KEYS = ("x", "images", "X", "imgs", "data", "arr_0")
LABEL_KEYS = ("y", "labels", "Y", "targets", "label", "arr_1")


def _key(z: np.lib.npyio.NpzFile, names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in z), None)


def load_npz(path: str | Path) -> ImageSet:
    """A .npz with images `x` (N,H,W) or (N,C,H,W) or (N,H,W,C) and labels `y` (integers, or class names as strings);
    optional `classes` (the names of integer labels). `images`/`labels` and the other names in IMAGE_KEYS and
    LABEL_KEYS are read too."""
    with _open_npz(path) as z:
        kx, ky = _key(z, IMAGE_KEYS), _key(z, LABEL_KEYS)
        if kx is None or ky is None:
            raise EdgepptError(f"{path}: a .npz dataset needs arrays 'x' (images) and 'y' (labels), found "
                               f"{sorted(z.files)}")
        x, y = _array(z, kx, path), _array(z, ky, path)
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in np.atleast_1d(_array(z, "classes", path))
                   ] if "classes" in z else None  # (names saved as bytes: b'cat' is the class "cat")
    if x.ndim == 0 or y.ndim == 0:
        raise EdgepptError(f"{path}: '{kx}' and '{ky}' must be arrays with one entry per image, not single values")
    if len(x) != len(y):
        raise EdgepptError(f"{path}: '{kx}' has {len(x)} images but '{ky}' has {len(y)} labels")
    xt = load_npz_arrays(x, Path(path))
    y = np.asarray(y).ravel() if np.ndim(y) == 2 and np.shape(y)[1] == 1 else np.asarray(y)
    if y.ndim != 1:
        raise EdgepptError(f"{path}: '{ky}' has shape {y.shape}; labels are one number (or name) per image")
    if y.dtype.kind in "US":  # class names: classes in sorted order, as class folders are
        names, y = np.unique(y.astype(str), return_inverse=True)
        if classes is not None:
            raise EdgepptError(f"{path}: '{ky}' holds class names, so 'classes' is not needed; drop one of them")
        classes = [str(n) for n in names]
    elif y.dtype.kind not in "iub" and not (y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0)):
        raise EdgepptError(f"{path}: '{ky}' holds {y.dtype} values; labels are integers or class names")
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        raise EdgepptError(f"{path}: '{ky}' holds negative labels ({int(y.min())})")
    if classes is None:  # the label values that occur, in order, are the classes: 3, 7 and 9 are three classes
        values, y = np.unique(y, return_inverse=True)
        classes = [str(int(v)) for v in values]
    elif len(y) and y.max() >= len(classes):
        raise EdgepptError(f"{path}: label {int(y.max())} in '{ky}' but only {len(classes)} names in 'classes'")
    check_class_names(classes, str(path))
    return ImageSet(xt, torch.from_numpy(y), classes)



# ---------------------------------------------------------------- specs and splits
def named_classes(ds: ImageSet, cls: str) -> ImageSet:
    """The classes a spec's `:a,b` names (all where it names none)."""
    names = [c.strip() for c in cls.split(",") if c.strip()]
    return select_classes(ds, names) if names else ds


def select_classes(ds: ImageSet, names: list[str]) -> ImageSet:
    """Keep the named classes, relabelled 0..k-1 in the order given."""
    unknown = [n for n in names if n not in ds.classes]
    if unknown:
        raise EdgepptError(f"unknown classes {unknown}; this dataset has {ds.classes}")
    old = torch.tensor([ds.classes.index(n) for n in names])
    keep = torch.isin(ds.y, old)
    remap = torch.full((len(ds.classes),), -1, dtype=torch.long)
    remap[old] = torch.arange(len(names))
    return ImageSet(ds.x[keep], remap[ds.y[keep]], list(names), list(ds.skipped))


def split_spec(spec: str) -> tuple[str, str]:
    """(dataset, class selection) of `name[:classes]`; a path that exists as given is all dataset (a folder may have
    a colon in its name)."""
    if Path(spec).exists():
        return spec, ""
    head, _, tail = spec.rpartition(":")
    if head and Path(head).exists():
        return head, tail
    name, _, cls = spec.partition(":")
    return name, cls


def load_dataset(spec: str, image_size: int | None = None, channels: int | None = None,
                 max_side: int | None = None) -> ImageSet:
    """`animals`, `animals:cat,dog`, `digits`, a folder of class folders, or a .npz file (`max_side`: see
    `load_folder`)."""
    name, cls = split_spec(spec)
    if name in BUILTIN and not Path(spec).exists():
        ds = load_builtin(name)
    else:
        p = Path(name if cls else spec)
        if not p.exists():
            raise EdgepptError(f"dataset {spec!r} not found: give a built-in name {sorted(BUILTIN)}, "
                               "a folder of class folders or a .npz file")
        ds = load_npz(p) if p.suffix == ".npz" else load_folder(p, image_size, channels, max_side)
    return conform(named_classes(ds, cls), image_size, channels, spec)


# How much of the images' contrast energy shrinking them to the bundle's side may lose before they keep their own
# side: the animals at 28 px shrunk to an 8 px bundle's side lose 0.27 (kept at 28: +7.8 points), the same animals
# upscaled to 56 px lose 0.017 at 28 (shrunk to 28: +2.0 points and a quarter of the compute; docs/transfer.md).
DETAIL_LOST_MAX = 0.05


def detail_lost(x: torch.Tensor, side: int, max_images: int = 500) -> float:
    """The share of the images' contrast energy (about their own mean) that shrinking them to `side` and back
    loses: near 0 where they hold no detail finer than `side` (upscaled images), large where they do."""
    keep = subsample(len(x), max_images)
    x = x if keep is None else x[keep]
    back = reshape_images(reshape_images(x, side, None), x.shape[-1], None)
    energy = (x - x.mean((1, 2, 3), keepdim=True)).pow(2).flatten(1).sum(1).clamp_min(1e-8)
    return ((x - back).pow(2).flatten(1).sum(1) / energy).mean().item()


def detail_side(x: torch.Tensor, upto: int) -> int | None:
    """The smallest even side up to `upto` that the images lose no detail at (`detail_lost` at most
    DETAIL_LOST_MAX), or None: how small the pictures were before they were enlarged."""
    if detail_lost(x, upto) > DETAIL_LOST_MAX:  # (one measure for pictures of real detail: photographs)
        return None
    return next(s for s in range(4, upto + 1, 2) if detail_lost(x, s) <= DETAIL_LOST_MAX)


AUTO_SIDE_MAX, AUTO_SIDE_TIMES = 512, 4
# Targets under SMALL_SIDE are raised toward it, never past the bundle's side nor past RAISE_TIMES their own side: the
# networks halve the side twice and want a few places left in their last stage (16 px targets train 0.9-1.9 points
# better raised to 28, and the 8 px digits 3.5 better at 16 than at 28 and 3.2 better than at 8, on validation). At
# it and above they keep their own side, since upscaling adds no detail and spreads the objects past the receptive
# field (28 px targets with a 56 px bundle: docs/transfer.md, "The image side"); but pictures enlarged from under
# SMALL_SIDE / RAISE_TIMES (digits drawn at 8 px, stored at 28) train at twice the side of their detail (20 px
# for those digits: 3.2 points better than 28 on validation).
SMALL_SIDE, RAISE_TIMES = 28, 2
# keys the pipeline's stages: runs made under an earlier rule re-run
SIDE_RULE = f"{SMALL_SIDE} px, at most {RAISE_TIMES}x, enlarged pictures by their detail"


def load_target(spec: str, image_size: int | None, channels: int | None, source_side: int | None) -> ImageSet:
    """The target set at the side every stage trains and exports at: `image_size` where given; otherwise the
    images' own side, raised toward SMALL_SIDE where it is under it (never past the source bundle's side, nor past
    RAISE_TIMES their own), and lowered to it only where that loses no detail the images hold (`detail_lost` at
    most DETAIL_LOST_MAX): a bundle drawn at 8x8 must not shrink 28x28 targets, 56 px images with no finer detail
    than 28 px train better, and four times faster, at 28, and so do 28 px images with a bundle drawn at 56 (G's
    samples are shrunk to them for PP). Images of mixed or non-square sizes are taken at the median of their longer
    sides, by the same rule. Without a bundle (`source_side` None) the same rule with no bundle's side to respect."""
    if image_size is not None:
        return load_dataset(spec, image_size, channels)
    # Photos hold detail at any side (sensor noise counts): their own 1000 or 4000 px would train for days on a
    # CPU. At most four times the bundle's side (and 512; without a bundle, 512) unless image_size asks for more;
    # larger images are read at that side straight away, so a folder of photos is never held at full size.
    big = source_side or AUTO_SIDE_MAX  # no bundle: no side to stay under
    cap = max(big, min(AUTO_SIDE_MAX, AUTO_SIDE_TIMES * big))
    try:
        ds = load_dataset(spec, None, channels, max_side=cap)
    except NeedsImageSize as e:  # one odd picture must not send the whole set to the bundle's side
        ds = load_dataset(spec, min(max(e.side, source_side or 0) or SMALL_SIDE, cap), channels)
    h, w = ds.shape[1:]
    side = min(max(h, w), cap)
    if side < min(big, SMALL_SIDE):
        side = min(big, SMALL_SIDE, RAISE_TIMES * side)
    elif source_side and side > source_side and h == w and detail_lost(ds.x, source_side) <= DETAIL_LOST_MAX:
        side = source_side
    if side >= SMALL_SIDE and h == w:  # small pictures stored large (8 px digits written at 28): as a small target
        detail = detail_side(ds.x, SMALL_SIDE // RAISE_TIMES)
        if detail is not None:
            side = min(side, RAISE_TIMES * detail)
    # resized by loading again at that side: the path a later stage rebuilds the set through (same fingerprint)
    return ds if (h, w) == (side, side) else load_dataset(spec, side, channels)


def conform(ds: ImageSet, image_size: int | None, channels: int | None, what: str = "dataset") -> ImageSet:
    """Resize/convert channels so a set matches the shape a model or bundle expects. Colour to gray by ITU-R 601
    luma, as Pillow converts an image file (and so the device runner, which reads files): an .npz target of colour
    images then trains on the gray levels the device will see."""
    validate(ds, what)
    return ImageSet(reshape_images(ds.x, image_size, channels), ds.y, ds.classes, ds.skipped)


def luma(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) colour -> (N, 1, H, W) gray by ITU-R 601 luma, Pillow's "L" conversion."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def reshape_images(x: torch.Tensor, image_size: int | None, channels: int | None) -> torch.Tensor:
    """Convert a (N, C, H, W) batch to the given channel count (gray <-> RGB; colour to gray by ITU-R 601 luma, as
    Pillow converts the target's files and the device's) and square size (antialiased where it shrinks)."""
    if channels is not None and x.shape[1] != channels:
        x = luma(x) if channels == 1 else x.expand(-1, 3, -1, -1).contiguous()
    if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear",
                                            align_corners=False, antialias=True).clamp(0, 1)
    return x


def validate(ds: ImageSet, what: str = "dataset") -> None:
    if len(ds) == 0:
        raise EdgepptError(f"{what}: no images")
    counts = ds.counts()
    if len(ds.classes) < 2 or sum(c > 0 for c in counts) < 2:
        raise EdgepptError(f"{what}: a classifier needs at least two classes with images; found {ds.classes}")
    empty = [n for n, c in zip(ds.classes, counts) if c == 0]
    if empty:
        raise EdgepptError(f"{what}: classes with no images: {empty}")
    if not torch.isfinite(ds.x).all():
        raise EdgepptError(f"{what}: images contain NaN or infinite values")


def train_test_split(ds: ImageSet, test_fraction: float = 0.2, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """A fixed, stratified held-out split: the same seed always gives the same test set."""
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for c in range(len(ds.classes)):
        idx = (ds.y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = max(1, int(round(len(idx) * test_fraction)))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    return ds.subset(torch.cat(train_idx)), ds.subset(torch.cat(test_idx))


def held_out_split(target: ImageSet, test_fraction: float, labels_per_class: int) -> tuple[ImageSet, ImageSet]:
    """The target's fixed test split (the same for every run seed), refused with the way out where the images a
    class has would give its labels, and only the held-out share leaves too few."""
    train, test = train_test_split(target, test_fraction, seed=0)
    short = [c for c in range(len(target.classes))
             if (train.y == c).sum() < labels_per_class <= (target.y == c).sum()]
    if short:
        has = int((target.y == short[0]).sum())
        raise EdgepptError(f"class {target.classes[short[0]]!r} has {has} images, and the "
                           f"{test_fraction:.0%} held out for testing leaves fewer than labels-per-class="
                           f"{labels_per_class}: give test images with --test, or lower --labels-per-class")
    return train, test


def pixel_keys(x: torch.Tensor) -> list[bytes]:
    """A digest of each image's 8-bit pixels: the same picture read from any file format gives the same key."""
    return [hashlib.blake2b((t * 255).round().to(torch.uint8).numpy().tobytes(), digest_size=16).digest() for t in x]


def labelled_twice(sets: list[ImageSet]) -> list[str]:
    """The pictures these sets (one target's splits) hold under two classes or more, each named by its classes
    ("'cat' and 'dog'"): a copy can be drawn as a label of one class and tested as the other, which no model gets
    right. Said, not dropped: which label is right is the user's to say."""
    groups: dict[bytes, set[int]] = {}
    for ds in sets:
        for key, y in zip(pixel_keys(ds.x), ds.y.tolist()):
            groups.setdefault(key, set()).add(y)
    classes = sets[0].classes
    return [" and ".join(repr(classes[c]) for c in sorted(ys)) for ys in groups.values() if len(ys) > 1]


def exact_copies(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Which of the images `x` have the same 8-bit pixels as one of `ref`: the same picture, whatever file held it
    (PNG, BMP, lossless WebP, ...). Only exact copies count. A re-encoded copy (JPEG) differs from its picture by as
    much as a device camera's distinct frames differ from one another, so a looser rule would take a dim fixed
    camera's own pictures for copies and drop them (benchmarks/copies.py, docs/transfer.md)."""
    seen = set(pixel_keys(ref))
    return torch.tensor([k in seen for k in pixel_keys(x)], dtype=torch.bool)


def without_test_images(target: ImageSet, test: ImageSet, spec: str) -> ImageSet:
    """The target less any image that is also one of the separate test set's: the test split only reports."""
    keep = (~exact_copies(target.x, test.x)).nonzero().flatten().tolist()
    if not keep:
        raise EdgepptError(f"--test {spec}: every target image is also a test image; give test images apart from "
                           "the target's, or leave --test out to hold out a share of the target")
    return target if len(keep) == len(target) else target.subset(keep)


class TargetSplit(NamedTuple):
    labelled: ImageSet  # the k labels a class
    test: ImageSet  # reports only
    rest: ImageSet  # the training pool less the labels (what `--unlabeled rest` and the search's validation use)
    train: ImageSet  # the training pool: labelled + rest


def split_target(target: ImageSet, test_spec: str | None, test_fraction: float, labels_per_class: int,
                 seed: int) -> TargetSplit:
    """The one split every stage makes of the target: the separate test set (its classes the target's; the pool
    less its copies) or a fixed held-out share, then k labels a class drawn by the run's seed."""
    if test_spec:
        test = load_dataset(test_spec, target.shape[1], target.shape[0])
        if test.classes != target.classes:
            raise EdgepptError(f"test classes {test.classes} differ from target classes {target.classes}")
        train = without_test_images(target, test, test_spec)
    else:
        train, test = held_out_split(target, test_fraction, labels_per_class)
    labelled, rest = few_shot(train, labels_per_class, seed)
    return TargetSplit(labelled, test, rest, train)


def stratified_folds(y: torch.Tensor, n: int, seed: int | None = None) -> torch.Tensor | None:
    """Each labelled image's fold (0..n-1), each class's images dealt round the folds (in a seeded order, or as
    they come), so every fold holds about as many of each class; None where a class has fewer than n images (a
    fold would train without it)."""
    counts = torch.bincount(y)
    if n < 2 or (counts < n).any():
        return None
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    fold = torch.empty(len(y), dtype=torch.long)
    for c in range(len(counts)):
        idx = (y == c).nonzero().ravel()
        fold[idx if g is None else idx[torch.randperm(len(idx), generator=g)]] = torch.arange(len(idx)) % n
    return fold


def few_shot(ds: ImageSet, labels_per_class: int, seed: int) -> tuple[ImageSet, ImageSet]:
    """k labelled images per class (seeded); the rest is returned as the unlabelled remainder."""
    g = torch.Generator().manual_seed(10_000 + seed)
    chosen, rest = [], []
    for c, name in enumerate(ds.classes):
        idx = (ds.y == c).nonzero().flatten()
        if len(idx) < labels_per_class:
            raise EdgepptError(f"class {name!r} has {len(idx)} training images, fewer than "
                               f"labels-per-class={labels_per_class}")
        idx = idx[torch.randperm(len(idx), generator=g)]
        chosen.append(idx[:labels_per_class])
        rest.append(idx[labels_per_class:])
    return ds.subset(torch.cat(chosen)), ds.subset(torch.cat(rest))


def subsample(n: int, limit: int) -> torch.Tensor | None:
    """Indices of a fixed random subset of `limit` out of n items (None: keep all). Seeded by n alone, so the
    same data gives the same subset in every run."""
    if limit <= 0 or n <= limit:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(n))[:limit].sort().values


def load_unlabeled(spec: str, image_size: int, channels: int, limit: int = 0) -> tuple[torch.Tensor, list[str], int]:
    """Unlabelled images: a folder (searched recursively, class sub-folders or not), a .npz with `x`
    (`y` ignored) or a built-in spec. Returns the images, shaped like the labelled set (at most `limit` of them, a
    fixed random subset; 0 = all), the skipped files and how many images the spec holds."""
    p = Path(spec)
    if p.is_dir():
        files, skipped = image_files(p)
        total = len(files)
        keep = subsample(total, limit)
        if keep is not None:  # choose before reading: a folder of 100,000 images is not read in full
            files = [files[i] for i in keep.tolist()]
        images = []
        for f in files:
            try:
                images.append(_resize(_read_image(f, channels), image_size))
            except READ_ERRORS as e:
                skipped.append(_skip_entry(f, e))
        if not images:
            raise EdgepptError(f"unlabelled images {spec}: no readable image ({len(skipped)} unreadable, "
                               f"{len(files)} image files)")
        return torch.from_numpy(np.stack(images)).float() / 255.0, skipped, total
    if p.suffix == ".npz" and p.is_file():
        with _open_npz(p) as z:
            kx = _key(z, IMAGE_KEYS)
            if kx is None:
                raise EdgepptError(f"{p}: an unlabelled .npz needs an array 'x' (images), found {sorted(z.files)}")
            x = _array(z, kx, p)
        if x.ndim == 0:
            raise EdgepptError(f"{p}: '{kx}' is a single value, not an array of images")
        total = len(x)
        keep = subsample(total, limit)
        x = x if keep is None else x[keep.numpy()]
        return reshape_images(load_npz_arrays(x, p), image_size, channels), [], total
    name, cls = split_spec(spec)
    if name in BUILTIN and not p.exists():  # images only: one class of a built-in set is as good as several
        pool = reshape_images(named_classes(load_builtin(name), cls).x, image_size, channels)
        keep = subsample(len(pool), limit)
        return (pool if keep is None else pool[keep]), [], len(pool)
    ds = load_dataset(spec, image_size, channels)
    keep = subsample(len(ds.x), limit)
    return (ds.x if keep is None else ds.x[keep]), ds.skipped, len(ds.x)


def load_npz_arrays(x: np.ndarray, where: Path) -> torch.Tensor:
    """Images from an array of (N,H,W), (N,C,H,W) or (N,H,W,C), as floats in [0, 1]."""
    if x.ndim >= 1 and len(x) == 0:
        raise EdgepptError(f"{where}: x holds no images (shape {x.shape})")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3) or not np.issubdtype(x.dtype, np.number):
        raise EdgepptError(f"{where}: x has shape {x.shape} ({x.dtype}); expected numbers of shape (N,H,W), "
                           "(N,C,H,W) or (N,H,W,C) with C in 1 or 3")
    if x.dtype.kind not in "biuf" or x.dtype.itemsize > 8:  # (complex, long double: no torch counterpart)
        raise EdgepptError(f"{where}: x holds {x.dtype} values; expected 8 or 16 bit integers or floats")
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))  # any byte order or width numpy has
    if not torch.isfinite(xt).all():
        raise EdgepptError(f"{where}: images contain NaN or infinite values")
    if x.dtype.kind == "f" and xt.min() >= -0.01 and xt.max() <= 1.5:  # [0, 1] floats off by resampling's or
        return xt.clamp(0, 1)  # augmentation's overshoot: still [0, 1], not 0-255 values to divide by 255
    if xt.min() < 0:
        raise EdgepptError(f"{where}: x holds negative values (down to {xt.min().item():.3g}); expected pixel values: "
                           "8 or 16 bits, or floats in [0, 1]")
    if x.dtype == np.uint16 and xt.max() <= 255:  # 8-bit values in a 16-bit array (a whole set under 1/256 of
        return xt / 255.0  # white is an array widened, not a set of near-black pictures)
    return xt / full_scale(x.dtype, xt.max().item())


def hash_pixels(h: Any, x: torch.Tensor, chunk: int = 1024) -> Any:
    """`h` updated with images in [0, 1] as 8-bit values, `chunk` images at a time: a large set is never copied
    whole (the digest is the same as of the whole at once)."""
    for i in range(0, len(x), chunk):
        h.update((x[i:i + chunk] * 255).round().to(torch.uint8).numpy().tobytes())
    return h


def fingerprint(ds: ImageSet) -> str:
    """sha256 of the images (as 8-bit values), labels and class names: the same data gives the same print."""
    h = hashlib.sha256()
    h.update(json.dumps(ds.classes).encode())
    hash_pixels(h, ds.x)
    h.update(ds.y.numpy().astype(np.int64).tobytes())
    return h.hexdigest()


class DataRecord(BaseModel):
    """Which images a run trained and was tested on, so a later stage rebuilds exactly them (and notices when
    the data on disk changed): the specs, the shape they were loaded at, fingerprints and split positions."""
    target: str
    test: str | None = None
    image_size: int
    channels: int
    target_fingerprint: str
    test_fingerprint: str | None = None
    labelled: list[int]  # positions of the labelled images in the target set
    test_split: list[int] | None = None  # positions of the test images in the target set (None: `test` is its own set)
    test_copies: list[int] = []  # positions of target images that the separate test set holds too (never trained on)

    @classmethod
    def of(cls, target: str, test: str | None, full: ImageSet, test_set: ImageSet, labelled: ImageSet,
           train: ImageSet | None = None) -> DataRecord:
        kept = set(train.positions()) if train is not None and test else set(range(len(full)))
        return cls(target=target, test=test, image_size=full.shape[1], channels=full.shape[0],
                   target_fingerprint=fingerprint(full), test_fingerprint=fingerprint(test_set) if test else None,
                   labelled=labelled.positions(), test_split=None if test else test_set.positions(),
                   test_copies=[i for i in range(len(full)) if i not in kept])

    def _load(self, spec: str, printed: str | None) -> ImageSet:
        ds = load_dataset(spec, self.image_size, self.channels)
        if printed is not None and fingerprint(ds) != printed:
            raise EdgepptError(f"{spec}: these images differ from the ones the run used (fingerprint mismatch); "
                               "restore them or re-run transfer")
        return ds

    def target_set(self) -> ImageSet:
        return self._load(self.target, self.target_fingerprint)

    def splits(self) -> tuple[ImageSet, ImageSet]:
        """The labelled images and the test split, as the run had them."""
        full = self.target_set()
        test = self._load(self.test, self.test_fingerprint) if self.test else full.subset(self.test_split or [])
        return full.subset(self.labelled), test

    def pool(self) -> ImageSet:
        """The target set less its test split (all of it when the test set is separate)."""
        full = self.target_set()
        held = set(self.test_split or []) | set(self.test_copies)
        return full.subset([i for i in range(len(full)) if i not in held])
