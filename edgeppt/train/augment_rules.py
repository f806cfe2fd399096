"""auto's augmentation rules: measured on the target images before any training, so that the search's
proxy and transfer fit the augmentation alike (the search ranks candidates as transfer will train them).

- gain jitter where the images' gain varies from image to image (`AutoConfig.gain_spread`), one gain for all
  channels where the labels' classes differ in colour (`AutoConfig.colour_p`: the one rule that reads labels);
- PP on turned samples where the target lies nearer G's samples turned than upright, in C's features
  (`AutoConfig.pose_score`);
- no flips where the images look unlike their mirror images (`AutoConfig.mirror_share`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from edgeppt.bundle import SourceBundle
from edgeppt.config import AugmentConfig, AutoConfig
from edgeppt.data import reshape_images, subsample
from edgeppt.train.augment import colour_cue, gain_spread, weak

# The AutoConfig fields these rules read (what a search's result depends on) and the thresholds that turn them off.
RULE_FIELDS = ("gain_spread", "jitter_amount", "colour_p", "pose_score", "rotation_amount", "mirror_share")
OFF = {"gain_spread": 0.0, "pose_score": 0.0, "mirror_share": 0.0}


def pp_augment(augment: AugmentConfig, pretrain_rotation: float, bundle: SourceBundle) -> AugmentConfig:
    """PP trains on source-class samples: flips follow the owner's source training where the bundle says, turns
    follow `pretrain_rotation`, and the target's gain jitter never reaches them."""
    hflip = bundle.manifest.info.get("config", {}).get("hflip", augment.hflip)
    rotation = {"max_rotation": pretrain_rotation} if pretrain_rotation else {}
    return augment.model_copy(update={"hflip": bool(hflip), "jitter": 0.0, "jitter_tint": True, **rotation})


def stretched(x: torch.Tensor, low: float = 0.01, high: float = 0.99) -> torch.Tensor:
    """Each image's levels stretched so that its 1st and 99th percentiles become 0 and 1 (clipped): an image's
    exposure and contrast taken out, its shape kept."""
    flat = x.flatten(1).float()
    lo, hi = flat.quantile(torch.tensor([low, high]), dim=1)[:, :, None, None, None].unbind(0)
    return ((x - lo) / (hi - lo).clamp_min(1e-3)).clamp(0, 1)


def pose_score(bundle: SourceBundle, x_t: torch.Tensor, aug: AugmentConfig, seed: int, samples: int = 500,
               max_targets: int = 1000) -> float:
    """Where the target images sit between G's samples of the source classes seen as PP sees them (-1) and the same
    samples turned by up to 180 degrees (+1), in C's features. Every image's levels are stretched first
    (`stretched`): G's samples turned hold less of the object (their corners are empty), and a dim target sat nearer
    them for that alone (+2.4 for the example's target at 40% of its brightness, upright).

    Each set is its kernel mean embedding (a Gaussian kernel whose width is the median squared distance between
    target images and upright samples); the score projects the target's on the line between the two sample sets':
    (MMD²(target, upright) - MMD²(target, turned)) / MMD²(upright, turned). The target's own spread cancels out of
    it, so twenty labelled images give about the reading a thousand do. Label-free."""
    g = torch.Generator().manual_seed(seed)
    keep = subsample(len(x_t), max_targets)
    x_t = reshape_images(x_t if keep is None else x_t[keep], bundle.image_shape[1], bundle.image_shape[0])
    n_cls = bundle.num_classes  # every class once per round; more classes than samples: a seeded draw of them
    classes = torch.arange(samples) % n_cls if n_cls <= samples else torch.randperm(n_cls, generator=g)[:samples]
    x_s = bundle.sample_classes(classes, generator=g).cpu()
    views = [weak(x_s, g, aug.model_copy(update={"max_rotation": r, "jitter": 0.0})) for r in (0.0, 180.0)]
    f_t, f_u, f_r = (F.normalize(bundle.classify(stretched(x))[1].flatten(1).float().cpu(), dim=1)
                     for x in (x_t, *views))
    width = torch.cdist(f_t, f_u).square().median().clamp_min(1e-8)

    def k(a: torch.Tensor, b: torch.Tensor, same: bool = False) -> torch.Tensor:  # the mean kernel between two sets
        m = torch.exp(-torch.cdist(a, b).square() / width)
        return (m.sum() - m.diagonal().sum()) / (len(a) * (len(a) - 1)) if same else m.mean()

    uu, rr, ur = k(f_u, f_u, True), k(f_r, f_r, True), k(f_u, f_r)
    return ((2 * k(f_t, f_r) - 2 * k(f_t, f_u) + uu - rr) / (uu + rr - 2 * ur).clamp_min(1e-8)).item()


def centred(x: torch.Tensor) -> torch.Tensor:
    """Each image moved sideways (whole pixels, edges repeated) so that its contrast against its border's median
    has its centroid in the middle column: where every object sits a little to one side, its mirror image sits
    on the other, and the mirror test would read that placement as a class that mirroring changes."""
    n, c, h, w = x.shape
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], -1).median(-1).values
    mass = (x - border[..., None, None]).abs().sum((1, 2))  # (N, W): each column's contrast
    centroid = (mass * torch.arange(w, dtype=mass.dtype)).sum(1) / mass.sum(1).clamp_min(1e-8)
    pad = w // 4
    move = ((w - 1) / 2 - centroid).round().long().clamp(-pad, pad)
    cols = (pad - move)[:, None] + torch.arange(w)[None, :]  # (N, W): the padded columns each image keeps
    return F.pad(x, (pad, pad, 0, 0), mode="replicate").gather(-1, cols[:, None, None, :].expand(n, c, h, w))


MIRROR_P = 0.01  # flips go only where images facing either way would read the share this high less often
MIRROR_DRAWS = 2000  # random mirrorings of the images that estimate how often (at most: see mirror_test)


@dataclass
class MirrorTest:
    share: float  # of images whose nearest neighbour is unmirrored: ~0.5 where mirroring keeps the distribution
    p: float | None  # how often the same images, each mirrored or not at random, read at least `share` (None: not
    # drawn, the share being under the effect the rule needs)


def mirror_test(x: torch.Tensor, effect: float = 0.0, max_images: int = 1000, seed: int = 0) -> MirrorTest:
    """A two-sample nearest-neighbour test (Schilling 1986) of the target images against their mirror images: the
    share of images whose nearest neighbour, among the other images and every image mirrored (its own mirror left
    out), is unmirrored. About 0.5 where objects face either way, near 1 where mirrored images look like none of
    them (digits, text). Pixels, each image moved to its centroid (`centred`), its mean taken out and
    L2-normalised.

    Its p-value is a randomisation test: where mirroring keeps the images' distribution, each image is as likely
    as its mirror, so the share the images read is one draw among those they read with each one mirrored or not at
    random. Neighbours among few images are not independent, so chance reaches far above binomial spread: 0.8 in
    some draws of 20 animals that face either way. Drawn only where the share reaches `effect`, and only until
    the draws have reached it more than MIRROR_P of MIRROR_DRAWS times."""
    keep = subsample(len(x), max_images)
    c = centred((x if keep is None else x[keep]).float())

    def flat(v: torch.Tensor) -> torch.Tensor:
        v = v.flatten(1)
        return F.normalize(v - v.mean(1, keepdim=True), dim=1)

    # Mirroring is an isometry, so every distance among the images and their mirrors is one of these two.
    same, mirrored = torch.cdist(flat(c), flat(c)), torch.cdist(flat(c), flat(c.flip(-1)))
    own = torch.eye(len(c), dtype=torch.bool)

    def read(s: torch.Tensor, m: torch.Tensor) -> float:
        s, m = s.masked_fill(own, float("inf")), m.masked_fill(own, float("inf"))
        return (s.min(1).values < m.min(1).values).float().mean().item()

    share = read(same, mirrored)
    if share < effect:  # the rule cannot fire: no draws
        return MirrorTest(share, None)
    g = torch.Generator().manual_seed(seed)
    hits = draws = 0
    while draws < MIRROR_DRAWS and hits <= MIRROR_P * MIRROR_DRAWS:  # past that, p is at least MIRROR_P
        side = torch.randint(0, 2, (len(c),), generator=g).bool()  # each image mirrored or not
        level = side[:, None] == side[None, :]  # pairs on the same side keep their distance
        hits += read(torch.where(level, same, mirrored), torch.where(level, mirrored, same)) >= share
        draws += 1
    return MirrorTest(share, (hits + 1) / (draws + 1))


def _share_of_draws(p: float) -> str:
    """A p-value as a share of the draws; the smallest estimable one (1 in MIRROR_DRAWS + 1) as "under 0.1%"."""
    return "under 0.1%" if p < 0.001 else f"{p:.1%}"


@dataclass
class Fitted:
    """The augmentation to train with, what each rule measured (for report.json), and a line per change."""
    augment: AugmentConfig
    pretrain_rotation: float
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


PP_ROTATION_NOTE = "auto: PP rotation"  # how the pose rule's line starts (a run marks it where nothing pre-trains)


def fit_augmentation(augment: AugmentConfig, pretrain_rotation: float, rules: AutoConfig, x: torch.Tensor,
                     labels: torch.Tensor, bundle: SourceBundle | None, pretrain: bool, seed: int) -> Fitted:
    """Apply each rule that is on (its threshold not 0) and whose setting is still at its default, to the target
    images `x` (labelled, and any unlabelled after them); `labels` are the first len(labels) images' classes, read
    only to keep the gain jitter from tinting colours that tell the classes apart."""
    out = Fitted(augment, pretrain_rotation)
    if rules.gain_spread and not augment.jitter:
        keep = subsample(len(x), 1000)  # a fixed 1,000 of a large pool: its quantiles sort every pixel
        spread = gain_spread(x if keep is None else x[keep])
        on = spread > rules.gain_spread
        out.records["gain"] = {"spread": spread, "limit": rules.gain_spread, "jitter": rules.jitter_amount if on else 0}
        # A tint per image would blur the colours that tell classes apart (each class its own colour): there the
        # jitter changes exposure only. Measured on the labels, so only where jitter is on and the images in colour.
        cue = colour_cue(x[:len(labels)], labels, seed=seed) \
            if on and rules.colour_p and x.shape[1] > 1 and len(labels) > 1 else None
        coloured = cue is not None and cue < rules.colour_p  # the classes have colours of their own
        tint = augment.jitter_tint and not coloured
        if cue is not None:
            out.records["gain"] |= {"colour_cue_p": cue, "colour_p_limit": rules.colour_p, "tint": tint}
        if on:
            out.augment = out.augment.model_copy(update={"jitter": rules.jitter_amount, "jitter_tint": tint})
            out.notes.append(f"auto: gain jitter {rules.jitter_amount} on: the images' brightest pixels vary by "
                             f"{spread:.2f} from image to image (limit {rules.gain_spread}), as a camera's exposure or "
                             "colour balance does (auto.gain_spread)" + ("" if not coloured else
                             f"; one gain for all channels, no tint: the labels' classes differ in colour (shuffled "
                             f"labels differ as much {_share_of_draws(cue or 0)} of the time)"))
    if rules.pose_score and not pretrain_rotation and bundle is not None and pretrain:
        score = pose_score(bundle, x, pp_augment(augment, pretrain_rotation, bundle), seed)
        on = score >= rules.pose_score
        out.records["pose"] = {"score": score, "limit": rules.pose_score,
                               "rotation": rules.rotation_amount if on else 0}
        if on:
            out.pretrain_rotation = rules.rotation_amount
            out.notes.append(f"{PP_ROTATION_NOTE} {rules.rotation_amount:g} on: in the source classifier's features "
                             f"the target images lie nearer G's samples turned than upright ({score:+.2f} from "
                             f"upright -1 to turned +1, limit {rules.pose_score:+.2f}): objects in poses the source "
                             "drew upright (auto.pose_score)")
    if rules.mirror_share and augment.hflip:
        test = mirror_test(x, rules.mirror_share, seed=seed)
        off = test.p is not None and test.p < MIRROR_P
        out.records["mirror"] = {"share": test.share, "limit": rules.mirror_share, "p": test.p, "p_limit": MIRROR_P,
                                 "hflip": not off}
        if off:
            out.augment = out.augment.model_copy(update={"hflip": False})
            out.notes.append(f"auto: flips off: {test.share:.0%} of the target images have an unmirrored nearest "
                             f"neighbour among them and their mirror images (about 50% where objects face either way; "
                             f"limit {rules.mirror_share:.0%}; the same images mirrored at random read as high "
                             f"{_share_of_draws(test.p or 0)} of the time): mirrored, they look like none of them "
                             "(auto.mirror_share)")
    return out
