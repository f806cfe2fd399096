"""Run directories: atomic artifact writes, JSONL metrics and checkpoints."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import EdgepptError

CHECKPOINT_FILE = "checkpoint.pt"  # the resumable state of an unfinished run, in its run (or work) directory

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, data: bytes, private: bool = False) -> Path:
    """Write via a temporary file in the same folder and rename, so a crash never leaves half a file. `private`:
    readable by the owner alone (0600) from the first byte, as a private key must be."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    if not private:  # mkstemp makes owner-only files; give the permissions a plain open() would
        os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_writable(out: str | Path) -> None:
    """Fail at once, in one line, where `out` cannot be written (a read-only place), before minutes of work."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as e:
        raise EdgepptError(f"cannot write {out}: {e.strerror or e}") from None


def replace_folder(new: Path, dest: Path) -> None:
    """Move the folder `new` into `dest`'s place. An existing `dest` is set aside, not deleted, until `new` is in
    place, so a crash between the two steps loses neither."""
    if not dest.exists():
        new.rename(dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
    dest.rename(old / dest.name)
    try:
        new.rename(dest)
    except BaseException:  # (Ctrl-C between the two renames included) the earlier folder goes back
        (old / dest.name).rename(dest)
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_folder(out: str | Path) -> Iterator[Path]:
    """A temporary folder beside `out` that replaces `out` whole when the block finishes without an error, so a
    failed write never leaves half a folder and a folder never mixes with an earlier one's files."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        tmp.chmod(0o777 & ~_UMASK)  # mkdtemp's folder is owner-only; `out` gets what a plain mkdir would give
    except OSError as e:
        raise EdgepptError(f"cannot write {out}: {e.strerror or e}") from None
    try:
        yield tmp
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    import torch  # here, not at the top: the CLI reaches this module, and `edgeppt --help` must not load torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 1024), 1)


def load_checkpoint(path: str | Path) -> dict:
    import torch

    # weights_only: a checkpoint holds tensors, numbers and strings; never arbitrary objects.
    return torch.load(path, map_location="cpu", weights_only=True)


def read_cache(path: Path, keys: Iterable[str]) -> dict | None:
    """A cache entry (PP weights, a pseudo-sample pool, a trained phase: each keyed by what made it), or None where
    it is missing or cannot be read. The cache only saves time, so an entry that is truncated, not a torch file or
    lacks `keys` is reported on one line and computed again (the new result replaces it), never a stop."""
    if not path.is_file():
        return None
    try:
        entry = load_checkpoint(path)
        missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
        if not missing:
            return entry
        why = f"no {', '.join(missing)}"
    except Exception as e:  # noqa: BLE001 - whatever is wrong with the file, the answer is to compute it again
        why = f"not a complete torch file: {type(e).__name__}"  # torch's own message runs to paragraphs
    print(f"warning: cache entry {path} is unreadable ({why}); computing it again", file=sys.stderr)
    return None


def _flat(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as {"pssl.lp_reach_gap": 8, ...}."""
    out: dict[str, Any] = {}
    for k, v in settings.items():
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_conflicts(saved: Mapping[str, Any], now: Mapping[str, Any], free: Iterable[str] = ()) -> dict[str, tuple]:
    """The rule for what may change on resume, for every stage: the settings named in `free` (the config's
    RESUME_FREE, with everything under them) may; any other setting that the run as started names and that differs
    as resumed is a conflict, returned as {dotted name: (saved, now)}. Settings the saved run does not name are
    `added_settings`, not conflicts. `saved` is the run's file as written, not re-validated (which would fill
    them in)."""
    free = set(free)
    a, b = _flat(saved), _flat(now)

    def value_now(k: str) -> Any:  # a setting that was empty (None) when saved may be a section now
        under = {n[len(k) + 1:]: v for n, v in b.items() if n.startswith(f"{k}.")}
        return b[k] if k in b else (under or None)

    return {k: (a[k], value_now(k)) for k in sorted(a) if k.split(".")[0] not in free and a[k] != value_now(k)}


def added_settings(saved: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, Any]:
    """Settings that a run's saved file does not name, as resumed now: a later edgeppt added them, and the run goes
    on with their values now (its defaults, or what is given), which the caller says."""
    a = _flat(saved)
    return {k: v for k, v in _flat(now).items() if k not in a and not any(k.startswith(f"{p}.") for p in a)}


def added_settings_warning(out: Path | str, added: Mapping[str, Any]) -> str:
    named = ", ".join(f"{k}={v!r}" for k, v in added.items())
    return (f"warning: {out} was started by an earlier edgeppt, without the settings {named}; the resumed run uses "
            "these values (give them with --set to choose others)")


def json_digest(obj: Any, length: int = 16) -> str:
    """A short, stable key for a JSON-able record (a cache entry's or a stage's inputs): the sha256 of its sorted
    JSON, anything JSON cannot hold (a Path) as its str."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_run_json(path: str | Path) -> Any:
    """A JSON file a run wrote (its config, to resume from): damaged or not JSON is a one-line error."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
        raise EdgepptError(f"{path}: cannot read it to resume ({' '.join(str(e).split())})") from None


def _parsed(line: str) -> dict | None:
    try:
        rec = json.loads(line)
    except ValueError:  # a line cut short by a kill
        return None
    return rec if isinstance(rec, dict) else None


class MetricsLog:
    """Append-only JSONL; each line is flushed so a killed run keeps every logged step."""

    def __init__(self, path: str | Path, truncate_after_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_after_step is not None and self.path.exists():
            # On resume, drop lines logged after the checkpoint we resume from.
            keep = [ln for ln in self.path.read_text().splitlines()
                    if (rec := _parsed(ln)) is not None and rec.get("global_step", -1) <= truncate_after_step]
            atomic_write_text(self.path, "".join(k + "\n" for k in keep))

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSONL log; a line cut short (a killed run, or one being written as it is read) is left out."""
    p = Path(path)
    if not p.exists():
        return []
    return [rec for ln in p.read_text().splitlines() if ln.strip() and (rec := _parsed(ln)) is not None]


R = TypeVar("R", bound=BaseModel)


def read_record(path: str | Path, model: type[R], what: str, remedy: str) -> R | None:
    """A stage's published JSON record as its typed model; None when it is not written yet. A file that is not
    one is a one-line error naming the file, the first problem and what to do."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return model.model_validate(json.loads(path.read_text()))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise EdgepptError(f"{path}: not {what} ({where + ': ' if where else ''}{first['msg']}); {remedy}") from e
    except ValueError as e:
        raise EdgepptError(f"{path}: not {what} ({e}); {remedy}") from e
