"""Fine-tuning the source classifier C itself, for devices that can run its architecture.

`source_model` rebuilds C from the bundle's ONNX graph as a trainable network (edgeppt.models.onnx_graph:
nothing unpickled) under a new head. Three objectives train it on the labelled targets:
- `ft`: plain fine-tuning (Supervised);
- `l2sp`: L2-SP (Li et al., 2018): weight decay toward C's weights instead of toward zero;
- `tred`: TRED (Li et al., "Towards Accurate Knowledge Transfer via Target-awareness Representation
  Disentanglement", Machine Learning 2024), Max-MMD variant, on C's penultimate features f. A disentangler
  splits f into a target-relevant part r = m * f and the rest (1 - m) * f, with m a learned soft mask over
  C's feature channels: r must classify the labelled targets (a probe head) while the MMD between the two
  parts is maximised. Fine-tuning then pulls the network's features toward r, C's target-relevant knowledge,
  instead of toward all of f (as a plain feature-reference regulariser would).
  The mask is our choice of disentangler: a free linear map makes Max-MMD degenerate (r = f + c, a constant
  shift, separates the two parts perfectly while carrying nothing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeppt.bundle import SourceBundle
from edgeppt.config import AugmentConfig
from edgeppt.data import ImageSet
from edgeppt.models import ClassifierNet, create_model
from edgeppt.models.onnx_graph import from_bundle
from edgeppt.train import augment
from edgeppt.train.objective import Objective, Supervised, sample_batch, shard


def source_model(bundle: SourceBundle, num_classes: int) -> tuple[ClassifierNet, dict]:
    """C's feature extractor as a trainable network with a new `num_classes` head, and its frozen architecture
    (what model.pt records, so export rebuilds it like any other)."""
    arch, weights = from_bundle(bundle)
    model = create_model(arch, num_classes, bundle.classifier_channels)
    model.load_state_dict(weights, strict=False)  # the head (and the constant buffers) are the model's own
    return model, arch


class L2SP(Supervised):
    """Cross-entropy + alpha/2 ||w - w_C||^2 over C's weights + beta/2 ||w||^2 over the new head.
    The phase runs without plain weight decay (this is its replacement)."""

    def __init__(self, labelled: ImageSet, batch_size: int, alpha: float, beta: float,
                 aug: AugmentConfig = augment.DEFAULT, label_smoothing: float = 0.0):
        super().__init__(labelled, batch_size, new_head=True, aug=aug, label_smoothing=label_smoothing)
        self.alpha, self.beta = alpha, beta
        self._model: ClassifierNet | None = None

    def setup(self, model):
        super().setup(model)
        self._model = model
        # The starting point: the model is rebuilt from C before training (also on resume), so these are C's.
        for i, p in enumerate(self._backbone(model)):
            self.register_buffer(f"ref{i}", p.detach().clone())

    @staticmethod
    def _backbone(model: ClassifierNet) -> list[nn.Parameter]:
        head = {id(p) for p in model.head.parameters()}
        return [p for p in model.parameters() if id(p) not in head]

    def loss(self, net, g, step, total, dist):
        ce, stats = super().loss(net, g, step, total, dist)
        assert self._model is not None
        sp = sum(((p - getattr(self, f"ref{i}")) ** 2).sum() for i, p in enumerate(self._backbone(self._model)))
        head = (self._model.head.weight ** 2).sum()
        reg = 0.5 * self.alpha * sp + 0.5 * self.beta * head
        return ce + reg, {**stats, "l2sp": reg.item()}


def mmd2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared MMD with a sum of Gaussian kernels around the median distance (bounded, so maximising it is
    well posed)."""
    x = torch.cat([a, b])
    d2 = torch.cdist(x, x).pow(2)
    med = d2.detach()[d2.detach() > 0].median() if (d2.detach() > 0).any() else torch.tensor(1.0)
    k = torch.stack([torch.exp(-d2 / (med * s)) for s in (0.25, 1.0, 4.0)]).sum(0)
    n = len(a)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


class _Disentangler(nn.Module):
    """r = sigmoid(a) * f (the relevant part), a probe head on r."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.mask_logits, self.aux = nn.Parameter(torch.zeros(dim)), nn.Linear(dim, num_classes)

    def split(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = torch.sigmoid(self.mask_logits)
        return m * f, (1 - m) * f

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r, rest = self.split(f)
        return r, rest, self.aux(r)


class Disentangle(Objective):
    """TRED's first step: train the mask (and a probe head on r) on C's frozen features of the labelled targets:
    cross-entropy of r's probe - mmd_weight * MMD^2(r, rest). C and the target network are not trained."""

    def __init__(self, labelled: ImageSet, batch_size: int, bundle: SourceBundle, net: _Disentangler,
                 mmd_weight: float, aug: AugmentConfig = augment.DEFAULT):
        super().__init__()
        self.data, self.batch_size, self.bundle, self.mmd_weight, self.aug = labelled, batch_size, bundle, \
            mmd_weight, aug
        self.net = net

    def trainable(self, model):
        return self.net

    def loss(self, net, g, step, total, dist):
        x, y = sample_batch(self.data, self.batch_size, g)
        x, y = shard(augment.weak(x, g, self.aug), dist), shard(y, dist)
        dev = next(net.parameters()).device
        f = self.bundle.classify(x)[1].to(dev)
        r, rest, logits = net(f)
        ce, mmd = F.cross_entropy(logits, y.to(dev)), mmd2(r, rest)
        return ce - self.mmd_weight * mmd, {"images": len(x), "ce": ce.item(), "mmd": mmd.item()}


class _FeaturesAndLogits(nn.Module):
    def __init__(self, model: ClassifierNet):
        super().__init__()
        self.model = model

    def forward(self, x):
        f = self.model.forward_features(x)
        return self.model.head(f), f


class TRED(Supervised):
    """TRED's fine-tuning: cross-entropy + weight * ||f(x) - r_C(x)||^2 / ||f_C(x)||^2 (batch means: the same
    weight suits any bundle's feature scale), with r_C the relevant part of C's features of the same augmented
    batch, the mask trained first by `first_step()` (the same module: a checkpoint of either phase restores it)
    and frozen here."""

    def __init__(self, labelled: ImageSet, batch_size: int, bundle: SourceBundle, weight: float,
                 aug: AugmentConfig = augment.DEFAULT, label_smoothing: float = 0.0, seed: int = 0):
        super().__init__(labelled, batch_size, new_head=True, aug=aug, label_smoothing=label_smoothing)
        self.bundle, self.weight = bundle, weight
        with torch.random.fork_rng(devices=[]):  # its init from the run's seed, not from what came before
            torch.manual_seed(seed)
            self.disentangle = _Disentangler(bundle.manifest.classifier.num_features, len(labelled.classes))

    def first_step(self, mmd_weight: float) -> Disentangle:
        return Disentangle(self.data, self.batch_size, self.bundle, self.disentangle, mmd_weight, self.aug)

    def trainable(self, model):
        return _FeaturesAndLogits(model)

    def loss(self, net, g, step, total, dist):
        x, y = sample_batch(self.data, self.batch_size, g)
        x, y = shard(augment.weak(x, g, self.aug), dist), shard(y, dist)
        dev = next(net.parameters()).device
        with torch.no_grad():
            f_c = self.bundle.classify(x)[1].to(dev)
            r = self.disentangle.split(f_c)[0]
        logits, f = net(x.to(dev))
        y = y.to(dev)
        ce = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        reg = (f - r).pow(2).mean() / f_c.pow(2).mean().clamp_min(1e-12)
        return ce + self.weight * reg, {"images": len(x), "ce": ce.item(), "tred": reg.item(),
                                        "train_acc": (logits.argmax(1) == y).float().mean().item()}
