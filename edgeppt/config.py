"""Validated configs for every stage. Unknown keys are refused, so a typo names itself."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import EdgepptError

# What `edgeppt transfer --method` takes (transfer/methods.py builds each; "auto" chooses among them per task).
METHODS = ("auto", "scratch", "kd", "pp", "pp+kd", "pssl", "pp+pssl", "ssl", "pp+ssl", "ft", "l2sp", "tred")
# The SSL algorithms of the P-SSL phase (transfer/ssl.py registers one class per name).
SSL_ALGORITHMS = ("anchor", "fixmatch", "uda", "pseudolabel", "meanteacher", "labelprop")


# How every stage splits the target and the side images may be given at: search, transfer and the pipeline alike.
TestFraction = Annotated[float, Field(gt=0, lt=1, description="share of the target held out as the test split "
                                      "(the same fixed split in every stage; it reports, never chooses)")]
LabelsPerClass = Annotated[int, Field(ge=1, description="labelled target images per class")]
ImageSide = Annotated[int, Field(ge=8, le=512)]
TEST_FRACTION, LABELS_PER_CLASS = 0.2, 4

# The labels-only target phase's recipe, shared by transfer and the search's proxy (which mirrors it in short).
TARGET_BATCH = 32
LABEL_SMOOTHING = 0.1
COSINE_HEAD = 10.0


class Strict(BaseModel):
    # (no NaN or infinity: `--set lr=Infinity` parses as a number and would pass a bound like gt=0)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class SourceTrainConfig(Strict):
    """`edgeppt source train`: a class-conditional GAN and a classifier from labelled source images.

    The defaults reproduce the shipped example bundle (bundles/animals-src) in about 10 minutes on 2 CPU cores.
    """
    # May change between an interrupted run and its resume (edgeppt.runs.resume_conflicts): more GAN steps simply
    # continue, and `out` may differ when the output and its work dir were moved together.
    RESUME_FREE: ClassVar[frozenset[str]] = frozenset({"gan_steps", "checkpoint_every", "out", "sign"})
    data: str = Field(description="dataset spec: built-in name[:classes], class-folder path or .npz")
    out: Path
    image_size: ImageSide | None = None
    seed: int = 0
    latent_dim: int = Field(64, ge=2)
    gen_channels: int = Field(32, ge=8)
    disc_channels: int = Field(32, ge=8)
    gan_steps: int = Field(3000, ge=1)
    batch_size: int = Field(64, ge=2)
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(2e-4, gt=0)
    d_steps: int = Field(1, ge=1, description="discriminator updates per generator update")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA of the generator weights; the EMA generator is "
                             "exported")
    classifier_arch: str = "resnet_xs"
    classifier_steps: int = Field(1000, ge=1)
    classifier_lr: float = Field(0.05, gt=0, description="SGD learning rate (cosine decay)")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="held-out share of the data for the classifier accuracy")
    hflip: bool = Field(True, description="mirror augmentation; turn off where left/right matters (digits, text)")
    checkpoint_every: int = Field(250, ge=1)
    sign: Path | None = Field(None, description="private key (edgeppt source keygen) to sign the bundle with")


class PackConfig(Strict):
    """`edgeppt source pack`: what the owner declares about their own G and C (the command's flags)."""
    generator: str = Field(description="G.onnx, G.pt2, or package.module:function returning a torch module")
    classifier: str = Field(description="C.onnx, C.pt2, or package.module:function returning a torch module")
    classes: list[str] = Field(min_length=2)
    out: Path
    latent_dim: int | None = Field(None, gt=0, description="size of z; read from the ONNX input when static")
    latent: Literal["normal", "uniform"] = "normal"
    truncation: float | None = Field(None, gt=0)
    label: Literal["probabilities", "index", "auto"] = "auto"  # auto: an int64 label input means index
    output_range: tuple[float, float] = (0.0, 1.0)
    mean: list[float] = [0.0]
    std: list[float] = [1.0]
    input_size: int | None = Field(None, gt=0)
    z_input: str | None = None  # ONNX input names; default: the label is an int64 input, or one named as a label
    label_input: str | None = None  # (label, y, class, cond, ...), or the one K wide; z is the other
    logits_output: str | None = None  # default: C's output K wide that recognises G's one-hot samples best
    features_output: str | None = None  # default: C's other output, or the logits when it has one
    layout: Literal["auto", "nchw", "nhwc"] = "auto"  # auto: read off G's output and C's declared input shapes
    channel_order: Literal["rgb", "bgr"] = "rgb"  # bgr: G draws and C reads OpenCV's order
    classifier_output: Literal["auto", "logits", "probabilities"] = "auto"  # auto: probabilities if every output
    # row on G's images is non-negative and sums to 1 (a graph that ends in a softmax)
    trust_code: bool = False
    sign: Path | None = None

    @model_validator(mode="after")
    def _ranges(self) -> PackConfig:
        lo, hi = self.output_range
        if not hi > lo:
            raise ValueError(f"output range {lo},{hi} must rise")
        if len(self.std) != len(self.mean) or any(s <= 0 for s in self.std):
            raise ValueError("--mean and --std need the same number of values, and std > 0")
        return self


class SourceTrust(Strict):
    """Which source bundles a stage accepts (edgeppt.bundle.load_bundle); none of it changes a result."""
    TRUST_FIELDS: ClassVar[frozenset[str]] = frozenset({"trusted_keys", "trust_code"})
    trusted_keys: list[Path] = Field([], description="public keys, one of which must have signed the bundle")
    trust_code: bool = Field(False, description="load a .pt2 bundle (its loading can run code) without a "
                                                "trusted signature")


class AugmentConfig(Strict):
    """Training-time augmentation of target (and, for PP, generated source) images. Turn flips off where
    they change the class (digits, text); the source bundle's own setting applies to PP unless set here."""
    hflip: bool = Field(True, description="mirror images left/right")
    max_shift: float = Field(0.25, ge=0, le=1, description="shift by up to this share of half the image")
    max_rotation: float = Field(0.0, ge=0, le=180, description="rotate the weak view by up to this many degrees")
    strong_rotation: float = Field(20.0, ge=0, le=180, description="rotation of the strong view (SSL)")
    labelled_view: Literal["weak", "strong"] = Field("weak", description="the view labelled images are trained "
                                                     "on in supervised phases")
    jitter: float = Field(0.0, ge=0, le=1, description="scale each channel of an image (or, without jitter_tint, "
                          "all of them alike) by a random gain within "
                          "1 ± this (a camera's exposure and white balance); target phases only: PP sees G's samples "
                          "as their owner trained on them")
    jitter_tint: bool = Field(True, description="jitter each channel by its own gain (exposure and a tint); false: "
                              "one gain for all channels (exposure only), where colour tells the classes apart")

    def key(self) -> dict:
        """The settings as a cache key; jitter and its tint only where set, so that earlier keys stay valid."""
        return self.model_dump(mode="json", exclude=({"jitter_tint"} if self.jitter_tint else set()) |
                               (set() if self.jitter else {"jitter"}))


class PSSLConfig(Strict):
    """The SSL phase: pseudo samples G(z, p) (and real unlabelled target images) beside the labelled targets.

    `algorithm` names what the pseudo samples are trained on: `anchor` labels each with the label of the target
    image that conditioned it (label-conditioned augmentation); `fixmatch`, `uda`, `pseudolabel` and `meanteacher`
    are the semi-supervised consistency terms of the paper's P-SSL over unlabelled pseudo samples. Real unlabelled
    target images (`--unlabeled`) get the consistency term of `algorithm`, except for `labelprop` and `anchor`:
    they train them toward labels propagated from the labelled images over a nearest-neighbour graph of the
    model's features (Iscen et al., 2019); `labelprop` treats pseudo samples as FixMatch does.
    """
    algorithm: Literal[SSL_ALGORITHMS] = "anchor"  # type: ignore[valid-type]
    consistency: float | None = Field(None, ge=0, description="weight of the consistency term on pseudo samples "
                                      "(default: 0 for anchor, 1 for the SSL algorithms)")
    anchor_weight: float | None = Field(None, ge=0, description="weight of the cross-entropy toward each pseudo "
                                        "sample's anchor label (default: 1 for anchor, 0 for the SSL algorithms)")
    warm_start: bool = Field(True, description="first fine-tune on the labels alone (what scratch/pp do), then run "
        "the SSL phase from there, its consistency targets coming from a frozen copy of that model")
    steps: int = Field(100, ge=1, description="SSL steps after the warm start (without a warm start, finetune_steps)")
    lr_scale: float = Field(0.2, gt=0, description="SSL learning rate after the warm start, as a fraction of lr")
    real_steps: int = Field(2000, ge=1, description="SSL steps after the warm start when real unlabelled images "
                            "join (chosen on validation accuracy: docs/transfer-selection.md)")
    real_lr_scale: float = Field(0.5, gt=0, description="lr_scale when real unlabelled images join")
    weight_decay: float = Field(5e-4, ge=0, description="weight decay of the SSL phase (the labels-only warm start "
                                "before it uses the target phases' weight_decay)")
    real_warm_steps: int | None = Field(None, ge=1, description="labels-only warm-start steps when real unlabelled "
                                        "images join (default: finetune_steps)")
    smooth_labels: bool = Field(True, description="the labelled images' cross-entropy in the SSL phase uses "
                                "label_smoothing too, as the warm start before it does (chosen on validation accuracy: "
                                "docs/transfer.md)")
    average: float = Field(0.0, ge=0, le=1, description="the SSL phase ends on an exponential moving average of its "
                           "weights spanning this share of it, as SSL methods evaluate their EMA model (0 = off)")
    unlabeled_weight: float = Field(0.5, ge=0, description="cap of the ramped pseudo-sample loss weight")
    real_weight: float = Field(1.0, ge=0, description="cap of the ramped loss weight of real unlabelled target images")
    ramp_fraction: float = Field(0.3, ge=0, le=1, description="fraction of SSL steps over which the weights ramp up")
    temperature: float = Field(1.0, gt=0, description="T in p = softmax(C(x_t)/T)")
    z_candidates: int = Field(1, ge=1, le=64, description="z drawn per pseudo sample, keeping the one whose image "
                              "lies nearest x_t in C's feature space (1: plain sampling); gradient-free, so it "
                              "works with any bundle runtime")
    relevance: Literal["none", "weight", "filter"] = Field("none", description="per-sample weights (or a filter) from "
        "the cosine similarity to the anchor in C's feature space")
    relevance_keep: float = Field(0.5, gt=0, le=1, description="fraction of pseudo samples kept by 'filter'")
    pool_size: int = Field(1024, ge=16, description="pseudo samples drawn before training (cached)")
    unlabeled_ratio: int = Field(1, ge=1, description="pseudo-sample (and real unlabelled) batch = ratio x labelled "
                                                      "batch")
    threshold: float = Field(0.8, ge=0, le=1, description="confidence mask for fixmatch/uda/pseudolabel")
    sharpen: float = Field(0.4, gt=0, description="UDA target sharpening temperature")
    ema: float = Field(0.99, ge=0, lt=1, description="MeanTeacher teacher decay")
    mix: float = Field(0.0, ge=0, le=1, description="blend each pseudo sample toward its target image by a share "
                                                    "drawn from [0, mix]")
    align: bool = Field(False, description="distribution alignment: rescale the unlabelled guesses so classes are "
                                           "used equally on average")
    lp_neighbours: int = Field(50, ge=1, description="labelprop: neighbours per image in the feature graph")
    lp_alpha: float = Field(0.99, gt=0, lt=1, description="labelprop: how far labels spread along the graph")
    lp_refresh: int = Field(100, ge=1, description="labelprop: steps between re-propagations with the current "
                            "features")
    lp_graph: Literal["model", "model+pp", "auto"] = Field("auto", description="labelprop: the features the graph "
        "is built on: the model's own, or beside them (each L2-normalised, side by side) those of the PP weights "
        "before any fine-tuning, which no label has shaped (after PP only), or 'auto': beside them where PP's "
        "features alone spread the labels as the model's do (lp_graph_agree; docs/transfer.md)")
    lp_graph_agree: float = Field(0.8, ge=0, le=1, description="labelprop, lp_graph auto: PP's features join the "
                                  "graph where the labels propagated over them alone and over the model's features "
                                  "alone agree on at least this share of the unlabelled images (at the first "
                                  "propagation): a sign that PP's features group the target as its labels do")
    lp_label_views: int = Field(0, ge=0, le=64, description="labelprop: weak views of each labelled image that "
                                "join it as labelled nodes of the graph (0: the labelled images alone)")
    lp_consistency: float = Field(0.0, ge=0, description="labelprop: weight of FixMatch's consistency term on real "
                                  "unlabelled images beside the propagated labels")
    lp_agree: float = Field(0.0, ge=0, description="labelprop: weight each propagated label also by the model's "
                            "own probability of it, to this power (0: off), so labels the model doubts count less")
    lp_balance: Literal["equal", "predicted", "none"] = Field("equal", description="labelprop: the class shares "
        "the propagated labels are weighed toward: 'equal' (Iscen et al.: every class the same total), 'predicted' "
        "(the shares the warm-started model predicts over the unlabelled images), 'none' (each label its "
        "certainty alone); equal was kept on validation accuracy (docs/transfer.md)")
    lp_drop: float = Field(0.0, ge=0, lt=1, description="labelprop: leave out this share of the unlabelled images "
                           "at each propagation, those whose labels are least certain, where images of no target "
                           "class gather (measured, off: docs/transfer-selection.md)")
    lp_reach: float = Field(0.3, ge=0, lt=1, description="labelprop: leave out the unlabelled images that little "
                            "propagated label mass reaches, under this share of the 90th percentile among the images "
                            "propagated the same label: images of no target class, which the graph ties to the labels "
                            "by few edges (0: keep every image; set where no clean or skewed pool loses an image: "
                            "docs/transfer.md)")
    lp_reach_gap: float = Field(8.0, ge=0, description="labelprop: also leave out a label's images below the widest "
                                "gap in their reach, where the gap is at least this many times the spread of the "
                                "reach above it: outsiders that a strong bridge ties to one label (0: off; set where "
                                "no clean or skewed pool loses an image: docs/transfer.md)")
    lp_relative: bool = Field(True, description="labelprop: divide the propagated labels' weights by their mean, so "
                              "certainty ranks the labels without setting the size of the unlabelled term (chosen on "
                              "validation accuracy: docs/transfer-selection.md)")

    def consistency_weight(self) -> float:
        return self.consistency if self.consistency is not None else (0.0 if self.algorithm == "anchor" else 1.0)

    def anchor_loss_weight(self) -> float:
        return self.anchor_weight if self.anchor_weight is not None else (1.0 if self.algorithm == "anchor" else 0.0)


class AutoConfig(Strict):
    """`--method auto`: how the coverage of the target by the source (transfer/coverage.py) picks the method.
    The thresholds were set on validation images held out of the benchmark's target pools (docs/transfer.md)."""
    pp_margin: float = Field(0.0, description="use PP when its features' probe accuracy on the labels beats the "
                             "untrained network's by more than this")
    keep_margin: float = Field(0.0, description="when PP's probe gain is at most this (but above pp_margin), restart "
                               "the upper blocks from the initial weights and keep PP's lower ones (keep_share)")
    keep_share: float = Field(0.5, ge=0, le=1, description="the share of blocks that keep their PP weights where "
                              "keep_margin applies (pretrain_keep)")
    cv_folds: int = Field(0, ge=0, description="(measured, off: docs/transfer-selection.md) where the probes favour "
                          "PP, check it by fine-tuning from PP and from scratch on all folds of the labels but one and "
                          "scoring the one left out; PP only where it wins that too (transfer/crossval.py; 0: the "
                          "probes alone; needs this many labels per class, else the probes alone)")
    cv_margin: float = Field(0.0, description="with cv_folds: use PP where its cross-validated score (the mean "
                             "probability of a held-out label's class) beats the untrained network's by more than "
                             "this")
    pseudo_min: float | None = Field(None, description="use pseudo samples when they carry at least this share of "
                                     "the labels' class information (pseudo-to-real probe, chance = 0, labels = 1); "
                                     "None, the default: never (they did not pay over pp of equal compute: "
                                     "docs/transfer.md)")
    reverse_check: bool = Field(False, description="(measured, off: docs/transfer-selection.md) with real unlabelled "
                                "images: keep the SSL model only if its labels of those images teach a fresh "
                                "network the k labels about as well as the warm start's do (reverse "
                                "validation); else the warm start")
    uneven_shares: float = Field(2.2, ge=0, description="with real unlabelled images: go back to the warm start "
                                 "(the labels-only model) where it predicts its commonest class more than this many "
                                 "times as often as an average other class, where learning them cost accuracy; "
                                 "methods asked by name warn there (docs/transfer.md; 0: never)")
    agreement_min: float = Field(0.8, ge=0, le=1, description="with real unlabelled images: go back to the warm "
                                 "start where label propagation's first labels agree with the warm start's own "
                                 "predictions on less than this share of them: its features do not group the images "
                                 "as the labels do (docs/transfer.md; 0: never)")
    gain_spread: float = Field(0.2, ge=0, description="turn augment.jitter on (at jitter_amount) where the "
                               "brightest pixels of the target images vary from image to image by more than this "
                               "(coefficient of variation per channel): a camera whose exposure or colour balance "
                               "varies (docs/transfer.md; 0: never)")
    jitter_amount: float = Field(0.5, ge=0, le=1, description="the augment.jitter that gain_spread turns on")
    colour_p: float = Field(0.01, ge=0, le=1, description="where gain_spread turns jitter on for colour images: "
                            "one gain for all channels (augment.jitter_tint off) where the labels' classes differ in "
                            "colour more than shuffled labels do in all but this share of draws (a permutation "
                            "test's p; docs/transfer.md; 0: never)")
    pose_score: float = Field(1.0, ge=0, description="turn pretrain_rotation on (at rotation_amount) where the target "
                              "images sit, in C's features, nearer G's samples turned by up to 180 degrees than the "
                              "upright ones, at least this far along the line from upright (-1) to turned (+1): "
                              "objects seen in poses the source drew upright (docs/transfer.md; 0: never)")
    rotation_amount: float = Field(180.0, ge=0, le=180, description="the pretrain_rotation that pose_score turns on")
    mirror_share: float = Field(0.75, ge=0, le=1, description="turn augment.hflip off where at least this share of "
                                "the target images (and a share the same images mirrored at random reach under 1% "
                                "of the time) have an unmirrored nearest neighbour among the images and their mirror "
                                "images: mirrored, they look like none of them (digits, text; docs/transfer.md; 0: "
                                "never)")
    reverse_steps: int = Field(300, ge=1, description="reverse check: steps training each fresh network")
    reverse_margin: float = Field(0.0, ge=0, le=1, description="reverse check: keep the SSL model unless its reverse "
                                  "accuracy is more than this below the warm start's (1: always keep it)")


class SupermaskConfig(Strict):
    """Train a supermask instead of weights (IteRand): the model ships as a seed plus one bit per weight
    (docs/transfer.md). Over the PP weights (or C's) when the method starts from them, else over seeded ones."""
    enabled: bool = Field(False, description="train edge-popup scores with IteRand re-randomisation, not weights")
    sparsity: float = Field(0.5, gt=0, lt=1, description="share of each layer's weights pruned")
    rerand_every: int = Field(50, ge=1, description="steps between re-randomisations of pruned weights")
    rerand_ratio: float = Field(0.1, ge=0, le=1, description="chance that a pruned weight is re-drawn then")
    steps_scale: float = Field(3.0, gt=0, description="the target phase runs this many times its steps: a mask "
                               "learns slower than weights (3 was better than 1 on validation images)")


class SourceFinetuneConfig(Strict):
    """`--method ft|l2sp|tred`: training the source classifier C itself (its ONNX graph made trainable) with a
    new head, for devices that can run C's architecture (docs/transfer.md)."""
    lr_scale: float = Field(0.1, gt=0, description="learning rate of C's fine-tuning, as a fraction of lr")
    l2sp_alpha: float = Field(1e-2, ge=0, description="L2-SP: weight of ||w - w_C||^2 / 2 over C's weights")
    l2sp_beta: float = Field(1e-2, ge=0, description="L2-SP: weight of ||w||^2 / 2 over the new head")
    tred_weight: float = Field(1.0, ge=0, description="TRED: weight of the pull of the features toward their "
                               "target-relevant part of C's")
    tred_mmd: float = Field(1.0, ge=0, description="TRED: weight of the MMD between the relevant part and the "
                            "rest while the disentangler trains")
    tred_steps: int = Field(100, ge=1, description="TRED: steps training the disentangler before fine-tuning")


class TransferConfig(SourceTrust):
    """`edgeppt transfer`: train a target architecture with PP and/or P-SSL from a source bundle.

    The default budget is the one the transfer benchmark measures (docs/transfer.md)."""
    source: Path | None = None
    target: str
    test: str | None = None
    unlabeled: str | None = Field(None, description="unlabelled target images for SSL: a dataset spec (folder, "
                                  ".npz, built-in) or 'rest' (the target pool's images that are not labelled)")
    max_unlabeled: int = Field(10_000, ge=0, description="use at most this many unlabelled images, a fixed random "
                               "subset (0 = all): label propagation's graph grows with the square of the count, "
                               "and the SSL phase sees about 64,000 images in all")
    test_fraction: TestFraction = TEST_FRACTION
    labels_per_class: LabelsPerClass = LABELS_PER_CLASS
    arch: str | dict = "resnet_xs"
    method: Literal[METHODS] = "auto"  # type: ignore[valid-type]
    seed: int = 0
    image_size: ImageSide | None = None
    batch_size: int = Field(TARGET_BATCH, ge=1, description="labelled batch size")
    lr: float = Field(0.05, gt=0, description="learning rate of the target phases (SGD, cosine decay)")
    weight_decay: float = Field(5e-4, ge=0, description="weight decay of the target phases")
    pretrain_steps: int = Field(400, ge=0, description="PP: steps classifying generated source-class samples")
    pretrain_batch: int = Field(128, ge=2)
    pretrain_lr: float = Field(0.05, gt=0, description="PP: learning rate")
    pretrain_weight_decay: float = Field(5e-4, ge=0, description="PP: weight decay")
    pretrain_pool: int = Field(0, ge=0, description="cache this many generated samples for PP (0 = draw fresh each "
                                                    "step)")
    pretrain_teacher: float = Field(0.0, ge=0, description="PP: weight of a distillation term toward C's softened "
                                    "outputs (T = kd_temperature) on the generated samples, beside the cross-entropy "
                                    "on their conditioning class (0 = off)")
    pretrain_rotation: float = Field(0.0, ge=0, le=180, description="PP: rotate G's samples by up to this many "
                                     "degrees (0: as the target's weak view), for targets seen in poses the source "
                                     "never drew; --method auto sets it where the images say so (auto.pose_score)")
    pretrain_mix: float = Field(0.0, ge=0, le=0.5, description="PP: condition G on a blend of two source classes, the "
                                "second's share drawn from [0, pretrain_mix], and train toward that blend (0 = one "
                                "class per sample; generators conditioned on a class index ignore it)")
    pretrain_contrastive: float = Field(0.0, ge=0, description="PP: weight of SimCLR's contrastive term between a "
                                        "weak and a strong view of each generated sample, beside the cross-entropy "
                                        "(0 = off)")
    pretrain_contrastive_temperature: float = Field(0.2, gt=0, description="PP: the contrastive term's temperature")
    pretrain_keep: float = Field(1.0, ge=0, le=1, description="after PP: the share of the feature extractor's "
                                 "layers, counted from the input, that keep their PP weights; the rest start the "
                                 "target phase from the seed's initial weights, as scratch does (1 = all)")
    finetune_steps: int = Field(800, ge=1, description="supervised / distillation / SSL steps on the target")
    probe_steps: int = Field(0, ge=0, description="after PP: steps training only the new head on frozen features "
                             "before the whole network is fine-tuned (LP-FT)")
    ema: float = Field(0.0, ge=0, le=1, description="each target phase ends on an exponential moving average of its "
                       "weights spanning this share of the phase (0 = off)")
    label_smoothing: float = Field(LABEL_SMOOTHING, ge=0, lt=1, description="label smoothing of the supervised "
                                   "target phases (chosen on validation accuracy: docs/transfer-selection.md)")
    sam: float = Field(0.0, ge=0, description="sharpness-aware minimisation in the labels-only target phases: the "
                       "radius rho of the weight perturbation (0 = off; each step then costs two passes)")
    mixup: float = Field(0.0, ge=0, description="mixup of the labelled images in the supervised target phases: "
                         "Beta(a, a)'s a (0 = off)")
    cosine_head: float = Field(COSINE_HEAD, ge=0, description="the labels-only target phases (scratch, pp, the SSL "
                               "warm starts) train a cosine classifier at this scale, imprinted from the labels' class "
                               "means, then baked into the plain linear head (0 = a plain linear head; chosen on "
                               "validation accuracy: docs/transfer-selection.md)")
    kd_weight: float = Field(1.0, ge=0)
    kd_temperature: float = Field(4.0, gt=0)
    augment: AugmentConfig = AugmentConfig()
    pssl: PSSLConfig = PSSLConfig()
    auto: AutoConfig = AutoConfig()
    source_ft: SourceFinetuneConfig = SourceFinetuneConfig()
    supermask: SupermaskConfig = SupermaskConfig()
    eval_every: int = Field(100, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1)

    # What may change when a run is resumed (edgeppt.runs.resume_conflicts): how it runs, not what it computes.
    RESUME_FREE: ClassVar[frozenset[str]] = frozenset({"threads", "device"}) | SourceTrust.TRUST_FIELDS



M = TypeVar("M", bound=Strict)


def read_yaml(path: str | Path, what: str) -> object:
    """A YAML file's content; a syntax error is one line naming where it is."""
    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise EdgepptError(f"cannot read {what} {path}: {e.problem or e.context}{where}") from e
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise EdgepptError(f"cannot read {what} {path}: {' '.join(str(e).split())}") from e


def load_yaml(path: str | Path, model: type[M]) -> M:
    raw = read_yaml(path, "config")
    if not isinstance(raw, dict):
        raise EdgepptError(f"{path}: a config is a mapping of fields, not a {type(raw).__name__}")
    granted = sorted(k for k in SourceTrust.TRUST_FIELDS if raw.get(k))
    if granted:  # a config can come with a bundle, from its sender: it never lets code load
        raise EdgepptError(f"{path}: {' and '.join(granted)} are not read from a config file (a file that comes "
                           "with a bundle could let its code run): give --trust-code or --trusted-key on the "
                           "command line")
    return validate(model, raw, str(path))


def without_trust(settings: dict[str, Any]) -> dict[str, Any]:
    """Saved settings less what lets code load: a run folder can come from anyone, so trust is given again on
    each command line."""
    return {k: v for k, v in settings.items() if k not in SourceTrust.TRUST_FIELDS}


def validate(model: type[M], raw: dict, where: str = "config") -> M:
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
                if isinstance(p, int):  # an item of a list: its type was found at the list's name
                    continue
                ann = sub.model_fields[str(p)].annotation if str(p) in sub.model_fields else None
                args = get_args(ann) or (ann,)  # list[StageSpace], StageSpace | None, StageSpace
                sub = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), sub)
            lines.append(f"unknown field {loc!r}; allowed: {sorted(sub.model_fields)}")
        else:
            lines.append(f"{loc}: {err['msg']}" if loc else err["msg"])  # a model-wide check has no field
    return "; ".join(lines)


class StageSpace(Strict):
    """The choices of one stage of the searched MobileNetV2/V3-like network; its first block strides."""
    stride: Literal[1, 2] = 1
    widths: list[PositiveInt] = Field(min_length=1)
    depths: list[PositiveInt] = Field([1, 2], min_length=1)
    kernels: list[Literal[3, 5, 7]] = [3, 5, 7]
    expands: list[PositiveFloat] = Field([3, 6], min_length=1)
    se: list[bool] = [False, True]


class SpaceConfig(Strict):
    """The search space (defaults suit 28x28 inputs: two downsamplings)."""
    stems: list[PositiveInt] = Field([8, 16, 24], min_length=1)
    acts: list[Literal["relu", "relu6", "hswish", "silu"]] = ["relu", "hswish"]
    head_widths: list[NonNegativeInt] = Field([0, 128], min_length=1, description="1x1 conv before pooling (0: none)")
    stages: list[StageSpace] = Field(default_factory=lambda: [
        StageSpace(stride=1, widths=[8, 16, 24], depths=[1], expands=[1, 3]),
        StageSpace(stride=2, widths=[16, 24, 32], depths=[1, 2, 3]),
        StageSpace(stride=2, widths=[24, 32, 48, 64], depths=[1, 2, 3]),
        StageSpace(stride=1, widths=[48, 64, 96], depths=[1, 2, 3]),
    ], min_length=1)


class ProxyConfig(Strict):
    """The low-fidelity evaluator: short PP on generated source samples, short fine-tune on the few labels."""
    pretrain_steps: int = Field(300, ge=0)
    pretrain_batch: int = Field(64, ge=2)
    pretrain_pool: int = Field(2048, ge=16, description="generated source samples drawn once and shared by all trials")
    finetune_steps: int = Field(100, ge=1)
    # The fine-tune trains as transfer's labels-only phase does (its batch, label smoothing and imprinted cosine
    # head, warm-up and schedule floor): with a plain head and no smoothing the proxy ranked the wide hand-designed
    # network below small searched ones that transfer 2-4 points worse (docs/search.md).
    batch_size: int = Field(TARGET_BATCH, ge=1)
    label_smoothing: float = Field(LABEL_SMOOTHING, ge=0, lt=1)
    cosine_head: float = Field(COSINE_HEAD, ge=0, description="cosine classifier scale of the fine-tune (0: plain)")
    lr: float = Field(0.05, gt=0)
    weight_decay: float = Field(5e-4, ge=0)


DEFAULT_DEVICE = "x86-cpu"  # the device profile a run targets unless told otherwise (edgeppt/devices/x86-cpu.yaml)


class RemoteWorker(Strict):
    """One SSH machine of NNI's remote training service (NNI's RemoteMachineConfig): edgeppt installed, key login."""
    host: str
    port: int = Field(22, ge=1, le=65535)
    user: str
    ssh_key_file: Path = Field(Path("~/.ssh/id_ed25519"), description="private key for the login")
    python_path: str | None = Field(None, description="folder holding the worker's python (default: its PATH's)")

    @field_validator("host", "user")
    @classmethod
    def _a_name(cls, v: str, info: ValidationInfo) -> str:
        # ssh would read "-oProxyCommand=..." as an option and run it, and "a@b" as another login
        if not v or v.startswith("-") or any(c.isspace() or c in "@" for c in v) or (info.field_name == "user"
                                                                                     and ":" in v):
            raise ValueError(f"{v!r} is not a {info.field_name} name (it may not start with '-' nor hold spaces, "
                             f"'@'{' or :' if info.field_name == 'user' else ''})")
        return v


class SearchConfig(SourceTrust):
    """`edgeppt search`: find the most accurate architecture of the space within a device's budgets."""
    # May change on resume (edgeppt.runs.resume_conflicts): more trials or finalists continue the same search.
    RESUME_FREE: ClassVar[frozenset[str]] = frozenset({"threads", "trials", "engine", "concurrency", "finalists",
                                                       "final_seeds", "reference", "workers", "manager_ip",
                                                       "latency_cache", "trial_retries"}) \
        | SourceTrust.TRUST_FIELDS
    source: Path | None = Field(None, description="source bundle for the proxy's pseudo pre-training (None: none)")
    target: str
    test: str | None = None
    test_fraction: TestFraction = TEST_FRACTION
    labels_per_class: LabelsPerClass = LABELS_PER_CLASS
    # 20 by default: cross-validation over the k labels alone (0) ranked 12 sampled architectures backwards
    # (Kendall tau -0.65 against transfer's accuracy on a separate labelled split; benchmarks/ranking.py).
    val_per_class: int = Field(20, ge=0, description="extra labelled images per class that rank candidates, disjoint "
                                                     "from the few training labels and the test split (counted in the "
                                                     "labels the search prints); 0: rank by cross-validation over the "
                                                     "training labels alone")
    augment: AugmentConfig = Field(AugmentConfig(), description="the proxy's augmentation (flips off for digits, "
                                   "text); transfer's `augment` settings, shared in pipeline.yaml")
    auto: AutoConfig = Field(AutoConfig(), description="auto's augmentation rules, which fit the proxy's "
                             "augmentation to the target as transfer's auto does (the pipeline passes transfer's "
                             "settings, and turns the rules off where transfer's method is not auto)")
    folds: int = Field(2, ge=2, description="cross-validation folds over the training labels when val_per_class "
                                            "is 0 (each fold fine-tunes on the others' labels, scores on its own)")
    image_size: ImageSide | None = None
    device: str = Field(DEFAULT_DEVICE, description="device profile name or .yaml")
    latency_ms: float | None = Field(None, gt=0, description="override the profile's latency budget")
    params: int | None = Field(None, gt=0)
    macs: int | None = Field(None, gt=0)
    peak_activation_kib: float | None = Field(None, gt=0)
    strategy: Literal["evolution", "random", "tpe"] = "evolution"
    trials: int = Field(20, ge=1, description="candidates trained (over-budget ones are rejected before training)")
    population: int = Field(8, ge=2, description="regularised evolution: population size")
    tournament: int = Field(3, ge=1, description="regularised evolution: tournament size")
    mutation_prob: float = Field(0.3, gt=0, le=1)
    finalists: int = Field(3, ge=0, description="after the trials, the best this many are re-trained with "
                                                "final_seeds more proxy seeds and the winner is the best mean (0: off)")
    final_seeds: int = Field(2, ge=1, description="extra proxy seeds per finalist")
    reference: bool = Field(True, description="also train the hand-designed MobileNet-like layout at the widest "
                            "width that fits the budgets, and re-rank it with the finalists (needs finalists > 0)")
    engine: Literal["sequential", "local", "remote"] = Field("sequential", description="NNI execution: in this "
        "process; NNI's local training service (a process per trial); or its remote one (trials on the SSH `workers`)")
    concurrency: int = Field(1, ge=1, description="trials at once (training-service engines)")
    workers: list[RemoteWorker] = Field([], description="engine remote: the SSH machines that run trials; the run "
                                        "directory must be at the same path on each (shared storage)")
    manager_ip: str | None = Field(None, description="engine remote: this machine's address as the workers reach it "
                                   "(default: NNI's guess)")
    trial_retries: int = Field(2, ge=0, description="times the experiment is run again for trials that were lost "
                               "(a worker or trial process gone mid-trial); trained candidates are recalled")

    @model_validator(mode="after")
    def _remote_needs_workers(self) -> SearchConfig:
        if self.engine == "remote" and not self.workers:
            raise ValueError("engine remote needs at least one SSH worker (workers: [{host, user, ssh_key_file}])")
        return self
    latency_warmup: int = Field(10, ge=0)
    latency_repeats: int = Field(50, ge=3)
    latency_band: float = Field(0.1, ge=0, description="a candidate measured within this share of the latency budget "
                                "is measured twice more and judged on the median, so noise does not flip it")
    latency_cache: bool = Field(True, description="keep each architecture's measured latency on this machine "
                                "($EDGEPPT_CACHE_DIR or ~/.cache/edgeppt/latency) and reuse it: the same search "
                                "twice gives the same answer")
    max_rejections: int = Field(2000, ge=1, description="stop after this many over-budget samples in a row")
    space: SpaceConfig = SpaceConfig()
    proxy: ProxyConfig = ProxyConfig()
    seed: int = 0
    threads: int | None = Field(None, ge=1, description="torch threads for the proxy training")
