"""`edgeppt source pack`: a bundle from the owner's own generator and classifier.

Each model comes as an ONNX file, a torch.export `.pt2` file (its loading unpickles: only with trust_code),
or a factory `package.module:function` that returns a torch module (the owner's code, run on purpose).
Torch models are converted to ONNX, so the bundle itself runs no code. The owner's conventions (latent
distribution, label input, output range, the classifier's normalisation) are declared in the manifest and
checked on a dummy batch; the owner gets samples.png, a README and a summary.
"""

from __future__ import annotations

import importlib
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch
from torch import nn

from edgeppt.bundle import (
    CLASSIFIER_FILE,
    GENERATOR_FILE,
    ClassifierSpec,
    GeneratorSpec,
    Latent,
    Manifest,
    SourceBundle,
    read_manifest,
    trust_keys,
)
from edgeppt.bundle_runtime import load_program
from edgeppt.bundle_write import export_onnx, write_bundle
from edgeppt.config import PackConfig
from edgeppt.errors import EdgepptError
from edgeppt.onnxspec import external_files
from edgeppt.runs import atomic_write_text
from edgeppt.signing import verify_folder

from .inspect import render_grid


def parse_classes(spec: str) -> list[str]:
    """A text file with one class per line (or one comma-separated line), or a comma-separated list."""
    path = Path(spec)
    names = path.read_text().splitlines() if path.is_file() else spec.split(",")
    if path.is_file() and len(names) == 1:  # a file holding the list as written on the command line
        names = names[0].split(",")
    names = [n.strip() for n in names if n.strip()]
    if len(set(names)) != len(names):
        raise EdgepptError(f"--classes {spec}: duplicate class names")
    return names


def _factory(spec: str) -> nn.Module:
    mod_name, _, fn_name = spec.partition(":")
    sys.path.insert(0, str(Path.cwd()))  # the owner's package beside them, as `python -m` would find it
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise EdgepptError(f"{spec}: cannot import the factory ({e})") from e
    finally:
        sys.path.pop(0)
    module = fn()
    if not isinstance(module, nn.Module):
        raise EdgepptError(f"{spec}: returned {type(module).__name__}, not a torch module")
    return module.eval()


def resolve(spec: str, trust_code: bool) -> Path | nn.Module:
    """An ONNX path as is; a .pt2 or a factory as a torch module."""
    if spec.endswith(".onnx"):
        if not Path(spec).is_file():
            raise EdgepptError(f"{spec}: no such ONNX file")
        return Path(spec)
    if spec.endswith(".pt2"):
        if not Path(spec).is_file():
            raise EdgepptError(f"{spec}: no such .pt2 file")
        if not trust_code:
            raise EdgepptError(f"{spec}: loading a .pt2 program unpickles and can run code; pass --trust-code "
                               "if it is your own file (the bundle will hold ONNX, which runs no code)")
        return load_program(Path(spec))  # an exported program is already in eval mode
    if ":" in spec:
        return _factory(spec)
    raise EdgepptError(f"{spec}: expected a .onnx file, a .pt2 file or package.module:function")


def _io(path: Path, image_first: bool = False) -> tuple[list[Any], list[str]]:
    """A graph's inputs and output names; `image_first`: a 4-D output first (G's image, where a generator also
    returns its latents or features)."""
    try:
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own types on a bad file
        raise EdgepptError(f"{path}: not a loadable ONNX model ({str(e).splitlines()[0][:200]})") from e
    outputs = s.get_outputs()
    if image_first:
        outputs = sorted(outputs, key=lambda o: len(o.shape or ()) != 4)  # stable: the first 4-D one leads
    return list(s.get_inputs()), [o.name for o in outputs]


def copy_graph(src: Path, dest: Path) -> None:
    """Copy an owner's ONNX graph into the bundle. Weights saved beside it (ONNX external data, which
    `torch.onnx.export` writes for large models) are folded into the one file, or, past protobuf's 2 GB limit,
    written to one file next to it that the manifest then lists."""
    import onnx

    if not external_files(src, src.parent):
        shutil.copyfile(src, dest)
        return
    model = onnx.load(str(src))  # with its external data, from the folder checked above
    if model.ByteSize() < 2**31 - 2**26:
        onnx.save(model, str(dest))
    else:
        onnx.save(model, str(dest), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=dest.name + ".data")


def _width(shape: list[Any]) -> Any:
    """Values per image of an input (N, width) or (N, width, 1, 1), as DCGAN-style generators take z; else None."""
    return shape[1] if len(shape) >= 2 and all(d == 1 for d in shape[2:]) else None


def _check_width(g: Path, name: str, shape: list[Any], want: int, option: str) -> None:
    """An input whose width is fixed in the graph must match what the owner declared."""
    width = _width(shape)
    if isinstance(width, int) and width != want:
        raise EdgepptError(f"{g}: input {name!r} takes {width} values per image, but {option} gives {want} (if "
                           f"{name!r} is not the input {option} is about, name G's inputs: --z-input, --label-input)")


INDEX_TYPES = ("tensor(int64)", "tensor(int32)")  # class ids: PyTorch exports int64, Keras/tf2onnx int32
LABEL_NAMES = re.compile(r"label|class|cond|onehot|one_hot|^y$|^c$|^cls", re.IGNORECASE)


def _z_of(inputs: list[Any], k: int) -> str:
    """Which of G's two inputs is z: owners order them either way. The label is the integer input, else the one named
    as a label, else the one K wide where z is not; failing all three, z comes first."""
    a, b = inputs
    for is_label in (lambda i: i.type in INDEX_TYPES, lambda i: bool(LABEL_NAMES.search(i.name)),
                     lambda i: _width(i.shape) == k):
        if is_label(a) != is_label(b):
            return b.name if is_label(a) else a.name
    return a.name


def _generator_spec(cfg: PackConfig, g: Path | nn.Module, tmp: Path, k: int) -> tuple[GeneratorSpec, int]:
    """Copy or convert G to tmp/generator.onnx; return its declared spec and the latent size."""
    if isinstance(g, Path):
        inputs, outputs = _io(g, image_first=True)
        if len(inputs) != 2:
            raise EdgepptError(f"{g}: the generator must take two inputs (z and a class label), it takes "
                               f"{[i.name for i in inputs]}")
        by_name = {i.name: i for i in inputs}
        z_name = cfg.z_input or (next(i.name for i in inputs if i.name != cfg.label_input) if cfg.label_input
                                 else _z_of(inputs, k))
        label_name = cfg.label_input or next(i.name for i in inputs if i.name != z_name)
        for n in (z_name, label_name):
            if n not in by_name:
                raise EdgepptError(f"{g}: no input named {n!r} (inputs: {sorted(by_name)})")
        size = _width(by_name[z_name].shape)
        latent = cfg.latent_dim or (size if isinstance(size, int) else None)
        if latent is None:
            raise EdgepptError(f"{g}: the size of z is not fixed in the graph; give --latent-dim")
        label = cfg.label if cfg.label != "auto" else \
            ("index" if by_name[label_name].type in INDEX_TYPES else "probabilities")
        _check_width(g, z_name, by_name[z_name].shape, latent, "--latent-dim")
        if label == "probabilities":
            _check_width(g, label_name, by_name[label_name].shape, k, "--classes")
        copy_graph(g, tmp / GENERATOR_FILE)
        return GeneratorSpec(file=GENERATOR_FILE, z_input=z_name, label_input=label_name, label=label,
                             output=outputs[0], output_range=cfg.output_range), latent
    if cfg.latent_dim is None:
        raise EdgepptError("give --latent-dim: the size of z cannot be read from a torch module")
    label = "probabilities" if cfg.label == "auto" else cfg.label
    y = torch.tensor([0, 1 % k]) if label == "index" else torch.softmax(torch.randn(2, k), 1)
    export_onnx(g, (torch.randn(2, cfg.latent_dim), y), ["z", "y" if label == "index" else "p"], ["image"],
                tmp / GENERATOR_FILE)
    return GeneratorSpec(file=GENERATOR_FILE, label_input="y" if label == "index" else "p", label=label,
                         output_range=cfg.output_range), cfg.latent_dim


_CHANNELS = (1, 3, 4)


def _channels_last(shape: Sequence[Any]) -> bool | None:
    """(N, H, W, C) -> True, (N, C, H, W) -> False, read off a 4-D shape (ints or names); None: can't tell."""
    if len(shape) != 4:
        return None
    first, last = (d if isinstance(d, int) else None for d in (shape[1], shape[3]))
    if last in _CHANNELS and first not in _CHANNELS:
        return True
    if first in _CHANNELS and last not in _CHANNELS:
        return False
    return None


def _classifier_spec(cfg: PackConfig, c: Path | nn.Module, tmp: Path, image: torch.Tensor,
                     g_channels_last: bool) -> ClassifierSpec:
    """Copy or convert C to tmp/classifier.onnx; its features are the named output, or the logits. `image` is
    one of G's, (N, C, H, W). C's layout: declared, else read off its input's shape, else G's."""
    norm: dict[str, Any] = {"mean": cfg.mean, "std": cfg.std, "input_size": cfg.input_size}
    if isinstance(c, Path):
        inputs, outputs = _io(c)
        for name in (cfg.logits_output, cfg.features_output):
            if name is not None and name not in outputs:
                raise EdgepptError(f"{c}: no output named {name!r} (outputs: {outputs})")
        logits = cfg.logits_output or outputs[0]  # (when not given, _pick_logits chooses below)
        feats = cfg.features_output or next((o for o in outputs if o != logits), None)
        last = cfg.layout == "nhwc" if cfg.layout != "auto" else _channels_last(inputs[0].shape)
        last = g_channels_last if last is None else last
        shape = inputs[0].shape
        chans = (shape[3] if last else shape[1]) if len(shape) == 4 else None
        if isinstance(chans, int) and chans in (1, 3) and chans != image.shape[1]:  # a colour C behind a gray G
            norm["channels"] = chans
        if norm["input_size"] is None:  # a side fixed in C's graph (224, say) is the side G's images go to
            side = shape[1:3] if last else shape[2:4]
            if len(shape) == 4 and all(isinstance(d, int) for d in side) and side[0] == side[1] \
                    and side[0] != image.shape[-1]:
                norm["input_size"] = side[0]
        copy_graph(c, tmp / CLASSIFIER_FILE)
        return ClassifierSpec(file=CLASSIFIER_FILE, input=inputs[0].name, logits=logits, features=feats,
                              num_features=1, channels_last=last, **norm)  # num_features is read off a real run
    if cfg.layout == "nhwc":
        raise EdgepptError("--layout nhwc is for ONNX graphs; a torch module's C takes (N, C, H, W) images")
    side = cfg.input_size or image.shape[-1]
    x, out = _probe_module(c, image.shape[1], side)
    if x.shape[1] != image.shape[1]:
        norm["channels"] = x.shape[1]
    two = isinstance(out, (tuple, list)) and len(out) == 2
    export_onnx(c, (x,), ["image"], ["logits", "features"] if two else ["logits"], tmp / CLASSIFIER_FILE)
    return ClassifierSpec(file=CLASSIFIER_FILE, features="features" if two else None, num_features=1, **norm)


def _probe_module(c: nn.Module, channels: int, side: int) -> tuple[torch.Tensor, Any]:
    """C's output on two random images of G's channels; behind a gray G, of 3 channels where C takes only those
    (a C fine-tuned from a colour network on gray data, as an ONNX C's graph would say)."""
    errors: list[Exception] = []
    for chans in (channels, 3) if channels == 1 else (channels,):
        x = torch.rand(2, chans, side, side)
        try:
            with torch.no_grad():
                return x, c(x)
        except Exception as e:  # the owner's module raises what it raises on a wrong input
            errors.append(e)
    raise EdgepptError(f"the classifier does not accept the generator's {channels}-channel {side}x{side} images: "
                       f"{' '.join(str(errors[0]).split())[:300]}") from None


def _stage(cfg: PackConfig, g: Path | nn.Module, c: Path | nn.Module, info: dict[str, Any]
           ) -> Callable[[Path], Manifest]:
    def stage(tmp: Path) -> Manifest:
        k = len(cfg.classes)
        gspec, latent = _generator_spec(cfg, g, tmp, k)
        probe = Manifest(classes=cfg.classes, image_shape=(1, 1, 1), latent=Latent(size=latent), generator=gspec,
                         classifier=ClassifierSpec(file="-", num_features=1))
        from edgeppt.bundle_runtime import OnnxPart
        part = OnnxPart(tmp / GENERATOR_FILE, torch.device("cpu"))
        z = SourceBundle(tmp, probe, part, part).sample_latents(2, torch.Generator().manual_seed(0))
        label = torch.tensor([0, 1 % k]) if gspec.label == "index" else torch.eye(k)[:2]
        try:
            image = part({gspec.z_input: z, gspec.label_input: label}, torch.device("cpu"))[gspec.output]
        except Exception as e:  # onnxruntime raises assorted types on an input mismatch
            raise EdgepptError(f"the generator does not take z ({latent} values) and a {gspec.label} label "
                               f"({k} classes): {' '.join(str(e).split())[:300]}") from None
        last = cfg.layout == "nhwc" if cfg.layout != "auto" else bool(_channels_last(image.shape))
        if last and image.dim() == 4:
            gspec.channels_last, image = True, image.permute(0, 3, 1, 2)
        if image.dim() != 4 or image.shape[2] != image.shape[3]:
            raise EdgepptError(f"the generator returned shape {tuple(image.shape)}: expected square images "
                               "(N, C, H, W), or (N, H, W, C) with --layout nhwc")
        if image.shape[1] not in (1, 3):
            raise EdgepptError(f"the generator returned {image.shape[1]}-channel images: a source bundle's images "
                               "have 1 (gray) or 3 (colour) channels")
        cspec = _classifier_spec(cfg, c, tmp, image, gspec.channels_last)
        c_chans = cspec.channels or image.shape[1]
        if len(cspec.mean) not in (1, c_chans):
            raise EdgepptError(f"--mean has {len(cspec.mean)} values for C's {c_chans}-channel input")
        if cfg.channel_order == "bgr" and 3 not in (image.shape[1], c_chans):
            raise EdgepptError("--channel-order bgr: neither G's images nor C's input have colour channels")
        cpart = OnnxPart(tmp / CLASSIFIER_FILE, torch.device("cpu"))
        m = Manifest(classes=cfg.classes, image_shape=tuple(image.shape[1:]), latent=Latent(
            size=latent, distribution=cfg.latent, truncation=cfg.truncation), generator=gspec, classifier=cspec,
            channel_order=cfg.channel_order, info=info)
        b = SourceBundle(tmp, m, part, cpart)
        if cfg.logits_output is None and len(cpart.outputs) > 1:
            _pick_logits(b, k, cpart.outputs, keep_features=cfg.features_output is not None)
        try:
            scores, feats = _classify(b, torch.arange(min(4 * k, 1024)) % k, torch.Generator().manual_seed(0))
        except Exception as e:  # as above
            raise EdgepptError(f"the classifier does not accept the generator's {tuple(image.shape[1:])} images: "
                               f"{' '.join(str(e).split())[:300]}") from None
        m.classifier.num_features = feats.shape[1]
        m.classifier.softmax_output = cfg.classifier_output == "probabilities" or (
            cfg.classifier_output == "auto" and bool((scores >= 0).all())
            and bool(torch.allclose(scores.sum(1), torch.ones(len(scores)), atol=1e-3)))
        return m
    return stage


def _classify(b: SourceBundle, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """C on G's samples of the classes y, 256 at a time: a 1000-class bundle's checks never hold all at once."""
    parts = [b.classify(b.sample_classes(y[i:i + 256], g)) for i in range(0, len(y), 256)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _pick_logits(b: SourceBundle, k: int, outputs: list[str], keep_features: bool) -> None:
    """C's logits: of its outputs K wide, the one whose argmax names the class G was asked for most often. Owners'
    graphs return (logits, features) or (features, logits), and features can be K wide too; the first output wins
    a tie."""
    spec = b.manifest.classifier
    y = torch.arange(max(2 * k, min(8 * k, 1024))) % k
    score: dict[str, float] = {}
    for name in outputs:
        spec.logits = name
        try:
            logits, _ = _classify(b, y, torch.Generator().manual_seed(0))
        except Exception:  # (an output of another shape) not the logits
            continue
        if logits.dim() == 2 and logits.shape[1] == k:
            score[name] = (logits.argmax(1) == y).float().mean().item()
    if not score:
        raise EdgepptError(f"none of the classifier's outputs {outputs} has one value per class "
                           f"({k}): name its logits with --logits-output")
    spec.logits = max(score, key=lambda n: score[n])
    if not keep_features:
        spec.features = next((n for n in outputs if n != spec.logits), None)


def check_soft_labels(bundle: SourceBundle) -> dict[str, Any]:
    """The contract beyond shapes: the batch is dynamic, a soft p moves the image, the output range holds,
    and C recognises G's one-hot samples (the summary the owner sees)."""
    k, g = bundle.num_classes, torch.Generator().manual_seed(0)
    for n in (1, 5):
        if len(bundle.generate(torch.eye(k)[torch.arange(n) % k], generator=g)) != n:
            raise EdgepptError(f"the generator does not keep a batch of {n}: its batch dimension must be dynamic")
    z = bundle.sample_latents(8, g)
    a = bundle.generate(torch.eye(k)[[0] * 8], z)
    mix = torch.zeros(8, k)
    mix[:, 0], mix[:, 1] = 0.5, 0.5
    moved = (bundle.generate(mix, z) - a).abs().mean().item() if bundle.manifest.generator.label != "index" else None
    if moved is not None and moved < 1e-4:
        raise EdgepptError("the generator ignores soft labels (a 50/50 mix of two classes draws the same images "
                           "as one class): declare --label index if it takes class indices")
    lo, hi = bundle.manifest.generator.output_range
    ids = torch.arange(max(8, min(2 * k, 64))) % k  # every class (to 32), so one bright class does not decide
    raw = bundle.generator({bundle.manifest.generator.z_input: bundle.sample_latents(len(ids), g),
                            bundle.manifest.generator.label_input: ids if bundle.manifest.generator.label == "index"
                            else torch.eye(k)[ids]}, bundle.device)[bundle.manifest.generator.output]
    span = hi - lo
    if raw.min().item() < lo - 0.05 * span or raw.max().item() > hi + 0.05 * span:
        raise EdgepptError(f"the generator's outputs span [{raw.min().item():.2f}, {raw.max().item():.2f}], "
                           f"outside the declared --output-range {lo},{hi}")
    if (lo, hi) == (-1.0, 1.0) and raw.min().item() >= -0.05:  # a sigmoid's [0, 1] read as tanh's: washed out
        raise EdgepptError(f"the generator's outputs span [{raw.min().item():.2f}, {raw.max().item():.2f}]: they "
                           "look like [0, 1] images (a sigmoid), not the declared -1,1; pass --output-range 0,1")
    y = torch.arange(k).repeat_interleave(16 if k <= 64 else 2)  # 1000 classes: 2,000 images, not 16,000
    logits, feats = _classify(bundle, y, g)
    if not torch.isfinite(logits).all():
        raise EdgepptError("the classifier returned non-finite logits on the generator's images")
    return {"generated_accuracy": round((logits.argmax(1) == y).float().mean().item(), 4),
            "soft_label_change": None if moved is None else round(moved, 4),
            "output_span": [round(raw.min().item(), 3), round(raw.max().item(), 3)],
            "num_features": feats.shape[1]}


def pack(cfg: PackConfig, info: dict[str, Any] | None = None, readme: Callable[[SourceBundle], str] | None = None,
         g: Path | nn.Module | None = None, c: Path | nn.Module | None = None) -> tuple[Path, dict[str, Any]]:
    """Write the bundle; returns its path and the contract summary."""
    g = g if g is not None else resolve(cfg.generator, cfg.trust_code)
    c = c if c is not None else resolve(cfg.classifier, cfg.trust_code)
    summary: dict[str, Any] = {}

    def extras(tmp: Path, bundle: SourceBundle) -> None:
        summary.update(check_soft_labels(bundle))
        render_grid(bundle, tmp / "samples.png")
        atomic_write_text(tmp / "README.md", (readme or _readme)(bundle))

    info = {"packed_from": {"generator": cfg.generator, "classifier": cfg.classifier}, **(info or {})}
    out = write_bundle(cfg.out, _stage(cfg, g, c, info), extras, cfg.sign)
    return out, summary


def _readme(bundle: SourceBundle) -> str:
    m = bundle.manifest
    return f"""# Source bundle: {', '.join(m.classes)}

A class-conditional generator and a source classifier as ONNX graphs (see `manifest.json`: the declared
conventions, and the sha256 of every file; `signature.json`, when present, signs the manifest).

- images: {list(m.image_shape)}; latent: {m.latent.size} values, {m.latent.distribution}
- generator label input: {m.generator.label}; output range {list(m.generator.output_range)}
- classifier: normalisation mean {m.classifier.mean}, std {m.classifier.std}; features from \
{m.classifier.features or 'the logits'} ({m.classifier.num_features} values)

`samples.png`: one row per class (one-hot p), the last row interpolates p between two classes.
"""


def from_bundle(old: Path, cfg: PackConfig) -> tuple[Path, dict[str, Any]]:
    """Convert a version-1 (.pt2) bundle: its programs load only when signed by a trusted key or trust_code."""
    m = read_manifest(old)
    if m.runtime != "pt2":
        raise EdgepptError(f"{old}: already an ONNX bundle; nothing to convert")
    signer = verify_folder(old, trust_keys())
    if not cfg.trust_code and not (signer and signer.trusted):
        raise EdgepptError(f"{old}: a .pt2 bundle's loading can run code; pass --trust-code if you trust "
                           "whoever made it")
    from edgeppt.bundle import verify_files
    verify_files(old, m)
    g, c = (load_program(old / f) for f in (m.generator.file, m.classifier.file))
    cfg = cfg.model_copy(update={"classes": m.classes, "latent_dim": m.latent.size, "output_range": (0.0, 1.0)})
    info = {**m.info, "converted_from": "a version-1 (.pt2) bundle"}
    notes = (old / "README.md").read_text() if (old / "README.md").is_file() else None

    def readme(bundle: SourceBundle) -> str:  # the owner's notes stay; the format line says what it is now
        if notes is None:
            return _readme(bundle)
        return notes.replace("compiled with `torch.export`", "as ONNX graphs (converted from torch.export)") + \
            "\nConverted from a version-1 (.pt2) bundle with `edgeppt source pack --from-bundle`.\n"
    return pack(cfg, info, readme, g=g, c=c)
