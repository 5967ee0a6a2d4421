"""The training harness: the EMA's decay in closed form, the lr schedule, and a resumed run equal to an uninterrupted one."""

from __future__ import annotations

import json
import math
from pathlib import Path

import attrs
import pytest
import torch

from cryoinverse.errors import DataError, SpecError
from cryoinverse.optim import EMA_WARMUP, TrainingRun, load_checkpoint, lr_at, optimiser_step


@attrs.frozen
class _Config:
    out: Path
    arch: str = "line"
    steps: int = 8
    lr: float = 0.05
    warmup: int = 2
    schedule: str = "cosine"
    weight_decay: float = 0.01
    ema_decay: float = 0.9
    grad_clip: float = 1.0
    checkpoint_every: int = 3
    log_every: int = 2


def test_ema_moves_by_the_warmed_up_decay():
    """With the weights held (lr 0) at 1 and the EMA at 0: e <- e + (1 - d)(1 - e), d = min(ema_decay, (1 + s) / (10 + s))."""
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.ones_(model.weight)
    ema = torch.nn.Linear(1, 1, bias=False).requires_grad_(False)
    torch.nn.init.zeros_(ema.weight)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.0)
    e = 0.0
    for step, ema_decay in [(0, 0.999), (5, 0.999), (40, 0.5), (10_000, 0.999)]:
        optimiser_step(model.weight.sum(), model, ema, optimiser, step, grad_clip=1.0, ema_decay=ema_decay)
        d = min(ema_decay, (1 + step) / (EMA_WARMUP + step))
        e = e + (1 - d) * (1 - e)
        assert float(ema.weight) == pytest.approx(e, rel=1e-6)
    assert [min(0.999, (1 + s) / (EMA_WARMUP + s)) for s in (0, 5)] == pytest.approx([0.1, 0.4])


def test_lr_warms_up_linearly_then_decays_to_a_tenth(tmp_path):
    cfg = _Config(out=tmp_path, steps=11, lr=2.0, warmup=4)
    assert [lr_at(s, cfg) for s in range(4)] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert lr_at(10, cfg) == pytest.approx(0.2)  # the last step: 10% of the peak
    assert lr_at(7, cfg) == pytest.approx(2.0 * (0.1 + 0.45 * (1 + math.cos(math.pi * 3 / 6))))
    assert lr_at(10, attrs.evolve(cfg, schedule="constant")) == 2.0


def _run(cfg: _Config, until: int | None = None, messages: list | None = None) -> TrainingRun:
    """Fit w x = 3 x with x drawn from the run's generator: a run whose every step depends on the generator and the optimiser state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
    generator = torch.Generator().manual_seed(5)
    run = TrainingRun.start(cfg, model, {"generator": generator}, torch.device("cpu"), must_match=("arch",),
                            echo=(messages if messages is not None else []).append)

    def step_loss(step: int):
        x = torch.randn(16, 4, generator=generator)
        loss = (model(x) - 3 * x.sum(dim=1, keepdim=True)).square().mean()
        return loss, lambda: {"batch_mean": float(x.mean())}

    run.train(step_loss, until=until)
    return run


def test_a_resumed_run_is_the_uninterrupted_run(tmp_path):
    whole = _run(_Config(out=tmp_path / "whole"))
    _run(_Config(out=tmp_path / "split"), until=4)  # stops between checkpoints (every 3): checkpoints at 4
    messages = []
    split = _run(_Config(out=tmp_path / "split"), messages=messages)
    assert messages == [f"resumed from {tmp_path / 'split' / 'checkpoint.pt'} at step 4"]
    assert whole.step == split.step == 8 and split.finished
    for a, b in [(whole.model, split.model), (whole.ema, split.ema)]:
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.equal(p, q)
    state = load_checkpoint(tmp_path / "split" / "checkpoint.pt", "cpu")
    assert list(state) == ["model", "ema", "optimiser", "generator", "step", "config"]
    assert state["step"] == 8 and state["config"]["out"] == str(tmp_path / "split")
    lines = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in lines] == [2, 4, 6, 8]
    assert list(lines[0]) == ["step", "loss", "batch_mean", "lr", "elapsed_s"]
    assert [e["lr"] for e in lines] == pytest.approx([lr_at(s - 1, whole.config) for s in (2, 4, 6, 8)])
    assert lines[-1]["lr"] == pytest.approx(0.005)  # the cosine's end: 10% of lr 0.05


def test_a_checkpoint_of_another_config_or_with_objects_is_refused(tmp_path):
    _run(_Config(out=tmp_path / "a"), until=1)
    with pytest.raises(SpecError, match=r"was trained with arch 'line', not arch 'other'; use another --out"):
        _run(_Config(out=tmp_path / "a", arch="other"))
    (tmp_path / "b").mkdir()
    torch.save({"step": 1, "config": _Config}, tmp_path / "b" / "checkpoint.pt")  # pickles a class: it could run code
    with pytest.raises(DataError, match="could run code"):
        _run(_Config(out=tmp_path / "b"))
