"""Training, checkpointing and evaluating the JODO-style model on a tiny hand-built bonded set."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from energyloss.experiments.molecules.data import load_molecules
from energyloss.experiments.molecules.jodo import JodoConfig, toy_bonded_set
from energyloss.experiments.molecules.jodo_train import (
    JodoData,
    JodoTrainConfig,
    _build,
    evaluate_jodo,
    load_jodo,
    train_jodo,
)

TINY = JodoConfig(hidden=32, edge_hidden=16, layers=2, heads=4, local_heads=1, rbf=8, dropout=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")


def _data(repeat: int = 4) -> JodoData:
    return JodoData.from_molecules(*toy_bonded_set(repeat))


def test_data_from_molecules():
    data = _data(2)
    assert len(data) == 8 and data.histogram() == {3: 2, 5: 2, 9: 2, 12: 2}
    b = data.batch(torch.tensor([0, 1]))
    assert b["positions"].shape == (2, 5, 3) and b["bonds"].shape == (2, 5, 5)
    assert b["bonds"][0, 0, 1] == 1 and b["bonds"][0, 1, 0] == 1 and int(data.bonds[3].max()) == 2


def test_train_resume_and_evaluate(tmp_path):
    data = _data()
    tiny = dataclasses.replace(TINY, dropout=0.1)  # resuming replays the dropout masks too
    cfg = JodoTrainConfig(steps=6, batch_size=4, lr=1e-3, checkpoint_every=3, log_every=2, ema_decay=0.9)
    run = train_jodo(data, model_cfg=tiny, cfg=cfg, out=tmp_path)
    assert run["step"] == 6 and (tmp_path / "checkpoint.pt").exists()
    assert [r["step"] for r in run["history"]] == [2, 4, 6]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in run["history"])
    # the EMA moved away from the initial weights but is not the model
    diff = [
        float((a - b).detach().abs().max())
        for a, b in zip(run["ema"].parameters(), run["model"].parameters(), strict=True)
    ]
    assert max(diff) > 0
    # resuming continues from step 6 and replays the same stream as a straight run
    longer = dataclasses.replace(cfg, steps=8)
    resumed = train_jodo(data, model_cfg=tiny, cfg=longer, out=tmp_path)
    straight = train_jodo(data, model_cfg=tiny, cfg=longer, out=tmp_path / "straight")
    assert resumed["step"] == 8
    for a, b in zip(resumed["model"].parameters(), straight["model"].parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.001 -> 0.0005\)"):
        train_jodo(data, model_cfg=tiny, cfg=dataclasses.replace(longer, lr=5e-4), out=tmp_path)
    # the EMA model back from the checkpoint, sampled and scored with the Table 3 metrics
    model, hist = load_jodo(tmp_path)
    assert hist == data.histogram()
    for a, b in zip(model.parameters(), resumed["ema"].parameters(), strict=True):
        assert torch.equal(a, b)
    result = evaluate_jodo(model, hist, num_samples=6, batch_size=4, steps=4, save_to=tmp_path / "s.npz")
    assert result["num_samples"] == 6 and "3d" in result and "2d" in result
    assert result["2d"]["bonds_source"] == "given" and result["2d"]["n_molecules"] == 6
    assert 0.0 <= result["2d"]["validity"] <= 1.0 and 0.0 <= result["3d"]["atom_stability"] <= 1.0
    saved = load_molecules(tmp_path / "s.npz")
    assert len(saved) == 6


def test_training_reduces_the_loss_on_one_batch():
    """A hundred steps on four molecules lower every term of the loss at fixed times and noise."""
    data = _data(1)
    batch = data.batch(torch.arange(4))
    cfg = JodoTrainConfig(steps=100, batch_size=4, lr=2e-3, checkpoint_every=0, log_every=100, ema_decay=0.0)

    def fixed_loss(model):
        model.eval()
        t = torch.tensor([0.2, 0.4, 0.6, 0.8])
        with torch.no_grad():
            out = model.loss(**batch, t=t, self_condition=False, generator=torch.Generator().manual_seed(0))
        return {k: float(out[k].mean()) for k in ("loss", "positions", "types", "bonds")}

    torch.manual_seed(cfg.seed)
    before = fixed_loss(_build(TINY, cfg))  # the same initial weights as train_jodo's
    run = train_jodo(data, model_cfg=TINY, cfg=cfg)
    after = fixed_loss(run["model"])
    assert after["loss"] < 0.8 * before["loss"]
    assert after["types"] < 0.2 * before["types"] and after["bonds"] < 0.6 * before["bonds"]
    assert after["positions"] < 0.95 * before["positions"]


def test_energyloss_run_jodo_smoke(tmp_path, capsys):
    from energyloss.cli import main

    run = tmp_path / "run"
    assert main(["run", "jodo", "--preset", "smoke", "--out", str(run), "--loss", "energy:inverse"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["step"] == 4 and metrics["loss"] == "energy:inverse" and metrics["2d"]["n_molecules"] == 4
    config = json.loads((run / "config.json").read_text())
    assert config["preset"] == "smoke" and config["config"]["loss"] == "energy:inverse"
    assert (run / "checkpoint.pt").exists() and len(load_molecules(run / "samples.npz")) == 4
    model, _ = load_jodo(run)
    assert model.position_spec.coefficients == "inverse" and len(model.net.blocks) == 1
    assert '"step": 4' in capsys.readouterr().out
    # a second call resumes at the last step (nothing left to train) and scores again
    assert main(["run", "jodo", "--preset", "smoke", "--out", str(run), "--loss", "energy:inverse"]) == 0
    assert config["fingerprint"] and "machine" in config
    # the folder refuses a run with another model, naming the setting, before it trains anything
    assert main(["run", "jodo", "--preset", "smoke", "--out", str(run), "--loss", "energy:exp"]) == 1
    assert "loss: 'energy:inverse' -> 'energy:exp'" in capsys.readouterr().err


def test_jodo_run_options_are_validated(capsys):
    from energyloss.cli import main

    with pytest.raises(SystemExit) as err:
        main(["run", "jodo", "--preset", "smoke", "--fcd"])
    assert err.value.code == 2 and "reference" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(["run", "jodo", "--preset", "smoke", "--heads", "5"])
    assert err.value.code == 2


def test_jodo_run_without_rdkit_samples_and_says_how_to_score(tmp_path, monkeypatch, capsys):
    from energyloss.cli import main
    from energyloss.experiments.molecules import metrics

    monkeypatch.setattr(metrics, "rdkit_version", lambda: None)
    run = tmp_path / "run"
    assert main(["run", "jodo", "--preset", "smoke", "--out", str(run)]) == 0
    assert "eval-molecules PATH --table3" in capsys.readouterr().err
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["3d"] is None and saved["2d"] is None and saved["num_samples"] == 4
    assert len(load_molecules(run / "samples.npz")) == 4
