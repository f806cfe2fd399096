"""`edgeppt source train | inspect`: make a source bundle, look at what it draws."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperOption

from edgeppt.cli_support import TRUST_CODE_HELP, TRUSTED_KEY_HELP, config_option, console, fail, guarded, merged
from edgeppt.config import PackConfig, SourceTrainConfig, validate
from edgeppt.errors import EdgepptError

app = typer.Typer()  # this stage's commands; cli/ assembles the stages

source_app = typer.Typer(help="Source bundles: train or pack one, sign it, inspect what it draws.",
                         no_args_is_help=True)
app.add_typer(source_app, name="source")


@source_app.command("train")
def source_train(
    data: Optional[str] = typer.Option(None, help="Labelled source images: built-in name[:classes], class folders "
                                       "or .npz."),
    out: Optional[Path] = typer.Option(None, help="Bundle directory to write."),
    config: Optional[Path] = typer.Option(None, help="YAML with SourceTrainConfig fields."),
    gan_steps: Optional[int] = config_option(SourceTrainConfig, "gan_steps", help="Generator updates."),
    seed: Optional[int] = config_option(SourceTrainConfig, "seed", help="Seed of the split, the networks' "
                                        "initialisation and the batches."),
    sign: Optional[Path] = config_option(SourceTrainConfig, "sign", help="Private key (from source keygen) to sign "
                                         "the bundle with, as source pack and export take it."),
    set_: list[str] = typer.Option([], "--set", help="Any config field, e.g. --set lr_g=1e-4."),
) -> None:
    """Train a class-conditional GAN and a classifier, and write them as a compiled source bundle."""
    from edgeppt.source.train import train_source

    overrides = {"data": data, "out": out, "gan_steps": gan_steps, "seed": seed, "sign": sign}
    cfg = guarded(merged, SourceTrainConfig, config, overrides, set_)
    path = guarded(train_source, cfg, interrupted="its checkpoints are kept; run the same command again to continue",
                   command=command_line(cfg),
                   log=lambda line: console.print(f"[yellow]{escape(line)}[/]", soft_wrap=True,
                                                                      highlight=False))
    console.print(f"[green]bundle written:[/] {path}")


def command_line(cfg: SourceTrainConfig) -> str:
    """The `edgeppt source train` line that makes cfg, built from this command's own options so it always runs:
    a field with an option of its own uses it, any other non-default field goes through --set."""
    train = typer.main.get_group(source_app).commands["train"]
    # Options that take a value; a field behind an on/off flag goes through --set like one without an option.
    flags = {p.name: p.opts[0] for p in train.params if isinstance(p, TyperOption) and not p.is_flag}
    parts = ["edgeppt", "source", "train"]
    for name, field in SourceTrainConfig.model_fields.items():
        value = getattr(cfg, name)
        if value == field.default and name not in ("data", "out"):  # data and out have no default
            continue
        text = json.dumps(value) if isinstance(value, bool) or value is None else str(value)
        parts += [flags[name], text] if name in flags else ["--set", f"{name}={text}"]
    return shlex.join(parts)


@source_app.command("inspect")
def source_inspect(
    bundle: Path = typer.Argument(..., help="Source bundle directory."),
    out: Path = typer.Option(Path("grid.png"), help="PNG to write: a row of samples per source class."),
    per_class: int = typer.Option(8, min=1, max=64, help="Samples per class row."),
    seed: int = typer.Option(0, help="Seed of the latents drawn."),
    trusted_key: list[Path] = typer.Option([], help=TRUSTED_KEY_HELP),
    trust_code: bool = typer.Option(False, help=TRUST_CODE_HELP),
) -> None:
    """Verify a bundle (signature, every file's sha256, the G and C contract) and draw what G makes per class."""
    from edgeppt.bundle import load_bundle
    from edgeppt.source.inspect import render_grid

    b = guarded(load_bundle, bundle, trusted_keys=trusted_key, require_signature=bool(trusted_key),
                trust_code=trust_code)
    guarded(render_grid, b, out, per_class=per_class, seed=seed)
    m = b.manifest
    table = Table(title=f"source bundle {escape(str(bundle))}", show_header=False)
    table.add_row("provenance", b.provenance)
    table.add_row("classes", ", ".join(m.classes))
    table.add_row("images", "x".join(map(str, m.image_shape)))
    table.add_row("latent", f"{m.latent.size} values, {m.latent.distribution}"
                  + (f", truncated at {m.latent.truncation}" if m.latent.truncation else ""))
    table.add_row("generator", f"{m.generator.file} ({m.runtime}): label input {m.generator.label}, output range "
                  f"{m.generator.output_range[0]:g}..{m.generator.output_range[1]:g}")
    table.add_row("classifier", f"{m.classifier.file}: mean {m.classifier.mean}, std {m.classifier.std}, "
                  f"{m.classifier.num_features} features from {m.classifier.features or 'the logits'}")
    for f, h in m.files.items():
        table.add_row(f, f"sha256 {h[:16]}… ok")
    Console().print(table)
    console.print(f"[green]samples:[/] {escape(str(out))}", soft_wrap=True)


def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise EdgepptError(f"--output-range {text!r}: expected two numbers such as 0,1 or -1,1") from None
    return lo, hi


def _floats(option: str, text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise EdgepptError(f"{option} {text!r}: expected comma-separated numbers") from None


@source_app.command("pack")
def source_pack(
    generator: Optional[str] = typer.Option(None, help="G.onnx, G.pt2, or package.module:function returning a "
                                            "torch module G(z, label)."),
    classifier: Optional[str] = typer.Option(None, help="C.onnx, C.pt2, or package.module:function returning a "
                                             "torch module C(x) -> logits or (logits, features)."),
    classes: Optional[str] = typer.Option(None, help="A text file with one source class per line, or a "
                                          "comma-separated list, in the order of G's and C's class indices."),
    out: Path = typer.Option(..., help="Bundle directory to write."),
    from_bundle: Optional[Path] = typer.Option(None, help="Convert a version-1 (.pt2) bundle instead "
                                               "(needs --trust-code or a trusted signature)."),
    latent_dim: Optional[int] = typer.Option(None, min=1, help="Size of z (read from an ONNX graph when fixed)."),
    latent: Optional[str] = config_option(PackConfig, "latent", help="z's distribution: normal or uniform (on "
                                          "-1..1)."),
    truncation: Optional[float] = typer.Option(None, help="Redraw |z| above this (BigGAN's truncation trick)."),
    label: Optional[str] = config_option(PackConfig, "label", help="G's label input: probabilities (N, K), index "
                                         "(N,), or auto (an int64 input means index)."),
    output_range: Optional[str] = typer.Option(None, "--output-range", "--input-range", show_default="0,1",
                                               help="The range of G's output pixels, e.g. -1,1 (--input-range: "
                                               "an older name)."),
    mean: Optional[str] = typer.Option(None, show_default="0", help="C's input normalisation mean per channel on "
                                       "0..1 images, e.g. 0.485,0.456,0.406."),
    std: Optional[str] = typer.Option(None, show_default="1", help="C's input normalisation std per channel."),
    input_size: Optional[int] = typer.Option(None, min=1, help="Side C expects, if G's images must be resized."),
    z_input: Optional[str] = typer.Option(None, help="Name of G's z input (ONNX); default its first input."),
    label_input: Optional[str] = typer.Option(None, help="Name of G's label input (ONNX); default the other."),
    logits_output: Optional[str] = typer.Option(None, help="C's logits output (ONNX); default the output with one "
                                                "value per class that recognises G's samples best."),
    features_output: Optional[str] = typer.Option(None, help="C's output used as features (ONNX); default its "
                                                  "other output, or the logits."),
    classifier_output: Optional[str] = config_option(
        PackConfig, "classifier_output", help="What C's logits output holds: logits, probabilities (a graph that "
        "ends in a softmax), or auto (probabilities if its rows on G's images are non-negative and sum to 1)."),
    layout: Optional[str] = config_option(PackConfig, "layout", help="Image layout of G's output and C's input: "
                                          "nchw, nhwc (Keras, TensorFlow), or auto (read off the graphs' shapes)."),
    channel_order: Optional[str] = config_option(PackConfig, "channel_order", help="Colour order of G's images and "
                                                 "C's input: rgb, or bgr for a pipeline that read images with "
                                                 "OpenCV (cv2.imread)."),
    sign: Optional[Path] = typer.Option(None, help="Private key (from source keygen) to sign the bundle with."),
    trust_code: bool = typer.Option(False, help="Allow loading .pt2 files (their loading can run code)."),
) -> None:
    """Make a bundle from your own generator and classifier: converted to ONNX, checked, previewed, signed."""
    from edgeppt.source.pack import from_bundle as convert
    from edgeppt.source.pack import pack, parse_classes

    given = {"out": out, "latent_dim": latent_dim, "latent": latent, "truncation": truncation, "label": label,
             "output_range": output_range and guarded(_range, output_range),
             "mean": mean and guarded(_floats, "--mean", mean), "std": std and guarded(_floats, "--std", std),
             "input_size": input_size, "z_input": z_input, "label_input": label_input,
             "logits_output": logits_output, "features_output": features_output, "layout": layout,
             "classifier_output": classifier_output, "channel_order": channel_order,
             "sign": sign, "trust_code": trust_code}
    fields = {k: v for k, v in given.items() if v is not None}  # PackConfig's own defaults for the rest
    if from_bundle is not None:
        cfg = guarded(validate, PackConfig, {**fields, "generator": str(from_bundle), "classifier":
                                             str(from_bundle), "classes": ["-", "--"]}, "source pack")
        path, summary = guarded(convert, from_bundle, cfg)
    else:
        missing = [n for n, v in (("--generator", generator), ("--classifier", classifier), ("--classes", classes))
                   if v is None]
        if missing:
            fail(f"source pack needs {', '.join(missing)} (or --from-bundle)")
        cfg = guarded(validate, PackConfig, {**fields, "generator": generator, "classifier": classifier,
                                             "classes": guarded(parse_classes, classes)}, "source pack")
        path, summary = guarded(pack, cfg)
    table = Table(title="contract checked on a dummy batch", show_header=False)
    table.add_row("one-hot samples C recognises", f"{summary['generated_accuracy']:.1%}")
    if summary["soft_label_change"] is not None:
        table.add_row("mean pixel change, one class -> 50/50 mix", f"{summary['soft_label_change']:.3f}")
    table.add_row("G's raw output span", f"{summary['output_span'][0]:g} .. {summary['output_span'][1]:g}")
    table.add_row("features", str(summary["num_features"]))
    Console().print(table)
    k = len(cfg.classes)
    if k > 1 and summary["generated_accuracy"] < 1.5 / k:  # written, but likely wired wrong: say where to look
        console.print(f"[yellow]warning:[/] C recognises G's one-hot samples about as often as chance ({1 / k:.0%}): "
                      "check which input of G is the label (--z-input, --label-input), which output of C holds "
                      "the logits (--logits-output), and G's --output-range", soft_wrap=True)
    console.print(f"[green]bundle written:[/] {escape(str(path))}  (samples.png, README.md"
                  f"{', signature.json' if sign else ''})", soft_wrap=True)


@source_app.command("keygen")
def source_keygen(out: Path = typer.Option(..., help="Key path stem: writes <out>.key (private) and <out>.pub.")
                  ) -> None:
    """Make an Ed25519 key pair for signing bundles (once, by the source-data owner)."""
    from edgeppt.signing import keygen, load_public_key

    priv, pub = guarded(keygen, out)
    console.print(f"[green]private key:[/] {escape(str(priv))} (keep it secret)\n[green]public key:[/] "
                  f"{escape(str(pub))} (key {load_public_key(pub).id}; give it to your users)", soft_wrap=True)


@source_app.command("sign")
def source_sign(
    bundle: Path = typer.Argument(..., help="Source bundle directory."),
    key: Path = typer.Option(..., help="Private key from source keygen."),
) -> None:
    """Sign an existing bundle (after checking every file against its manifest)."""
    from edgeppt.bundle import read_manifest, verify_files
    from edgeppt.signing import sign_folder

    m = guarded(read_manifest, bundle)
    if m.runtime != "onnx":
        fail(f"{bundle}: a .pt2 bundle; convert it first with `edgeppt source pack --from-bundle`")
    guarded(verify_files, bundle, m)
    signer = guarded(sign_folder, bundle, key)
    console.print(f"[green]signed:[/] {escape(str(bundle))} with key {signer.key_id}", soft_wrap=True)
