"""The core trainer: in-memory phases for the search's proxy, the EMA's warm-up, per-phase schedules."""

import pytest
import torch

from edgeppt.config import AugmentConfig
from edgeppt.data import ImageSet
from edgeppt.errors import EdgepptError
from edgeppt.models import create_model
from edgeppt.train.loop import Dist, Phase, Trainer, ema_decay, ema_update, lr_at
from edgeppt.train.objective import Supervised

ONE = Dist(0, 1, torch.device("cpu"))


def _blobs(n: int = 40) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.2
    x[y == 1, :, :4] += 0.8  # class 1: a bright top half
    return ImageSet(x, y, ["dark", "top"])


def test_a_trainer_without_out_writes_nothing_and_learns(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = _blobs()
    torch.manual_seed(0)
    model = create_model("resnet_xs", 2, 1)
    phase = Phase("fit", 30, Supervised(data, 16), lr=0.05, evaluate=False, warmup=0, floor=0.0)
    Trainer(model, [phase], None, seed=0, progress=False, channels_last=True).run()
    assert list(tmp_path.iterdir()) == []
    model.eval()
    assert (model(data.x).argmax(1) == data.y).float().mean() > 0.9


def test_ema_warms_up_then_averages():
    avg = ema_update(0.9)
    a, c = [torch.zeros(3)], [torch.ones(3)]
    avg(a, c, torch.tensor(0))  # warm-up: decay min(0.9, 1/10), 90% of the way at once
    assert torch.allclose(a[0], torch.full((3,), 0.9))
    a = [torch.zeros(3)]
    avg(a, [torch.ones(3)], torch.tensor(1000))  # warmed up: decay 0.9
    assert torch.allclose(a[0], torch.full((3,), 0.1))
    assert ema_decay(0.0, 200) == 0.0 and ema_decay(0.1, 200) == 0.95  # an EMA over a tenth of 200 steps


def test_schedule_follows_the_phase():
    ph = Phase("p", 100, Supervised(_blobs(), 4), lr=1.0, warmup=0, floor=0.0)
    assert lr_at(ph, 0) == 1.0 and abs(lr_at(ph, 100)) < 1e-12
    ph = Phase("p", 100, Supervised(_blobs(), 4), lr=1.0)  # default: a tenth warm-up, 5% floor
    assert lr_at(ph, 0) == 0.1 and abs(lr_at(ph, 100) - 0.05) < 1e-12


def test_mixup_and_label_smoothing_change_the_loss_reproducibly():
    data, model = _blobs(), create_model("resnet_xs", 2, 1)

    def loss(**kw) -> float:
        objective = Supervised(data, 8, **kw)
        return objective.loss(model, torch.Generator().manual_seed(3), 0, 10, ONE)[0].item()

    base = loss()
    assert loss() == base  # the same generator: the same batch, the same loss
    assert loss(label_smoothing=0.2) != base
    assert loss(mixup=0.4) == loss(mixup=0.4) != base  # the mixing share comes from the generator too


def test_the_strong_view_is_a_choice_of_the_augment_config():
    data, model = _blobs(), create_model("resnet_xs", 2, 1)
    losses = [Supervised(data, 8, aug=AugmentConfig(labelled_view=v)).loss(
        model, torch.Generator().manual_seed(3), 0, 10, ONE)[0].item() for v in ("weak", "strong")]
    assert losses[0] != losses[1]


def test_gain_jitter_scales_each_channel_within_its_bounds_and_draws_nothing_when_off():
    from edgeppt.train import augment

    x = torch.full((64, 3, 8, 8), 0.5)
    still = AugmentConfig(max_shift=0, hflip=False)
    g, h = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(augment.weak(x, g, still), x)
    augment._affine(x, h, max_shift=0, max_rot=0, scale=(1.0, 1.0), flip=False)
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=h))  # jitter 0 draws nothing more
    y = augment.weak(x, torch.Generator().manual_seed(0), still.model_copy(update={"jitter": 0.5}))
    gain = y[:, :, 0, 0] / 0.5
    assert gain.min() >= 0.5 - 1e-6 and gain.max() <= 1.5 + 1e-6 and gain.max() - gain.min() > 0.8
    assert torch.equal(y, y[:, :, :1, :1].expand_as(y))  # one gain per image and channel
    assert (gain[:, 0] != gain[:, 1]).all()  # colour images get a tint, not only a brightness
    assert AugmentConfig().key() == AugmentConfig(jitter=0).key() != AugmentConfig(jitter=0.5).key()
    assert "jitter" not in AugmentConfig().key()  # caches keyed before it existed stay valid


def test_sam_steps_with_the_gradient_at_perturbed_weights_and_counts_batch_statistics_once():
    data = _blobs()
    ends = {}
    for rho in (0.0, 0.05):
        torch.manual_seed(0)
        model = create_model("resnet_xs", 2, 1)
        objective = Supervised(data, 16, sam=rho)
        objective.setup(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        loss, _ = objective.update(model, opt, torch.Generator().manual_seed(1), 0, 1, ONE)
        assert torch.isfinite(loss)
        ends[rho] = model.state_dict()
        assert any(not torch.equal(before[k], v) for k, v in ends[rho].items() if "weight" in k)  # it stepped
    plain, sam = ends[0.0], ends[0.05]
    # the same batch's statistics, taken once: the perturbed second pass leaves them alone
    assert torch.equal(plain["stem.1.running_mean"], sam["stem.1.running_mean"])
    # the step itself comes from another point: the weights differ
    assert not torch.allclose(plain["stem.0.weight"], sam["stem.0.weight"])


def test_the_cosine_head_is_imprinted_trains_as_cosines_and_ships_as_a_plain_linear_head():
    data = _blobs()
    torch.manual_seed(0)
    model = create_model("resnet_xs", 2, 1)
    objective = Supervised(data, 16, new_head=True, cosine=10.0)
    objective.setup(model)
    objective._imprint_head(model)  # what its first step does
    model.eval()
    f = torch.nn.functional.normalize(model.forward_features(data.x), dim=1)
    means = torch.stack([f[data.y == c].mean(0) for c in (0, 1)])
    assert torch.allclose(model.head.weight, torch.nn.functional.normalize(means, dim=1), atol=1e-6)  # imprinted
    assert not model.head.bias.any() and not model.head.bias.requires_grad
    phase = Phase("fit", 30, objective, lr=0.05, evaluate=False, warmup=0)
    Trainer(model, [phase], None, seed=0, progress=False).run()
    model.eval()
    with torch.no_grad():
        f = model.forward_features(data.x)
        cosine = 10.0 * torch.nn.functional.normalize(f, dim=1) @ torch.nn.functional.normalize(
            model.head.weight, dim=1).t()
        plain = model(data.x)
    # baked: the plain head predicts what the cosine classifier does, at about its scale, with a trainable bias
    assert torch.equal(plain.argmax(1), cosine.argmax(1))
    assert (plain.argmax(1) == data.y).float().mean() > 0.9
    assert abs(plain.abs().mean().item() - cosine.abs().mean().item()) < 0.3 * cosine.abs().mean().item()
    assert not model.head.bias.any() and model.head.bias.requires_grad


def _baked(model, data, cosine: float = 10.0) -> bool:
    """Every head row the same length: cosine over the mean feature norm of the final weights."""
    from edgeppt.train.objective import features

    norm = features(model, data.x, normalize=False).norm(dim=1).mean()
    return torch.allclose(model.head.weight.norm(dim=1), (cosine / norm).expand(model.head.weight.shape[0]),
                          rtol=1e-4)


@pytest.mark.parametrize("wrap", ["ema", "supermask"])
def test_the_cosine_head_is_baked_on_the_weights_the_phase_hands_on(wrap):
    """With an EMA of the weights, the head is baked after the average is loaded (baking first would blend the
    baked rows with the unit-length ones of every earlier step); under a supermask, the head is imprinted and baked
    as without one (the wrapper runs the inner objective's own step)."""
    from edgeppt.config import SupermaskConfig
    from edgeppt.transfer.supermask import Supermasked, attach

    data = _blobs()
    torch.manual_seed(0)
    model = create_model("resnet_xs", 2, 1)
    objective = Supervised(data, 16, new_head=True, cosine=10.0)
    if wrap == "supermask":
        attach(model, SupermaskConfig(enabled=True), seed=0, seeded=True)
        objective = Supermasked(objective, SupermaskConfig(enabled=True), seed=0)
    phase = Phase("fit", 20, objective, lr=0.05, evaluate=False, warmup=0, ema=0.8 if wrap == "ema" else 0.0)
    imprinted = []
    real = Supervised._imprint_head
    Supervised._imprint_head = lambda self, m: imprinted.append(1) or real(self, m)
    try:
        Trainer(model, [phase], None, seed=0, progress=False).run()
    finally:
        Supervised._imprint_head = real
    assert imprinted == [1] and _baked(model, data)


def test_a_teacher_that_starts_trained_averages_at_its_decay_from_the_first_step():
    from edgeppt.train.loop import ema_model

    student = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(student.weight)
    teacher = ema_model(student, 0.9, warmup=False)
    teacher.update_parameters(student)  # the first update copies: the teacher starts as the student
    with torch.no_grad():
        student.weight.fill_(1.0)
    teacher.update_parameters(student)
    assert teacher.module.weight.item() == pytest.approx(0.1)  # not 0.82 (the warm-up's decay 2/11 at t=1)
    zero = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(zero.weight)
    warm = ema_model(zero, 0.9)  # the warm-up, for an average that starts from untrained weights
    warm.update_parameters(zero)
    warm.update_parameters(student)
    assert warm.module.weight.item() == pytest.approx(1 - 2 / 11)


def test_a_checkpoint_that_is_not_this_runs_is_one_line_and_kept(tmp_path):
    data = _blobs()

    def trainer(steps: int) -> Trainer:
        torch.manual_seed(0)
        phase = Phase("fit", steps, Supervised(data, 16), lr=0.05, evaluate=False, warmup=0, floor=0.0)
        return Trainer(create_model("resnet_xs", 2, 1), [phase], tmp_path, seed=0, progress=False,
                       checkpoint_every=5)

    stopped = trainer(10)
    stopped.run()
    ckpt = stopped.ckpt_path
    state = torch.load(ckpt, weights_only=True)
    state["step"] = 5  # a run cut before its end, ...
    state["model"].pop(next(iter(state["model"])))  # ... whose weights lack a tensor this version has
    torch.save(state, ckpt)
    before = ckpt.read_bytes()
    with pytest.raises(EdgepptError, match=r"does not fit phase 'fit' of this run \(Missing key") as e:
        trainer(10).run(resume=True)
    assert "\n" not in str(e.value) and ckpt.read_bytes() == before  # one line, and nothing lost
    ckpt.write_bytes(before[: len(before) // 2])  # truncated (copied half-way)
    with pytest.raises(EdgepptError, match="not a complete checkpoint of this run") as e:
        trainer(10).run(resume=True)
    assert "\n" not in str(e.value)


def test_an_averaged_phase_made_shorter_or_longer_on_resume_ends_as_one_run_of_that_length(tmp_path, monkeypatch):
    """A phase with an EMA hands on its average. Resumed at fewer steps than its checkpoint holds, it hands on the
    average too (not the raw weights); a finished phase made longer goes on from the weights it trained (not from
    their average), so it ends where one run of that length does (a constant rate: the schedule is the same)."""
    from tests.conftest import ctrl_c_after_checkpoint

    def train(out, steps: int, resume: bool = False) -> dict:
        torch.manual_seed(0)
        model = create_model("resnet_xs", 2, 1)
        phase = Phase("fit", steps, Supervised(_blobs(), 8), lr=0.05, evaluate=False, ema=0.8, warmup=0, floor=1.0)
        Trainer(model, [phase], out, seed=0, progress=False, checkpoint_every=2).run(resume=resume)
        return model.state_dict()

    def same(a: dict, b: dict) -> bool:
        return all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)

    ctrl_c_after_checkpoint(monkeypatch, lambda phase, step: step == 4)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "short", 8)
    monkeypatch.undo()
    ck = torch.load(tmp_path / "short" / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 4 and ck["raw"] is None
    shorter = train(tmp_path / "short", 4, resume=True)
    assert same(shorter, {k.removeprefix("module."): v for k, v in ck["ema"].items() if k.startswith("module.")})
    assert not same(shorter, ck["model"])  # the average, not the weights trained
    assert same(shorter, train(tmp_path / "four", 4))

    train(tmp_path / "long", 4)
    assert torch.load(tmp_path / "long" / "checkpoint.pt", weights_only=True)["raw"] is not None
    assert same(train(tmp_path / "long", 8, resume=True), train(tmp_path / "eight", 8))
