"""Validated configs for every stage. Unknown keys are refused, so a typo names itself."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import EdgepptError

METHODS = ("scratch", "kd", "pp", "pssl", "pp+pssl")
SSL_ALGORITHMS = ("fixmatch", "uda", "pseudolabel", "meanteacher")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceTrainConfig(Strict):
    """`edgeppt source train`: a class-conditional GAN and a classifier from labelled source images.

    The defaults reproduce the shipped example bundle (bundles/animals-src) in about 10 minutes on 2 CPU cores.
    """
    data: str = Field(description="dataset spec: built-in name[:classes], class-folder path or .npz")
    out: Path
    image_size: int | None = Field(None, ge=8, le=512)
    seed: int = 0
    latent_dim: int = Field(64, ge=2)
    gen_channels: int = Field(32, ge=8)
    disc_channels: int = Field(32, ge=8)
    gan_steps: int = Field(3000, ge=1)
    batch_size: int = Field(64, ge=2)
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(2e-4, gt=0)
    d_steps: int = Field(1, ge=1, description="discriminator updates per generator update")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA of the generator weights; the EMA generator is exported")
    classifier_arch: str = "resnet_xs"
    classifier_steps: int = Field(1000, ge=1)
    classifier_lr: float = Field(0.05, gt=0, description="SGD learning rate (cosine decay)")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="held-out share of the data for the classifier accuracy")
    hflip: bool = Field(True, description="mirror augmentation; turn off where left/right matters (digits, text)")
    checkpoint_every: int = Field(250, ge=1)


class PSSLConfig(Strict):
    """Pseudo semi-supervised learning: how pseudo samples are made and how much they count."""
    algorithm: Literal["fixmatch", "uda", "pseudolabel", "meanteacher"] = "uda"
    temperature: float = Field(1.0, gt=0, description="T in p = softmax(C(x_t)/T)")
    z_search_steps: int = Field(0, ge=0, description="gradient steps choosing z so G(z,p) lies near x_t in C's feature space; 0 = random z")
    z_search_lr: float = Field(0.1, gt=0)
    relevance: Literal["none", "weight", "filter"] = "none"
    relevance_keep: float = Field(0.5, gt=0, le=1, description="fraction of pseudo samples kept by 'filter'")
    pool_size: int = Field(2048, ge=16, description="pseudo samples drawn before training (refreshed never; cached)")
    unlabeled_weight: float = Field(0.5, ge=0, description="cap of the ramped unlabelled loss weight")
    ramp_fraction: float = Field(0.3, ge=0, le=1, description="fraction of SSL steps over which the weight ramps up")
    threshold: float = Field(0.8, ge=0, le=1, description="confidence mask for fixmatch/uda/pseudolabel")
    sharpen: float = Field(0.4, gt=0, description="UDA target sharpening temperature")
    unlabeled_ratio: int = Field(2, ge=1, description="unlabelled batch = ratio x labelled batch")
    ema: float = Field(0.99, ge=0, lt=1, description="MeanTeacher teacher decay")


class TransferConfig(Strict):
    """`edgeppt transfer`: train a target architecture with PP and/or P-SSL from a source bundle."""
    source: Path | None = None
    target: str
    test: str | None = None
    test_fraction: float = Field(0.2, gt=0, lt=1)
    labels_per_class: int = Field(4, ge=1)
    arch: str | dict = "resnet_s"
    method: Literal["scratch", "kd", "pp", "pssl", "pp+pssl"] = "pp+pssl"
    seed: int = 0
    image_size: int | None = Field(None, ge=8, le=512)
    batch_size: int = Field(32, ge=1, description="labelled batch size")
    lr: float = Field(0.05, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    pretrain_steps: int = Field(1500, ge=0, description="PP: steps classifying generated source-class samples")
    pretrain_batch: int = Field(128, ge=2)
    pretrain_pool: int = Field(0, ge=0, description="cache this many generated samples for PP (0 = draw fresh each step)")
    finetune_steps: int = Field(400, ge=1, description="supervised / distillation / SSL steps on the target")
    kd_weight: float = Field(1.0, ge=0)
    kd_temperature: float = Field(4.0, gt=0)
    pssl: PSSLConfig = PSSLConfig()
    eval_every: int = Field(100, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1)

    def needs_source(self) -> bool:
        return self.method != "scratch"


def load_yaml(path: str | Path, model: type[Strict]) -> Strict:
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise EdgepptError(f"cannot read config {path}: {e}") from e
    return validate(model, raw, str(path))


def validate(model: type[Strict], raw: dict, where: str = "config") -> Strict:
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise EdgepptError(f"{where}: {explain(e, model)}") from e


def explain(e: ValidationError, model: type[BaseModel]) -> str:
    """One line per problem, naming the field and, for a typo, the fields that exist."""
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            sub = model
            for p in err["loc"][:-1]:
                ann = sub.model_fields[str(p)].annotation if str(p) in sub.model_fields else None
                sub = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else sub
            lines.append(f"unknown field {loc!r}; allowed: {sorted(sub.model_fields)}")
        else:
            lines.append(f"{loc}: {err['msg']}")
    return "; ".join(lines)
