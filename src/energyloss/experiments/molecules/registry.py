"""The model registry of the molecule experiments: one entry per denoiser, with its paper hyper-parameters.

An entry names the dynamics network (:func:`.models.build_dynamics`), whether training rotates every molecule at
random (GDM-aug), the paper's ``(learning rate, positional weight)`` table per loss (Tables 6 and 7) and the
paper's batch size (App. C.2.1). Paper values fill only what the user did not give; an unknown model name or a
loss the table lacks (with no ``--lr`` / ``--position-weight`` given) is an error at parse time.

Adding a model is one :class:`ModelEntry` in :data:`MODELS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from ..losses import LossSpec, parse_loss_spec

__all__ = ["MODELS", "PAPER_HYPERPARAMETERS", "ModelEntry", "get_model", "paper_hyperparameters"]

#: Paper Tables 6 (GDM) and 7 (EDM): ``(learning rate, positional loss weight)`` per loss (and coefficient).
#: The sparse energy is not in the tables and takes the values of the dense energy with the same coefficients.
PAPER_HYPERPARAMETERS: dict[str, dict[str, tuple[float, float]]] = {
    "gnn": {
        "energy:constant": (9e-4, 0.05),
        "energy:inverse": (7e-4, 0.05),
        "energy:inverse_square": (6e-4, 0.05),
        "energy:exp": (4e-4, 0.05),
        "mse": (1e-3, 1.5),
        "mae": (1e-3, 0.8),
        "kabsch_mse": (8e-4, 0.8),
    },
    "egnn": {
        "energy:constant": (1e-4, 0.05),
        "energy:inverse": (1e-4, 0.05),
        "energy:inverse_square": (1e-4, 0.1),
        "energy:exp": (1e-4, 0.05),
        "mse": (3e-4, 1.0),
        "mae": (3e-4, 1.0),
        "kabsch_mse": (3e-4, 0.8),
    },
}


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One denoiser of the registry.

    Attributes:
        name: the ``--model`` value.
        dynamics: the network, a name for :func:`.models.build_dynamics` (``"gnn"`` or ``"egnn"``).
        augment: rotate every training molecule by a Haar-random rotation (GDM-aug).
        table: key of :data:`PAPER_HYPERPARAMETERS`.
        paper_batch_size: the paper's batch size (App. C.2.1).
        description: one line for the help.
    """

    name: str
    dynamics: str
    augment: bool
    table: str
    paper_batch_size: int
    description: str


MODELS: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in (
        ModelEntry("gdm", "gnn", False, "gnn", 512, "GDM: a message-passing GNN, not equivariant (paper Table 2)"),
        ModelEntry("gdm-aug", "gnn", True, "gnn", 512, "GDM with random-rotation augmentation (paper Table 2)"),
        ModelEntry("egnn", "egnn", False, "egnn", 400, "EDM: the E(3)-equivariant EGNN (paper Table 8)"),
    )
}


def get_model(name: str) -> ModelEntry:
    """The registry entry of ``name``; ``ValueError`` lists the known models.

    Example:
        >>> get_model("gdm-aug").augment, get_model("egnn").paper_batch_size
        (True, 400)
    """
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}") from None


def _table_key(spec: LossSpec) -> str:
    return f"energy:{spec.coefficients}" if spec.coefficients is not None else spec.name


def paper_hyperparameters(model: str, loss: str | LossSpec) -> tuple[float, float] | None:
    """``(learning rate, positional weight)`` of paper Tables 6-7 for a model and loss spec; ``None`` if absent.

    Example:
        >>> paper_hyperparameters("gdm-aug", "energy:exp"), paper_hyperparameters("egnn", "sparse_energy:exp")
        ((0.0004, 0.05), (0.0001, 0.05))
        >>> paper_hyperparameters("gdm", "mse")
        (0.001, 1.5)
    """
    table: Mapping[str, tuple[float, float]] = PAPER_HYPERPARAMETERS[get_model(model).table]
    return table.get(_table_key(parse_loss_spec(loss)))


def resolve_hyperparameters(
    model: str, loss: str | LossSpec, *, lr: float | None, position_weight: float | None
) -> tuple[float, float]:
    """The given ``lr`` / ``position_weight``, with the paper's values for those not given.

    Raises ``ValueError`` naming the missing options when the paper has no value for this loss.

    Example:
        >>> resolve_hyperparameters("gdm-aug", "energy:exp", lr=1e-3, position_weight=None)
        (0.001, 0.05)
    """
    if lr is not None and position_weight is not None:
        return float(lr), float(position_weight)
    paper = paper_hyperparameters(model, loss)
    if paper is None:
        missing = [flag for flag, v in (("--lr", lr), ("--position-weight", position_weight)) if v is None]
        table = PAPER_HYPERPARAMETERS[get_model(model).table]
        raise ValueError(
            f"the paper gives no hyper-parameters for {parse_loss_spec(loss)} on {model} (it has {', '.join(table)});"
            f" give {' and '.join(missing)}"
        )
    return (
        float(lr) if lr is not None else paper[0],
        float(position_weight) if position_weight is not None else paper[1],
    )
