"""The search space: an NNI ModelSpace of MobileNetV2/V3-like CNNs, and the NNI-free mapping of its samples.

A sample is a flat dict of choices ({"stem": 16, "act": "hswish", "s1_width": 24, "s1_depth": 2, ...}).
`to_arch(sample)` turns it into the mobilenet family's config, so `edgeppt.models.create_model` rebuilds any
candidate as a plain PyTorch module. The ModelSpace is assembled from the very same blocks (wrapped as NNI
parametrized modules), so NNI's frozen model and the rebuilt one are the same network.
"""

from __future__ import annotations

import json
import random
import warnings
from typing import Any

from torch import nn

with warnings.catch_warnings():  # NNI 3.0 warns about torch classes it predates; harmless
    warnings.simplefilter("ignore", RuntimeWarning)
    import nni
    from nni.nas.nn.pytorch import ModelSpace, ParametrizedModule, Repeat

from edgeppt.config import SpaceConfig
from edgeppt.models.base import ConvBN
from edgeppt.models.mobilenet import InvertedResidual

FAMILY = "mobilenet"


class _ConvBN(ParametrizedModule, ConvBN, wraps=ConvBN):  # type: ignore[call-arg]  # NNI is untyped: mypy checks wraps= against the typed base's __init_subclass__
    pass


class _Block(ParametrizedModule, InvertedResidual, wraps=InvertedResidual):  # type: ignore[call-arg]  # as _ConvBN
    pass


def _choice(label: str, values: list) -> Any:
    """A single value stays a constant (nothing to search, no label in the sample)."""
    values = list(dict.fromkeys(values))
    return values[0] if len(values) == 1 else nni.choice(label, values)


class EdgeCNNSpace(ModelSpace):
    """Stem width, activation, head width; per stage: depth, width, kernel, expansion ratio, squeeze-excitation."""

    def __init__(self, space: SpaceConfig, num_classes: int, in_chans: int = 1):
        super().__init__()
        act = _choice("act", space.acts)
        stem = _choice("stem", space.stems)
        self.stem = _ConvBN(in_chans, stem, 3, 1, 1, act)
        stages, cin = [], stem
        for i, st in enumerate(space.stages):
            w, k = _choice(f"s{i}_width", st.widths), _choice(f"s{i}_kernel", st.kernels)
            e, se = _choice(f"s{i}_expand", st.expands), _choice(f"s{i}_se", st.se)

            def block(j: int, cin=cin, w=w, k=k, e=e, se=se, stride=st.stride) -> nn.Module:
                return _Block(cin if j == 0 else w, w, k, stride if j == 0 else 1, e, se, act)
            depth = _choice(f"s{i}_depth", st.depths)
            stages.append(Repeat(block, depth) if isinstance(depth, nni.mutable.Mutable) else
                          nn.Sequential(*(block(j) for j in range(depth))))
            cin = w
        self.blocks = nn.Sequential(*stages)
        head = _choice("head", space.head_widths)
        self.last = _LastConv(cin, head, act)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = _Linear(cin, head, num_classes)

    def forward(self, x):
        return self.head(self.pool(self.last(self.blocks(self.stem(x)))))


class LastConv(nn.Module):
    """The optional 1x1 conv before pooling: identity at width 0, as in the mobilenet family."""

    def __init__(self, cin: int, width: int, act: str):
        super().__init__()
        self.body = ConvBN(cin, width, 1, act=act) if width else nn.Identity()

    def forward(self, x):
        return self.body(x)


class HeadLinear(nn.Linear):
    def __init__(self, cin: int, width: int, num_classes: int):
        super().__init__(width or cin, num_classes)


class _LastConv(ParametrizedModule, LastConv, wraps=LastConv):  # type: ignore[call-arg]  # as _ConvBN
    pass


class _Linear(ParametrizedModule, HeadLinear, wraps=HeadLinear):  # type: ignore[call-arg]  # as _ConvBN
    pass


def choices(space: SpaceConfig) -> dict[str, list]:
    """Every searched dimension and its candidates, in the order the sample lists them (NNI-free)."""
    out: dict[str, list] = {"act": space.acts, "stem": space.stems}
    for i, st in enumerate(space.stages):
        out.update({f"s{i}_width": st.widths, f"s{i}_kernel": st.kernels, f"s{i}_expand": st.expands,
                    f"s{i}_se": st.se, f"s{i}_depth": st.depths})
    out["head"] = space.head_widths
    return {k: list(dict.fromkeys(v)) for k, v in out.items() if len(dict.fromkeys(v)) > 1}


def _get(sample: dict, space_values: list, key: str) -> Any:
    return sample[key] if key in sample else list(dict.fromkeys(space_values))[0]


def to_arch(sample: dict[str, Any], space: SpaceConfig) -> dict[str, Any]:
    """A sample as the mobilenet family's frozen config: what best.json holds and create_model builds."""
    stages = []
    for i, st in enumerate(space.stages):
        stages.append({"width": int(_get(sample, st.widths, f"s{i}_width")),
                       "depth": int(_get(sample, st.depths, f"s{i}_depth")),
                       "kernel": int(_get(sample, st.kernels, f"s{i}_kernel")),
                       "expand": float(_get(sample, st.expands, f"s{i}_expand")),
                       "se": bool(_get(sample, st.se, f"s{i}_se")), "stride": st.stride})
    return {"family": FAMILY, "config": {"stem": int(_get(sample, space.stems, "stem")), "stages": stages,
                                         "head_width": int(_get(sample, space.head_widths, "head")),
                                         "act": str(_get(sample, space.acts, "act"))}}


def random_sample(space: SpaceConfig, rng: random.Random) -> dict[str, Any]:
    return {k: rng.choice(v) for k, v in choices(space).items()}


def extreme_sample(space: SpaceConfig, smallest: bool = True) -> dict[str, Any]:
    """The cheapest (or costliest) corner of the space: every numeric choice at its min (max), no SE."""
    pick = min if smallest else max
    out = {}
    for k, v in choices(space).items():
        if k == "act":
            out[k] = "relu" if "relu" in v else v[0]
        elif k.endswith("_se"):
            out[k] = (not smallest) if (not smallest) in v else v[0]
        else:
            out[k] = pick(v)
    return out


def sample_key(sample: dict[str, Any]) -> str:
    """Canonical text of a sample: the trial ledger's key."""
    return json.dumps({k: sample[k] for k in sorted(sample)}, sort_keys=True)
