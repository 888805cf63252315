r"""Run the regular-shape experiment: plan the models, train them (in parallel), select, tabulate, plot.

Plan. The three studies (loss comparison, augmentation sweep, vertex sweep) are unions of *settings*
``(loss, coefficients, theta_aug, N)``; each setting is trained at every learning rate and seed. Models that share
the loss and ``N`` form one *group*, trained as a single stack (:func:`.train.train_group`). Groups run in
``workers`` processes (one thread each) and are saved to ``groups/<name>.json`` in the run folder as they finish,
so an interrupted run resumes where it stopped (a group is reused only when its configuration is unchanged).

Selection (App. C.1: "for each setting, the model giving the highest quality is chosen"): for every setting, the
learning rate with the best validation ``select_by`` averaged over seeds is selected; its test metrics are reported
as mean ± std over seeds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from energyloss.experiments.runs import markdown_table, mean_std, progress

from .config import ShapesConfig, parse_loss_spec, pi_label
from .data import sample_shapes
from .losses import loss_label
from .train import ModelSpec, derived_seed

__all__ = ["execute_task", "plan_tasks", "run_tasks", "select_best", "summary_rows"]

#: Metrics summarised in the tables (test set of the selected learning rate, mean ± std over seeds).
TABLE_METRICS = ("quality", "quality_authors", "distance_rmse", "radius_ratio", "orientation_spread")


def _settings(cfg: ShapesConfig) -> dict[str, set]:
    """Settings ``(loss, coefficients, theta_over_pi, N)`` of each study."""
    main = {(*parse_loss_spec(s), cfg.theta_aug_over_pi, cfg.n_vertices) for s in cfg.losses}
    theta = {(*parse_loss_spec(s), t, cfg.n_vertices) for s in cfg.theta_losses for t in cfg.theta_sweep}
    verts = {(*parse_loss_spec(s), cfg.theta_aug_over_pi, n) for s in cfg.n_losses for n in cfg.n_sweep}
    return {"losses": main, "theta": theta, "vertices": verts}


def plan_tasks(cfg: ShapesConfig) -> list[dict]:
    """The groups to train: one task per (kind, loss, coefficients, N), with its model specs.

    Example:
        >>> from energyloss.experiments.shapes.config import PRESETS
        >>> tasks = plan_tasks(PRESETS["smoke"])
        >>> sorted({t["kind"] for t in tasks}), all(t["specs"] for t in tasks)
        (['flow', 'regression'], True)
    """
    settings = set().union(*_settings(cfg).values())
    groups: dict[tuple, set] = defaultdict(set)
    for loss, coefficients, theta, n in settings:
        groups[(loss, coefficients, n)].add(theta)
    tasks = []
    for (loss, coefficients, n), thetas in sorted(groups.items(), key=lambda kv: (kv[0][2], str(kv[0]))):
        specs = [(t * math.pi, lr, s) for t in sorted(thetas) for lr in cfg.lrs for s in cfg.seeds]
        figure = [i for i, (t, _, _) in enumerate(specs) if math.isclose(t, cfg.theta_aug) and n == cfg.n_vertices]
        tasks.append(
            dict(
                kind="regression", loss=loss, coefficients=coefficients, n_vertices=n, specs=specs, figure_specs=figure
            )
        )
    for spec in cfg.flow_losses:
        loss, coefficients = parse_loss_spec(spec)
        specs = [(cfg.theta_aug, lr, s) for lr in cfg.flow_lrs for s in cfg.flow_seeds]
        tasks.append(
            dict(
                kind="flow",
                loss=loss,
                coefficients=coefficients,
                n_vertices=cfg.n_vertices,
                specs=specs,
                figure_specs=list(range(len(specs))),
            )
        )
    for task in tasks:
        task["name"] = f"{task['kind']}-{loss_label(task['loss'], task['coefficients'])}-N{task['n_vertices']}"
        task["cost"] = _cost(task, cfg)
    return tasks


def _cost(task: dict, cfg: ShapesConfig) -> float:
    """Rough relative cost (for scheduling the largest groups first)."""
    n = task["n_vertices"]
    per_sample = 1.0 + 0.05 * n
    if task["loss"] == "energy":
        per_sample += 0.02 * n * n
    elif task["loss"] == "sparse_energy":
        per_sample += 0.3 * n
    elif task["loss"] == "kabsch_mse":
        per_sample += 1.0
    if task["kind"] == "flow":
        return len(task["specs"]) * cfg.flow_n_train * cfg.flow_epochs * (per_sample + 4.0)
    return len(task["specs"]) * cfg.n_train * cfg.epochs * per_sample


def _fingerprint(task: dict, cfg: ShapesConfig) -> str:
    relevant = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("workers", "threads", "device")}
    blob = json.dumps(
        [task["kind"], task["loss"], task["coefficients"], task["n_vertices"], task["specs"], relevant],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha1(blob.encode()).hexdigest()


def execute_task(task: dict, cfg: ShapesConfig, *, show_progress: bool = True) -> dict:
    """Train one group (in this process) and return ``{"records": [...], "figure": {...}}``."""
    from .flow import train_flow_group
    from .train import train_group

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    flow = task["kind"] == "flow"
    n_train = cfg.flow_n_train if flow else cfg.n_train
    n_test = cfg.flow_n_test if flow else cfg.n_test
    specs = [ModelSpec(*s) for s in task["specs"]]
    train_sets = {
        s: sample_shapes(
            n_train, generator=torch.Generator().manual_seed(derived_seed(s, "train")), radius_range=cfg.radius_range
        )
        for s in sorted({spec.seed for spec in specs})
    }
    val = sample_shapes(
        cfg.n_val, generator=torch.Generator().manual_seed(derived_seed("val")), radius_range=cfg.radius_range
    )
    test = sample_shapes(
        n_test, generator=torch.Generator().manual_seed(derived_seed("test")), radius_range=cfg.radius_range
    )
    pool = None
    if task["loss"] == "sparse_energy":
        from energyloss.rigidity import RigidGraphPool

        pool = RigidGraphPool(2, k=cfg.graph_degree, size=cfg.graph_pool_size, seed=cfg.graph_seed)
        pool.graphs(task["n_vertices"])  # build (and verify) before the clock of the training starts
    lo, hi = cfg.radius_range
    figure_radius = torch.linspace(lo + 0.25 * (hi - lo) / cfg.n_figure, hi, cfg.n_figure)
    common = dict(
        train_sets=train_sets,
        val=val,
        test=test,
        pool=pool,
        figure_radius=figure_radius,
        figure_specs=task["figure_specs"],
        desc=task["name"] if show_progress else "",
        device=cfg.device,
    )
    start = time.perf_counter()
    if flow:
        records, figure = train_flow_group(
            task["loss"],
            task["coefficients"],
            task["n_vertices"],
            specs,
            epochs=cfg.flow_epochs,
            batch_size=cfg.flow_batch_size,
            hidden=cfg.flow_hidden,
            t_min=cfg.flow_t_min,
            noise_scale=cfg.flow_noise_scale,
            sample_steps=cfg.flow_sample_steps,
            **common,
        )
    else:
        records, figure = train_group(
            task["loss"],
            task["coefficients"],
            task["n_vertices"],
            specs,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            hidden=cfg.hidden,
            **common,
        )
    return {"records": records, "figure": figure, "seconds": time.perf_counter() - start}


def _worker(task: dict, cfg_dict: dict) -> dict:
    torch.set_num_threads(1)
    cfg = ShapesConfig(**cfg_dict)
    return execute_task(task, cfg, show_progress=False)


def _log(message: str) -> None:
    try:
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stderr)
    except ImportError:  # pragma: no cover - tqdm is in the cli extra
        print(message, file=sys.stderr)


def run_tasks(tasks: Sequence[dict], cfg: ShapesConfig, run_dir: Path) -> dict[str, dict]:
    """Train every task not already saved in ``run_dir/groups``; return ``{task name: result}``."""
    groups_dir = run_dir / "groups"
    groups_dir.mkdir(exist_ok=True)
    results: dict[str, dict] = {}
    todo = []
    for task in tasks:
        path = groups_dir / f"{task['name']}.json"
        fp = _fingerprint(task, cfg)
        if path.exists():
            try:
                saved = json.loads(path.read_text())
            except json.JSONDecodeError:
                saved = {}
            if saved.get("fingerprint") == fp:
                results[task["name"]] = saved
                continue
        todo.append(task)
    if len(results):
        _log(f"resuming: {len(results)} of {len(tasks)} groups already trained in {groups_dir}")
    todo.sort(key=lambda t: -t["cost"])

    def finish(task: dict, result: dict) -> None:
        result = {"fingerprint": _fingerprint(task, cfg), "task": task, **result}
        (groups_dir / f"{task['name']}.json").write_text(json.dumps(result, default=_json_default))
        results[task["name"]] = json.loads(json.dumps(result, default=_json_default))
        best = _best_of(result["records"], cfg.select_by)
        _log(f"  done {task['name']:<36s} {len(task['specs']):3d} models {result['seconds']:7.1f} s   {best}")

    if cfg.workers <= 1 or len(todo) <= 1:
        for task in progress(todo, desc="groups", total=len(todo)):
            finish(task, execute_task(task, cfg))
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    cfg_dict = dataclasses.asdict(cfg)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(cfg.workers, len(todo)), mp_context=ctx) as executor:
        futures = {executor.submit(_worker, task, cfg_dict): task for task in todo}
        for future in progress(as_completed(futures), desc="groups", total=len(futures)):
            finish(futures[future], future.result())
    return results


def _json_default(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _best_of(records: Sequence[dict], select_by: str) -> str:
    vals = [r.get(f"val_{select_by}") for r in records]
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    if not vals:
        return "(all diverged)"
    best = min(vals) if select_by == "distance_rmse" else max(vals)
    return f"best val {select_by} {best:.3g}"


def _setting_key(rec: dict) -> tuple:
    return (
        rec.get("task", "regression"),
        rec["loss"],
        rec["coefficients"],
        round(rec["theta_aug"], 9),
        rec["n_vertices"],
    )


def select_best(records: Iterable[dict], select_by: str) -> list[dict]:
    """Mark ``selected = True`` on the records of the best learning rate of every setting (in place).

    The learning rate with the best mean validation ``select_by`` over seeds wins (highest quality, or lowest
    ``distance_rmse``); diverged or non-finite models count as worst. Returns the list of records.

    Example:
        >>> recs = [dict(loss="mse", coefficients=None, theta_aug=0.0, n_vertices=5, lr=lr, val_quality=q)
        ...         for lr, q in [(0.1, 3.0), (0.01, 4.0)]]
        >>> [r["lr"] for r in select_best(recs, "quality") if r["selected"]]
        [0.01]
    """
    records = list(records)
    by_setting: dict[tuple, dict[float, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for rec in records:
        by_setting[_setting_key(rec)][rec["lr"]].append(rec)
        rec["selected"] = False
    sign = -1.0 if select_by == "distance_rmse" else 1.0
    for by_lr in by_setting.values():

        def score(lr: float, by_lr=by_lr) -> float:
            vals = [r.get(f"val_{select_by}") for r in by_lr[lr]]
            if any(v is None or not math.isfinite(v) for v in vals):
                return -math.inf
            return sign * sum(vals) / len(vals)

        best = max(sorted(by_lr), key=score)
        for rec in by_lr[best]:
            rec["selected"] = True
    return records


def _fmt_pm(mean: float, std: float, n: int) -> str | None:
    if not math.isfinite(mean):
        return None
    digits = ".2f" if abs(mean) >= 0.1 else ".2g"
    if n <= 1:
        return format(mean, digits)
    return f"{mean:{digits}} ± {std:{'.2f' if abs(mean) >= 0.1 else '.1g'}}"


def summary_rows(records: Iterable[dict], *, keys: Sequence[str] = ("loss", "coefficients")) -> list[dict]:
    """One row per setting from the selected records: metrics as ``"mean ± std"`` strings (std over seeds)."""
    by_setting: dict[tuple, list[dict]] = defaultdict(list)
    for rec in records:
        if rec.get("selected"):
            by_setting[_setting_key(rec)].append(rec)
    rows = []
    for _key, recs in sorted(by_setting.items(), key=lambda kv: (kv[0][4], kv[0][3], str(kv[0][1:3]))):
        row = {
            "loss": loss_label(recs[0]["loss"], recs[0]["coefficients"]),
            "theta_aug/pi": round(recs[0]["theta_aug"] / math.pi, 4),
            "N": recs[0]["n_vertices"],
            "lr": recs[0]["lr"],
            "seeds": len(recs),
        }
        for metric in TABLE_METRICS:
            mean, std = mean_std(r.get(metric) for r in recs)
            row[metric] = _fmt_pm(mean, std, len(recs))
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean, std
        rows.append(row)
    return rows


_TABLE_COLUMNS = ["loss", "theta_aug/pi", "N", "lr", *TABLE_METRICS]
_TABLE_HEADERS = [
    "loss",
    "θ_aug/π",
    "N",
    "best lr",
    "quality (C.1)",
    "quality (authors' code)",
    "distance RMSE / r",
    "radius ratio",
    "orientation spread",
]


def summary_markdown(cfg: ShapesConfig, records: list[dict], flow_records: list[dict], *, header: str) -> str:
    """The Markdown summary: the loss comparison, both sweeps and the flow-matching variant."""
    settings = _settings(cfg)
    rows = summary_rows(records)

    def pick(study: str, order: str) -> list[dict]:
        wanted = {(loss_label(lo, co), round(t, 4), n) for lo, co, t, n in settings[study]}
        chosen = [r for r in rows if (r["loss"], r["theta_aug/pi"], r["N"]) in wanted]
        if order == "loss":
            rank = {loss_label(*parse_loss_spec(s)): i for i, s in enumerate(cfg.losses)}
            return sorted(chosen, key=lambda r: rank.get(r["loss"], 99))
        if order == "theta":
            return sorted(chosen, key=lambda r: (r["loss"], r["theta_aug/pi"]))
        return sorted(chosen, key=lambda r: (r["loss"], r["N"]))

    parts = [header]
    parts.append(
        f"\n### Loss comparison (θ_aug = {pi_label(cfg.theta_aug_over_pi)}, N = {cfg.n_vertices}; "
        f"test set, mean ± std over {len(cfg.seeds)} seed(s), learning rate picked by validation {cfg.select_by})\n"
    )
    parts.append(markdown_table(pick("losses", "loss"), _TABLE_COLUMNS, headers=_TABLE_HEADERS))
    if settings["theta"]:
        parts.append(f"\n### Augmentation sweep (Fig. 3b; N = {cfg.n_vertices})\n")
        parts.append(markdown_table(pick("theta", "theta"), _TABLE_COLUMNS, headers=_TABLE_HEADERS))
    if settings["vertices"]:
        parts.append(f"\n### Vertex-count sweep (Fig. 3c; θ_aug = {pi_label(cfg.theta_aug_over_pi)})\n")
        parts.append(markdown_table(pick("vertices", "n"), _TABLE_COLUMNS, headers=_TABLE_HEADERS))
    if flow_records:
        parts.append(
            f"\n### Conditional flow matching (App. A.7; θ_aug = {pi_label(cfg.theta_aug_over_pi)}, "
            f"N = {cfg.n_vertices}, {cfg.flow_sample_steps} Euler steps; metrics of samples)\n"
        )
        parts.append(markdown_table(summary_rows(flow_records), _TABLE_COLUMNS, headers=_TABLE_HEADERS))
    parts.append(
        "\nquality (C.1) = mean over test shapes of -ln(σ_Δθ/2π + σ_r/r) with the true radius r; quality (authors' "
        "code) = -ln of the mean score with the predicted mean radius. Both ignore scale: distance RMSE / r "
        "(pairwise-distance error, E(2)-invariant) and radius ratio (predicted / true radius) show it. Orientation "
        "spread: 0 = every shape in the same pose, ~1 = uniformly spread."
    )
    return "\n".join(parts)
