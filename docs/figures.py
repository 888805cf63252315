"""Figures of the documentation site, computed with the library itself: ``python docs/figures.py``.

Writes PNGs to docs/figures/ (committed; the docs build does not run this script). Needs matplotlib
(``pip install -e ".[plots]"``). Deterministic: rerunning gives the same pictures.

- ``landscape.png``: paper Fig. 2, two particles on a line: the MSE and the pair energy as functions of the
  prediction, with their negative gradients;
- ``coefficients.png``: the spring schemes k(d), and the curvature springs of a Morse and a Lennard-Jones pair
  potential;
- ``sparse_graph.png``: the complete graph of a point cloud and a globally rigid random 4-regular graph of it;
- ``schedule.png``: EDM's polynomial noise schedule and the SNR weight of Eq. 3 / 11.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import matplotlib.pyplot as plt
import torch

import energyloss as el
from energyloss.diffusion import NoiseSchedule

OUT = Path(__file__).resolve().parent / "figures"
DPI = 110


def landscape() -> None:
    target = torch.tensor([[-1.0], [1.0]], dtype=torch.float64)  # y_0 = -1, y_1 = +1 on a line
    pred0 = torch.tensor([0.55, -1.35], dtype=torch.float64)  # y_hat_0 near y_1, y_hat_1 near y_0
    grid = torch.linspace(-2.5, 2.5, 201, dtype=torch.float64)
    g0, g1 = torch.meshgrid(grid, grid, indexing="xy")
    preds = torch.stack([g0, g1], -1).reshape(-1, 2, 1)
    targets = target.expand(len(preds), 2, 1)
    losses = {
        "(a) MSE": lambda p, t: el.mse_loss(p, t, reduction="none"),
        "(b) pair energy (Eq. 7)": lambda p, t: el.pair_energy_loss(p, t, reduction="none"),
    }
    fig, axes = plt.subplots(1, 2, figsize=(9.2, 4.3), constrained_layout=True)
    for ax, (title, fn) in zip(axes, losses.items(), strict=True):
        values = fn(preds, targets).reshape(g0.shape)
        ax.contourf(g0, g1, values, levels=24, cmap="viridis")
        ax.contour(g0, g1, values, levels=24, colors="white", linewidths=0.3, alpha=0.5)
        coarse = torch.linspace(-2.25, 2.25, 13, dtype=torch.float64)
        c0, c1 = torch.meshgrid(coarse, coarse, indexing="xy")
        p = torch.stack([c0, c1], -1).reshape(-1, 2, 1).requires_grad_()
        fn(p, target.expand(len(p), 2, 1)).sum().backward()
        step = -p.grad.reshape(-1, 2)
        step = step / step.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        ax.quiver(c0, c1, step[:, 0].reshape(c0.shape), step[:, 1].reshape(c0.shape), color="white", alpha=0.6)
        ax.plot(*target[:, 0], "*", color="tab:green", ms=16, label="data $(y_0, y_1)$")
        ax.plot(*target[:, 0].flip(0), "*", color="tab:green", ms=16, mfc="none", label="swapped $(y_1, y_0)$")
        ax.plot(*pred0, "o", color="tab:red", ms=8, label=r"prediction $(\hat y_0, \hat y_1)$")
        if "energy" in title:
            line = torch.tensor([-2.5, 2.5])
            for offset in (2.0, -2.0):  # the minimisers: y_hat_1 - y_hat_0 = +-(y_1 - y_0)
                ax.plot(line, line + offset, "--", color="tab:green", lw=1.2)
        ax.set(title=title, xlabel=r"$\hat y_0$", ylabel=r"$\hat y_1$", xlim=(-2.5, 2.5), ylim=(-2.5, 2.5))
        ax.set_aspect("equal")
    axes[0].legend(loc="lower left", fontsize=8, framealpha=0.85)
    fig.savefig(OUT / "landscape.png", dpi=DPI)
    plt.close(fig)


def coefficients() -> None:
    d = torch.linspace(0.5, 4.0, 200, dtype=torch.float64)
    schemes = {
        "constant: $k_0$": el.ConstantCoefficients(),
        "inverse: $k_0 / d$": el.InverseCoefficients(),
        "inverse square: $k_0 / d^2$": el.InverseSquareCoefficients(),
        r"exp: $k_0 e^{-d/\ell}$": el.ExponentialCoefficients(),
        "Morse curvature $V''(d)$": el.PotentialCoefficients(el.morse),
        "Lennard-Jones curvature $V''(d)$": el.PotentialCoefficients(partial(el.lennard_jones, epsilon=1.0)),
    }
    fig, ax = plt.subplots(figsize=(6.4, 4.0), constrained_layout=True)
    for label, k in schemes.items():
        ax.plot(
            d, k(d), label=label, lw=2 if "curvature" not in label else 1.3, ls="-" if "curv" not in label else "--"
        )
    ax.set(yscale="log", xlabel="target distance $d$", ylabel="spring constant $k(d)$", ylim=(1e-2, 3e2))
    ax.set_title("Coefficient schemes (default arguments: $k_0 = 1$, $\\ell = 1$)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.savefig(OUT / "coefficients.png", dpi=DPI)
    plt.close(fig)


def sparse_graph() -> None:
    gen = torch.Generator().manual_seed(3)
    n = 14
    x = torch.randn(n, 2, generator=gen)
    pool = el.RigidGraphPool(2, size=1, seed=0)
    panels = {
        f"complete graph: {n * (n - 1) // 2} pairs, $O(N^2)$": el.rigidity.complete_graph(n),
        f"random 4-regular, globally rigid: {2 * n} pairs, $O(kN)$": pool.sample(n),
    }
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 4.2), constrained_layout=True)
    for ax, (title, edges) in zip(axes, panels.items(), strict=True):
        for i, j in edges.T.tolist():
            ax.plot(*x[[i, j]].T, color="tab:blue", lw=0.8, alpha=0.7)
        ax.plot(*x.T, "o", color="tab:orange", ms=7, zorder=3)
        ax.set_title(title, fontsize=10)
        ax.set_aspect("equal")
        ax.axis("off")
    fig.savefig(OUT / "sparse_graph.png", dpi=DPI)
    plt.close(fig)


def schedule() -> None:
    sched = NoiseSchedule.polynomial(1000)
    t = torch.arange(0, 1001)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9.0, 3.6), constrained_layout=True)
    ax0.plot(t, sched.alpha(t) ** 2, label=r"$\alpha_t^2$")
    ax0.plot(t, sched.sigma(t) ** 2, label=r"$\sigma_t^2 = 1 - \alpha_t^2$")
    ax0.set(xlabel="diffusion step $t$", title="EDM polynomial schedule (T = 1000)")
    ax0.legend()
    ax1.plot(t[1:], sched.snr(t[1:]))
    ax1.set(yscale="log", xlabel="diffusion step $t$", title=r"weight $\mathrm{SNR}_t = \alpha_t^2 / \sigma_t^2$")
    for ax in (ax0, ax1):
        ax.grid(alpha=0.3)
    fig.savefig(OUT / "schedule.png", dpi=DPI)
    plt.close(fig)


def main() -> None:
    plt.switch_backend("Agg")
    OUT.mkdir(exist_ok=True)
    plt.rcParams.update({"figure.facecolor": "white", "font.size": 10})
    for make in (landscape, coefficients, sparse_graph, schedule):
        make()
        print(f"wrote {make.__name__}")


if __name__ == "__main__":
    main()
