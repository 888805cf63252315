"""``energyloss run jodo``: train the JODO-style model (:mod:`.jodo`), sample it and score the samples (Table 3).

The presets:

* ``smoke``: the four hand-built molecules, a tiny network, a few steps (seconds on a CPU);
* ``default``: QM9 with bonds, a small network, 2000 steps (a CPU check of the pipeline, not a result);
* ``paper``: the recipe of the authors' JODO configs (``authors-code.md`` §5.2), i.e. the JODO sizes (256 wide,
  8 blocks, 16 heads, dropout 0.1, cutoff 2 A), batch 192 (JODO's public config: 128), lr 2e-4 with a 100k-step
  warm-up, 1.5M steps, EMA 0.999, and 10,000 samples with 1000 ancestral steps scored against the QM9 test
  reference with FCD and the geometry MMD.

A run folder holds ``config.json``, ``checkpoint.pt`` (an interrupted run resumes from it), ``samples.npz`` (with
bond orders and formal charges) and ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import json

import torch

from ..losses import parse_loss_spec
from ..runs import log, open_run_folder, write_json
from .distributed import resolve_device

__all__ = ["CONFIG", "DESCRIPTION", "OPTION_HELP", "PRESETS", "JodoRunConfig", "run_config"]

DESCRIPTION = "JODO-style joint 2-D/3-D diffusion on QM9 with bonds (Table 3): kabsch_mse or the energy loss"


@dataclasses.dataclass(frozen=True)
class JodoRunConfig:
    """One JODO-style run (see :class:`.jodo.JodoConfig` and :class:`.jodo_train.JodoTrainConfig`)."""

    data: str = "qm9"
    loss: str = "kabsch_mse"
    k0: float | None = None
    steps: int = 2000
    batch_size: int = 32
    lr: float = 5e-4
    warmup: int = 0
    ema_decay: float = 0.999
    grad_clip: float = 10.0
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 50
    hidden: int = 64
    edge_hidden: int = 32
    layers: int = 3
    heads: int = 8
    local_heads: int = 2
    rbf: int = 16
    dropout: float = 0.0
    cutoff: float = 2.0
    eval_samples: int = 256
    eval_batch_size: int = 256
    sampling_steps: int = 200
    reference: str = "none"
    fcd: bool = False
    mmd: bool = False
    device: str = "auto"
    threads: int | None = None

    def validate(self) -> JodoRunConfig:
        if self.data not in ("qm9", "toy"):
            raise ValueError(f"data must be 'qm9' or 'toy'; got {self.data!r}")
        if self.reference not in ("none", "qm9-test"):
            raise ValueError(f"reference must be 'none' or 'qm9-test'; got {self.reference!r}")
        parse_loss_spec(self.loss)
        for name in ("steps", "batch_size", "eval_samples", "eval_batch_size", "sampling_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if (self.fcd or self.mmd) and self.reference == "none":
            raise ValueError("fcd and mmd need --reference qm9-test")
        self.model_config()  # checks the network sizes
        return self

    def model_config(self):
        from .jodo import JodoConfig

        sizes = ("hidden", "edge_hidden", "layers", "heads", "local_heads", "rbf", "dropout", "cutoff")
        return JodoConfig(**{k: getattr(self, k) for k in sizes})

    def train_config(self):
        from .jodo_train import JodoTrainConfig

        keys = ("steps", "batch_size", "lr", "warmup", "ema_decay", "grad_clip", "seed", "checkpoint_every")
        return JodoTrainConfig(
            **{k: getattr(self, k) for k in keys}, log_every=self.log_every, position_loss=self.loss, k0=self.k0
        )


CONFIG = JodoRunConfig

PRESETS: dict[str, JodoRunConfig] = {
    "smoke": JodoRunConfig(
        data="toy",
        steps=4,
        batch_size=4,
        checkpoint_every=0,
        log_every=2,
        hidden=32,
        edge_hidden=16,
        layers=1,
        heads=4,
        local_heads=1,
        rbf=8,
        eval_samples=4,
        sampling_steps=3,
        device="cpu",
        threads=1,
    ),
    "default": JodoRunConfig(),
    "paper": JodoRunConfig(
        steps=1_500_000,
        batch_size=192,
        lr=2e-4,
        warmup=100_000,
        checkpoint_every=50_000,
        log_every=500,
        hidden=256,
        edge_hidden=64,
        layers=8,
        heads=16,
        local_heads=2,
        rbf=32,
        dropout=0.1,
        eval_samples=10_000,
        eval_batch_size=2500,
        sampling_steps=1000,
        reference="qm9-test",
        fcd=True,
        mmd=True,
    ),
}

OPTION_HELP: dict[str, str] = {
    "data": "training molecules: qm9 (QM9 train with bonds) or toy (four hand-built molecules)",
    "loss": "position loss spec: kabsch_mse (JODO's noise-aligned MSE), mse, energy:exp, energy:inverse, ...",
    "k0": "energy coefficient scale (default JODO's: 24 exp, 3.7 inverse, 9 inverse_square)",
    "steps": "training steps",
    "batch_size": "molecules per step",
    "lr": "AdamW (amsgrad) learning rate",
    "warmup": "linear learning-rate warm-up steps (0: none)",
    "ema_decay": "EMA decay of the weights that are sampled",
    "grad_clip": "gradient-norm clip",
    "seed": "seed of the data order, the noise and the samples",
    "checkpoint_every": "steps between checkpoints (0: only at the end)",
    "log_every": "steps between logged losses",
    "hidden": "node width",
    "edge_hidden": "edge width",
    "layers": "transformer blocks",
    "heads": "attention heads",
    "local_heads": "heads restricted to pairs within the cutoff",
    "rbf": "Gaussian distance-encoding channels",
    "dropout": "dropout",
    "cutoff": "spatial adjacency cutoff (Angstrom)",
    "eval_samples": "molecules sampled for the metrics",
    "eval_batch_size": "molecules per sampling batch",
    "sampling_steps": "ancestral sampling steps",
    "reference": "reference for FCD / MMD: none or qm9-test",
    "fcd": "compute the FCD (needs fcd_torch)",
    "mmd": "compute the bond / angle / dihedral MMD",
    "device": "auto, cpu or cuda",
    "threads": "torch CPU threads (none: torch's default)",
}


def _fixed_settings() -> tuple[str, ...]:
    """The settings a run folder cannot change once it holds a run: those of the model and of training (the data
    and the loss included) except :data:`~.jodo_train.EXTENDABLE_SETTINGS`; evaluation settings may change freely
    (the samples are redrawn every time)."""
    from .jodo import JodoConfig
    from .jodo_train import EXTENDABLE_SETTINGS, JodoTrainConfig

    trained = {f.name for f in dataclasses.fields(JodoConfig)} | {f.name for f in dataclasses.fields(JodoTrainConfig)}
    trained |= {"data", "loss"}  # the run's names for the data set and JodoTrainConfig.position_loss
    return tuple(
        f.name for f in dataclasses.fields(JodoRunConfig) if f.name in trained and f.name not in EXTENDABLE_SETTINGS
    )


def run_config(cfg: JodoRunConfig, *, out: str | None, preset: str) -> int:
    """Train (or resume), sample and score one run into ``out``; prints one JSON line per logged step."""
    from .jodo_train import evaluate_jodo, load_jodo_data, train_jodo

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    folder = open_run_folder(out, f"jodo-{parse_loss_spec(cfg.loss).tag}", cfg, preset=preset, fixed=_fixed_settings())
    log(f"energyloss run jodo: {cfg.loss}, {cfg.steps} steps of batch {cfg.batch_size} on {cfg.data}; folder {folder}")
    data = load_jodo_data(cfg.data)
    model_cfg, train_cfg = cfg.model_config(), cfg.train_config()
    run = train_jodo(
        data,
        model_cfg=model_cfg,
        cfg=train_cfg,
        out=folder,
        device=device,
        callback=lambda step, r: print(json.dumps({k: round(v, 4) for k, v in r.items()}), flush=True),
    )
    from .metrics import rdkit_version

    score = rdkit_version() is not None
    reference = None
    if not score:
        log(
            f"RDKit is not installed: sampling only; score {folder / 'samples.npz'} where it is with "
            "`energyloss eval-molecules PATH --table3`"
        )
    elif cfg.reference == "qm9-test":
        from .table3_metrics import qm9_table3_reference

        reference = qm9_table3_reference(fcd=cfg.fcd)
    metrics = evaluate_jodo(
        run["ema"],
        run["histogram"],
        num_samples=cfg.eval_samples,
        batch_size=cfg.eval_batch_size,
        steps=cfg.sampling_steps,
        seed=cfg.seed,
        reference=reference,
        fcd=cfg.fcd,
        mmd=cfg.mmd,
        save_to=folder / "samples.npz",
        score=score,
    )
    metrics.update(
        step=run["step"], parameters=run["parameters"], seconds_per_step=run["seconds_per_step"], loss=cfg.loss
    )
    write_json(folder / "metrics.json", metrics)
    print(json.dumps({"run": str(folder), "3d": metrics["3d"], "2d": metrics["2d"]}, default=str))
    return 0
