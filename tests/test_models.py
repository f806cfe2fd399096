import json

import pytest
import torch

from edgeppt.errors import EdgepptError
from edgeppt.models import arch_spec, create_model, list_models


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_builds_and_swaps_its_head(name):
    m = create_model(name, num_classes=5, in_chans=3)
    x = torch.rand(2, 3, 28, 28)
    assert m(x).shape == (2, 5)
    assert m.forward_features(x).shape == (2, m.num_features)
    m.reset_head(7)
    assert m(x).shape == (2, 7)


def test_frozen_architecture_json_round_trip(tmp_path):
    spec = {"family": "mobilenet", "config": {"stem": 8, "act": "hswish", "stages": [
        {"width": 16, "depth": 2, "kernel": 5, "expand": 3, "se": True, "stride": 2}]}}
    (tmp_path / "a.json").write_text(json.dumps(spec))
    m = create_model(str(tmp_path / "a.json"), 4, 1)
    assert m(torch.rand(1, 1, 16, 16)).shape == (1, 4)
    assert arch_spec(str(tmp_path / "a.json")) == spec
    # A named model resolves to the same kind of spec, so a run can always rebuild its model.
    assert create_model(arch_spec("resnet_xs"), 3, 1).num_features == create_model("resnet_xs", 3, 1).num_features


def test_bad_architectures_are_explained(tmp_path):
    with pytest.raises(EdgepptError, match="unknown architecture 'resnet_9000'"):
        create_model("resnet_9000", 3)
    (tmp_path / "b.json").write_text(json.dumps({"family": "mobilenet", "config": {"stages": [{"widht": 8}]}}))
    with pytest.raises(EdgepptError, match="widht"):
        create_model(str(tmp_path / "b.json"), 3)
