"""Uploaded zip archives, unpacked defensively: the archive is untrusted input from a browser.

Refused with a message naming the member: absolute paths and `..` (path traversal), symbolic links, files of a
kind not allowed here (non-images in an image archive), archives or contents over the size limits (zip bombs),
and images PIL cannot read. Nothing is written where it was not meant to be: members are unpacked into a fresh
temporary folder next to the destination, which replaces the destination only when every member passed.
"""

from __future__ import annotations

import io
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from edgeppt.data import IMAGE_SUFFIXES
from edgeppt.errors import EdgepptError
from edgeppt.runs import replace_folder
from edgeppt.signing import MANIFEST_FILE

MAX_ARCHIVE_BYTES = 100 * 2**20       # the upload itself
MAX_CONTENT_BYTES = 400 * 2**20       # everything unpacked
MAX_MEMBERS = 50_000
BUNDLE_SUFFIXES = {".onnx", ".pt2", ".json", ".md", ".png", ".txt"}
IGNORED = ("__MACOSX/", ".DS_Store", "Thumbs.db", "desktop.ini")  # what archivers and file managers add


class UploadError(EdgepptError):
    """An archive refused; the message says which member and why."""


def _check_member(info: zipfile.ZipInfo, allowed: set[str], what: str) -> None:
    name = info.filename
    p = PurePosixPath(name)
    if name.startswith(("/", "\\")) or "\\" in name or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise UploadError(f"refused: {name!r} points outside the archive (path traversal)")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UploadError(f"refused: {name!r} is a symbolic link; archives must hold plain files")
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: archivers that record no file type
        raise UploadError(f"refused: {name!r} is not a plain file")
    if not info.is_dir() and p.suffix.lower() not in allowed:
        raise UploadError(f"refused: {name!r} is not {what} (allowed: {', '.join(sorted(allowed))})")
    if info.flag_bits & 0x1:
        raise UploadError(f"refused: {name!r} is encrypted; upload an archive without a password")


def safe_extract(data: bytes, dest: str | Path, allowed: set[str], what: str,
                 check: Callable[[Path], Path] | None = None,
                 max_archive: int = MAX_ARCHIVE_BYTES, max_content: int = MAX_CONTENT_BYTES) -> Path:
    """Unpack a zip (bytes) into `dest`, replacing it. `check(folder)` inspects the unpacked files before they
    replace `dest` and returns the folder that matters inside it; its place under `dest` is returned.
    Raises UploadError, leaving `dest` untouched."""
    if len(data) > max_archive:
        raise UploadError(f"refused: the archive is {len(data) / 2**20:.1f} MiB; "
                          f"the limit is {max_archive / 2**20:.0f} MiB")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise UploadError("refused: not a zip archive") from None
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with zf:
            for info in zf.infolist():  # PowerShell 5's Compress-Archive writes cats\1.png: a folder, not a name
                info.filename = info.filename.replace("\\", "/")
            members = [i for i in zf.infolist() if not any(s in i.filename for s in IGNORED)
                       and not PurePosixPath(i.filename).name.startswith("._")]  # macOS's resource forks
            if len(members) > MAX_MEMBERS:
                raise UploadError(f"refused: {len(members)} members; the limit is {MAX_MEMBERS}")
            for info in members:
                _check_member(info, allowed, what)
            if sum(i.file_size for i in members) > max_content:
                raise UploadError(f"refused: the archive unpacks to more than {max_content / 2**20:.0f} MiB")
            written = 0
            for info in members:
                if info.is_dir():
                    continue
                target = tmp / PurePosixPath(info.filename)
                target.parent.mkdir(parents=True, exist_ok=True)
                # Count real bytes rather than trusting the header's sizes (a crafted header can lie).
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > max_content:
                            raise UploadError("refused: the archive unpacks to more than "
                                              f"{max_content / 2**20:.0f} MiB")
                        out.write(chunk)
        inner = check(tmp).relative_to(tmp) if check else Path()
        replace_folder(tmp, dest)
        return dest / inner
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise UploadError(f"refused: corrupt zip archive ({e})") from None
    except NotImplementedError as e:  # a compression method Python's zipfile lacks (e.g. Deflate64)
        raise UploadError(f"refused: {e}; re-create the archive with plain deflate") from None
    except (OSError, RuntimeError) as e:  # members that clash (a file and a folder of one name), names too long
        raise UploadError(f"refused: the archive cannot be unpacked here ({e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _content_root(folder: Path) -> Path:
    """Archives often wrap everything in one top folder (zip -r data.zip data/): descend through it."""
    while True:
        entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
        if len(entries) == 1 and entries[0].is_dir() and any(c.is_dir() for c in entries[0].iterdir()):
            folder = entries[0]
        else:
            return folder


def extract_image_folders(data: bytes, dest: str | Path, **limits) -> Path:
    """A zip of class folders (<class>/<image>) -> the folder holding the class folders, every image checked."""
    return safe_extract(data, dest, IMAGE_SUFFIXES, "an image", _check_class_folders, **limits)


def extract_images(data: bytes, dest: str | Path, **limits) -> Path:
    """A zip of unlabelled images, in any folder layout -> the folder holding them, every image checked."""
    return safe_extract(data, dest, IMAGE_SUFFIXES, "an image", _check_images, **limits)


def _check_images(dest: Path) -> Path:
    files = [p for p in dest.rglob("*") if p.is_file()]
    if not files:
        raise UploadError("refused: the archive holds no images")
    for f in files:
        _check_image(f, dest)
    return _content_root(dest)


def _check_image(f: Path, dest: Path) -> None:
    from edgeppt.data import READ_ERRORS, open_image

    try:
        with open_image(f) as im:  # the header only: a decompression bomb is refused unread
            im.verify()
    except READ_ERRORS as e:
        raise UploadError(f"refused: {f.relative_to(dest)} is not a readable image "
                          f"({type(e).__name__}: {e})") from None


def _check_class_folders(dest: Path) -> Path:
    root = _content_root(dest)
    loose = [p.name for p in root.iterdir() if p.is_file()]
    if loose:
        raise UploadError(f"refused: files {loose[:3]} lie outside a class folder; put each image in <class>/<image>")
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise UploadError(f"refused: found {len(classes)} class folder(s); "
                          "a classifier needs at least 2 (<class>/<image>)")
    for d in classes:
        files = [p for p in d.rglob("*") if p.is_file()]
        if not files:
            raise UploadError(f"refused: class folder {d.name!r} holds no images")
        for f in files:
            _check_image(f, dest)
    return root


def extract_bundle(data: bytes, dest: str | Path, **limits) -> Path:
    """A zip of a source bundle folder -> the folder holding manifest.json, verified (every file's sha256, the
    signature, a .pt2 bundle's trust, G's and C's contract) before it replaces the bundle uploaded earlier: a bad
    upload is refused and the good one stays."""
    return safe_extract(data, dest, BUNDLE_SUFFIXES, "a bundle file", _verified_bundle, **limits)


def _verified_bundle(dest: Path) -> Path:
    from edgeppt.bundle import load_bundle

    folder = _find_manifest(dest)
    try:
        load_bundle(folder)
    except EdgepptError as e:
        raise UploadError(f"refused: {e}") from None
    return folder


def _find_manifest(dest: Path) -> Path:
    found = sorted(dest.rglob(MANIFEST_FILE), key=lambda p: len(p.parts))
    if not found:
        raise UploadError("refused: no manifest.json in the archive; zip the bundle folder written by "
                          "`edgeppt source train`")
    return found[0].parent
