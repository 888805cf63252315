"""Configuration of ``energyloss run qm9``: :class:`QM9Config`, its presets and its command-line metadata."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..losses import COEFFICIENT_LOSSES, POSITION_LOSSES, parse_loss_spec
from .registry import MODELS, get_model, resolve_hyperparameters

__all__ = ["PRESETS", "QM9_ELEMENTS", "RESUME_KEYS", "QM9Config"]

#: Atomic numbers of the one-hot columns (EDM's QM9 order).
QM9_ELEMENTS = (1, 6, 7, 8, 9)
#: Settings a checkpoint must share with the run that resumes it (epochs, max_steps, evaluation may change).
RESUME_KEYS = (
    "loss",
    "model",
    "data",
    "dataset_frac",
    "max_molecules",
    "hidden_nf",
    "n_layers",
    "diffusion_steps",
    "batch_size",
    "lr",
    "position_weight",
    "k0",
    "coefficient_distance",
    "optimizer",
    "precision",
    "seed",
)
#: ``precision`` values: ``bf16`` runs the denoiser under ``torch.autocast`` (bfloat16 matmuls); the loss, the
#: optimiser and the sampler's arithmetic stay float32.
PRECISIONS = ("fp32", "bf16")
DATA_SOURCES = ("qm9", "synthetic", "auto", "geom-drugs")
#: ``stability_table="auto"``: the protocol of each data source (:mod:`.geom_tables`).
DEFAULT_STABILITY_TABLES = {"qm9": "edm-v1", "synthetic": "edm-v1", "geom-drugs": "edm-geom-v1"}


@dataclasses.dataclass(frozen=True)
class QM9Config:
    """Everything one QM9 diffusion run depends on (``config.json`` of the run folder).

    ``max_molecules`` caps the training set (a seeded subset, after ``dataset_frac``).
    ``lr``/``position_weight`` ``None``: paper Tables 6-7. ``k0`` ``None``: the authors' coefficient scale (a
    spec's own ``:k0=`` wins). ``data="auto"``: QM9 when its cache exists, else synthetic molecules (the summary
    says which); ``data="geom-drugs"`` streams EDM's ``geom_drugs_30.npy`` at ``geom_path`` (``None``:
    ``$ENERGYLOSS_CACHE/geom/geom_drugs_30.npy``, else ``~/.cache/energyloss/geom/...``) with the stored
    ``geom_permutation.npy`` split next to it. ``stability_table`` names the evaluation protocol
    (:data:`~.geom_tables.STABILITY_TABLES`; ``"auto"``: ``edm-geom-v1`` on GEOM, ``edm-v1`` otherwise).
    ``epochs`` may be fractional; ``max_steps`` caps the optimiser steps (a stop, resumable);
    ``train_minutes`` stops the *first* loss of a sweep after that much training time and gives every later loss
    the same number of steps (compute matching on a machine of unknown speed); ``eval_every`` is in epochs
    (fractional allowed). ``sampling_steps`` ``None`` samples with all ``diffusion_steps``. ``ema_warmup`` uses the
    decay ``min(ema_decay, (1 + step) / (10 + step))`` so that short runs are not evaluated on weights that are
    still mostly the random initialisation (EDM has no warm-up: the ``paper`` preset turns it off). ``jobs > 1``
    trains the losses of a sweep in parallel processes (``threads`` torch threads each; not with
    ``train_minutes`` or torchrun).
    """

    model: str = "gdm-aug"
    losses: tuple[str, ...] = ("energy:exp",)
    data: str = "qm9"
    dataset_frac: float = 1.0
    max_molecules: int | None = None
    cache_dir: str | None = None
    geom_path: str | None = None
    hidden_nf: int = 256
    n_layers: int = 9
    diffusion_steps: int = 1000
    batch_size: int = 512
    epochs: float = 3000.0
    max_steps: int | None = None
    train_minutes: float | None = None
    lr: float | None = None
    position_weight: float | None = None
    k0: float | None = None
    coefficient_distance: str = "positions"
    optimizer: str = "adam"
    precision: str = "fp32"
    grad_clip: str = "queue"
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    eval_every: float = 20.0
    n_eval_samples: int = 1000
    n_final_samples: int | None = None
    eval_batch_size: int = 500
    sampling_steps: int | None = None
    novelty: bool = True
    stability_table: str = "auto"
    checkpoint_every: int = 500
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    jobs: int = 1

    def validate(self) -> QM9Config:
        """Raise ``ValueError`` naming the first bad option; return ``self`` with canonical loss specs."""
        get_model(self.model)
        if not self.losses:
            raise ValueError("losses: give at least one loss")
        losses = tuple(str(parse_loss_spec(s)) for s in self.losses)
        if len(set(losses)) != len(losses):
            raise ValueError(f"losses: a loss is given twice in {', '.join(losses)}")
        if self.data not in DATA_SOURCES:
            raise ValueError(f"data must be one of {', '.join(DATA_SOURCES)}, got {self.data!r}")
        if self.stability_table != "auto":
            from .geom_tables import get_stability_table

            get_stability_table(self.stability_table)
        if not 0 < self.dataset_frac <= 1:
            raise ValueError(f"dataset_frac must lie in (0, 1], got {self.dataset_frac}")
        for name in (
            "hidden_nf",
            "n_layers",
            "diffusion_steps",
            "batch_size",
            "n_eval_samples",
            "eval_batch_size",
            "checkpoint_every",
            "jobs",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("epochs", "eval_every"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("max_steps", "n_final_samples", "threads", "max_molecules"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (or none), got {getattr(self, name)}")
        for name in ("train_minutes", "lr", "position_weight", "k0"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 (or none), got {getattr(self, name)}")
        if self.sampling_steps is not None and not 1 <= self.sampling_steps <= self.diffusion_steps:
            raise ValueError(f"sampling_steps must lie in [1, diffusion_steps={self.diffusion_steps}]")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.coefficient_distance not in ("positions", "features"):
            raise ValueError(
                f"coefficient_distance must be 'positions' or 'features', got {self.coefficient_distance!r}"
            )
        if self.coefficient_distance == "features" and any(not s.startswith("energy:") for s in losses):
            raise ValueError("coefficient_distance 'features' works with dense energy losses only")
        if self.grad_clip not in ("queue", "none"):
            try:
                if not float(self.grad_clip) > 0:
                    raise ValueError
            except ValueError:
                raise ValueError(
                    f"grad_clip must be 'queue', 'none' or a positive norm, got {self.grad_clip!r}"
                ) from None
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        if self.jobs > 1 and self.train_minutes is not None:
            raise ValueError("jobs > 1 cannot be combined with train_minutes (compute matching is sequential)")
        for spec in losses:
            resolve_hyperparameters(self.model, spec, lr=self.lr, position_weight=self.position_weight)
        return dataclasses.replace(self, losses=losses)


def _preset(**changes: Any) -> QM9Config:
    return dataclasses.replace(QM9Config(), **changes)


#: ``smoke``: about two minutes on a CPU: a small real QM9 subset (3,000 molecules of the training split, 186 steps)
#: when the QM9 cache exists, else synthetic molecules (the summary says which). ``default``: the CPU preset, sized
#: for a compute-matched MSE vs energy comparison of GDM-aug in about an hour on 2 cores (one thread per run); both
#: losses at lr 1e-3 (Table 6's MSE value: Table 6's energy value, 4e-4, tuned for batch 512 and 3000 epochs, left
#: the energy run behind MSE from epoch 2.5 on at this scale; docs/results/qm9.md §1). ``paper``: App. C.2.1 (9
#: layers, 256 features, 1000 steps, 3000 epochs, EMA 0.9999, the registry's paper batch size: 512 for GDM and 400
#: for EDM) with EDM's evaluation (500 samples every 10 epochs, 10,000 at the end). ``paper-geom``: App. C.2.2 on
#: GEOM-Drugs (``data=geom-drugs``): GDM-aug (Table 1), 4 layers, 256 features, batch 128 (global, over all
#: torchrun ranks: the paper used 4 GPUs), 13 epochs, Adam, Table 6's learning rates and weights, exponential
#: coefficients for the dense energy and inverse-distance ones for the sparse energy (Table 12); what the paper
#: leaves open follows EDM's GEOM command (README: 1000 steps, EMA 0.9999, 500 samples per epoch) and its
#: ``eval_analyze.py`` (10,000 samples at the end).
PRESETS: dict[str, QM9Config] = {
    "smoke": _preset(
        data="auto",
        max_molecules=3000,
        hidden_nf=32,
        n_layers=2,
        diffusion_steps=200,
        batch_size=32,
        epochs=2.0,
        max_steps=300,
        lr=1e-3,
        ema_decay=0.99,
        eval_every=1.0,
        n_eval_samples=64,
        eval_batch_size=64,
        sampling_steps=50,
        novelty=False,
        checkpoint_every=100,
        threads=2,
        losses=("mse", "energy:exp"),
    ),
    "default": _preset(
        data="qm9",
        dataset_frac=1.0,
        hidden_nf=64,
        n_layers=4,
        diffusion_steps=1000,
        batch_size=64,
        epochs=8.0,
        lr=1e-3,
        ema_decay=0.999,
        eval_every=1.0,
        n_eval_samples=200,
        n_final_samples=500,
        eval_batch_size=100,
        sampling_steps=100,
        novelty=False,
        checkpoint_every=200,
        threads=1,
        jobs=2,
        losses=("mse", "energy:exp"),
    ),
    "paper": _preset(
        data="qm9",
        hidden_nf=256,
        n_layers=9,
        diffusion_steps=1000,
        batch_size=512,
        epochs=3000.0,
        ema_decay=0.9999,
        ema_warmup=False,
        eval_every=10.0,
        n_eval_samples=500,
        n_final_samples=10000,
        eval_batch_size=500,
        sampling_steps=None,
        novelty=True,
        checkpoint_every=1000,
        losses=("mse", "kabsch_mse", "energy:exp", "sparse_energy:exp"),
    ),
    "paper-geom": _preset(
        data="geom-drugs",
        model="gdm-aug",
        hidden_nf=256,
        n_layers=4,
        diffusion_steps=1000,
        batch_size=128,
        epochs=13.0,
        ema_decay=0.9999,
        ema_warmup=False,
        eval_every=1.0,
        n_eval_samples=500,
        n_final_samples=10000,
        eval_batch_size=250,
        sampling_steps=None,
        novelty=False,
        checkpoint_every=2000,
        losses=("mse", "energy:exp", "sparse_energy:inverse"),
    ),
}

#: Help of the generated command-line options (:mod:`energyloss.experiments.options`).
OPTION_HELP: dict[str, str] = {
    "model": "denoiser: " + ", ".join(f"{m.name} ({m.description})" for m in MODELS.values()),
    "losses": "positional losses, compute-matched sweep: "
    + ", ".join(POSITION_LOSSES)
    + " (energy losses as NAME:SCHEME[:k0=X], sparse_energy also :k=K,symmetrize)",
    "data": "qm9, synthetic, auto (qm9 when its cache exists) or geom-drugs (EDM's geom_drugs_30.npy, streamed)",
    "dataset_frac": "fraction of the training set (Fig. 4)",
    "max_molecules": "at most this many training molecules, a seeded subset (none: all)",
    "cache_dir": "QM9 cache folder (none: $ENERGYLOSS_CACHE or ~/.cache/energyloss)",
    "geom_path": "geom-drugs: EDM's geom_drugs_30.npy, with geom_permutation.npy next to it "
    "(none: $ENERGYLOSS_CACHE/geom/geom_drugs_30.npy)",
    "hidden_nf": "hidden features",
    "n_layers": "layers of the denoiser",
    "diffusion_steps": "diffusion steps T",
    "batch_size": "molecules per optimiser step (global, over all ranks)",
    "epochs": "training epochs (fractional allowed)",
    "max_steps": "stop after this many optimiser steps (none: no cap)",
    "train_minutes": "time budget of the first loss; the others get its steps (none: no budget)",
    "lr": "learning rate (none: paper Tables 6-7)",
    "position_weight": "weight of the positional loss (none: paper Tables 6-7)",
    "k0": "coefficient scale (none: the authors' constants)",
    "coefficient_distance": "distance inside k_ij: target positions (paper) or positions + scaled atom features "
    "(authors' EDM fork)",
    "optimizer": "adam or adamw (the authors' fork: amsgrad, weight decay 1e-12)",
    "precision": "fp32, or bf16: the denoiser under autocast (GPU throughput; loss and optimiser stay fp32)",
    "grad_clip": "'queue' (EDM's adaptive), 'none', or a max norm",
    "ema_decay": "EMA decay of the evaluated weights",
    "ema_warmup": "EMA warm-up min(decay, (1+step)/(10+step))",
    "eval_every": "epochs between evaluations",
    "n_eval_samples": "molecules sampled per evaluation",
    "n_final_samples": "molecules of the last evaluation (none: n_eval_samples)",
    "eval_batch_size": "molecules per sampling batch",
    "sampling_steps": "strided ancestral sampling steps (none: all diffusion steps)",
    "novelty": "novelty against the training set (needs RDKit; not computed on GEOM-Drugs, as in EDM)",
    "stability_table": "evaluation protocol: auto (edm-geom-v1 on GEOM, else edm-v1), edm-v1, edm-geom-v1 or "
    "geom-revisited-v1",
    "checkpoint_every": "steps between checkpoints",
    "seed": "seed of the initial weights, data order and noise",
    "device": "auto, cpu, cuda or cuda:N",
    "threads": "torch threads per process (none: torch's default)",
    "jobs": "train the losses of a sweep in parallel processes",
}
OPTION_FLAGS = {"n_layers": "--layers", "hidden_nf": "--nf"}
OPTION_CHOICES = {
    "model": tuple(MODELS),
    "data": DATA_SOURCES,
    "optimizer": ("adam", "adamw"),
    "precision": PRECISIONS,
    "coefficient_distance": ("positions", "features"),
    "stability_table": ("auto", "edm-v1", "edm-geom-v1", "geom-revisited-v1"),
}


def add_extra_arguments(group) -> None:
    """``--loss`` / ``--coefficients``: the one-loss short form of ``--losses``."""
    group.add_argument("--loss", default=None, metavar="SPEC", help="one positional loss (instead of --losses)")
    group.add_argument(
        "--coefficients",
        default=None,
        metavar="SCHEME",
        help="coefficient scheme of the energy losses given without one (e.g. --loss energy --coefficients inverse)",
    )


def extra_overrides(args, cfg: QM9Config) -> dict[str, Any]:
    """Resolve ``--loss`` / ``--coefficients`` and the paper batch size of the model (``--preset paper``)."""
    changes: dict[str, Any] = {}
    given = vars(args)
    if args.loss is not None and "losses" in given:
        raise ValueError("give --loss or --losses, not both")
    raw = [args.loss] if args.loss is not None else list(cfg.losses)
    if args.coefficients is not None:
        bare = [s.split(":")[0].strip().replace("-", "_") in COEFFICIENT_LOSSES and ":" not in s for s in raw]
        if not any(bare):
            raise ValueError(
                "--coefficients sets the scheme of energy losses given without one (--loss energy); "
                f"the losses are {', '.join(raw)}"
            )
        raw = [f"{s}:{args.coefficients}" if b else s for s, b in zip(raw, bare, strict=True)]
    if args.loss is not None or args.coefficients is not None:
        changes["losses"] = tuple(raw)
    if getattr(args, "preset", None) == "paper" and cfg.data == "geom-drugs":
        raise ValueError("--preset paper is the QM9 setting (App. C.2.1); GEOM-Drugs has --preset paper-geom")
    if getattr(args, "preset", None) == "paper" and "batch_size" not in given:
        changes["batch_size"] = get_model(cfg.model).paper_batch_size
    return changes
