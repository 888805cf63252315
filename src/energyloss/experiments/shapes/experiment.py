r"""Run the regular-shape experiment: plan the models, train them (in parallel), select, tabulate, plot.

Plan. The three studies (loss comparison, augmentation sweep, vertex sweep) are unions of *settings*
``(loss spec, theta_aug, N)``; each setting is trained at every learning rate and seed. Models that share
the loss and ``N`` form one *group*, trained as a single stack (:func:`.train.train_group`). Groups run in
``workers`` processes (one thread each) and are saved to ``groups/<name>.json`` in the run folder as they finish
(a :class:`~energyloss.experiments.runs.JobStore`), so an interrupted run resumes where it stopped. A saved group is
reused only when the fingerprint of every setting that can change it (:func:`job_settings`) is unchanged; a group
trained with other settings, or a corrupt file (reported with its path), is trained again.

Selection (App. C.1: "for each setting, the model giving the highest quality is chosen"): for every setting, the
learning rate with the best validation ``select_by`` averaged over seeds is selected; its test metrics are reported
as mean ± std over seeds.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from energyloss.experiments.losses import parse_loss_spec
from energyloss.experiments.runs import (
    JobStore,
    fingerprint,
    format_seconds,
    live_bars,
    log,
    markdown_table,
    mean_std,
    progress,
)

from .config import ShapesConfig, pi_label, record_spec
from .data import sample_shapes
from .train import ModelSpec, seed_of, spec_fields

__all__ = ["execute_task", "job_settings", "plan_tasks", "run_tasks", "select_best", "summary_rows"]

#: Metrics summarised in the tables (test set of the selected learning rate, mean ± std over seeds).
TABLE_METRICS = ("quality", "quality_authors", "distance_rmse", "radius_ratio", "orientation_spread")


def _settings(cfg: ShapesConfig) -> dict[str, set]:
    """Settings ``(loss spec, theta_over_pi, N)`` of each study."""
    main = {(parse_loss_spec(s), cfg.theta_aug_over_pi, cfg.n_vertices) for s in cfg.losses}
    theta = {(parse_loss_spec(s), t, cfg.n_vertices) for s in cfg.theta_losses for t in cfg.theta_sweep}
    verts = {(parse_loss_spec(s), cfg.theta_aug_over_pi, n) for s in cfg.n_losses for n in cfg.n_sweep}
    return {"losses": main, "theta": theta, "vertices": verts}


def plan_tasks(cfg: ShapesConfig) -> list[dict]:
    """The groups to train: one task per (kind, loss spec, N), with its model specs.

    Example:
        >>> from energyloss.experiments.shapes.config import PRESETS
        >>> tasks = plan_tasks(PRESETS["smoke"])
        >>> sorted({t["kind"] for t in tasks}), all(t["specs"] for t in tasks)
        (['flow', 'regression'], True)
    """
    settings = set().union(*_settings(cfg).values())
    groups: dict[tuple, set] = defaultdict(set)
    for loss, theta, n in settings:
        groups[(loss, n)].add(theta)

    def order(item) -> tuple:  # by N, then as (name, scheme) tuples; options last
        loss, n = item[0]
        return (n, str((loss.name, loss.coefficients, n)), str(loss))

    tasks = []
    for (loss, n), thetas in sorted(groups.items(), key=order):
        specs = [(t * math.pi, lr, s) for t in sorted(thetas) for lr in cfg.lrs for s in cfg.seeds]
        figure = [i for i, (t, _, _) in enumerate(specs) if math.isclose(t, cfg.theta_aug) and n == cfg.n_vertices]
        tasks.append(dict(kind="regression", **spec_fields(loss), n_vertices=n, specs=specs, figure_specs=figure))
    for text in cfg.flow_losses:
        specs = [(cfg.theta_aug, lr, s) for lr in cfg.flow_lrs for s in cfg.flow_seeds]
        tasks.append(
            dict(
                kind="flow",
                **spec_fields(text),
                n_vertices=cfg.n_vertices,
                specs=specs,
                figure_specs=list(range(len(specs))),
            )
        )
    for task in tasks:
        task["name"] = f"{task['kind']}-{record_spec(task).label}-N{task['n_vertices']}"
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


#: Settings that never change a group's result by themselves: execution, selection, and the study definitions
#: (losses, sweeps, the main setting, learning rates and seeds), which act through the task's own model specs.
NON_RESULT_FIELDS = (
    "workers",
    "threads",
    "device",
    "plots",
    "select_by",
    "losses",
    "theta_losses",
    "n_losses",
    "flow_losses",
    "theta_sweep",
    "n_sweep",
    "theta_aug_over_pi",
    "n_vertices",
    "lrs",
    "seeds",
    "flow_lrs",
    "flow_seeds",
)
#: Settings of the regression groups only (the flow groups have their own ``flow_*`` versions).
_REGRESSION_FIELDS = ("n_train", "n_test", "hidden", "epochs", "batch_size")
_GRAPH_FIELDS = ("graph_degree", "graph_pool_size", "graph_seed")
_TASK_KEYS = ("kind", "loss", "coefficients", "loss_spec", "n_vertices", "specs", "figure_specs")


def job_settings(task: dict, cfg: ShapesConfig) -> dict[str, Any]:
    """Everything that can change the result of ``task``: its loss, N and model specs, and the settings it reads.

    Its :func:`~energyloss.experiments.runs.fingerprint` keys the saved group: a rerun in the same folder keeps a
    group whose settings match and trains the others again.

    Example:
        >>> from energyloss.experiments.shapes.config import PRESETS
        >>> cfg = PRESETS["smoke"]
        >>> task = next(t for t in plan_tasks(cfg) if t["kind"] == "flow")
        >>> job_settings(task, cfg) == job_settings(task, dataclasses.replace(cfg, epochs=1, n_sweep=(5,)))
        True
    """
    skip = set(NON_RESULT_FIELDS)
    flow = task["kind"] == "flow"
    for field in dataclasses.fields(cfg):
        if (flow and field.name in _REGRESSION_FIELDS) or (not flow and field.name.startswith("flow_")):
            skip.add(field.name)
    if task["loss"] != "sparse_energy":
        skip.update(_GRAPH_FIELDS)
    settings = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in skip}
    return {"task": {k: task[k] for k in _TASK_KEYS if k in task}, "settings": settings}


def execute_task(task: dict, cfg: ShapesConfig, *, show_progress: bool = True) -> dict:
    """Train one group (in this process) and return ``{"records": [...], "figure": {...}}``."""
    from .flow import train_flow_group
    from .train import train_group

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    flow = task["kind"] == "flow"
    n_train = cfg.flow_n_train if flow else cfg.n_train
    n_test = cfg.flow_n_test if flow else cfg.n_test
    loss = record_spec(task)
    specs = [ModelSpec(*s) for s in task["specs"]]
    train_sets = {
        s: sample_shapes(
            n_train, generator=torch.Generator().manual_seed(seed_of(s, "train")), radius_range=cfg.radius_range
        )
        for s in sorted({spec.seed for spec in specs})
    }
    val = sample_shapes(
        cfg.n_val, generator=torch.Generator().manual_seed(seed_of("val")), radius_range=cfg.radius_range
    )
    test = sample_shapes(
        n_test, generator=torch.Generator().manual_seed(seed_of("test")), radius_range=cfg.radius_range
    )
    pool = None
    if loss.name == "sparse_energy":
        from energyloss.rigidity import RigidGraphPool

        degree = loss.degree if loss.degree is not None else cfg.graph_degree
        pool = RigidGraphPool(2, k=degree, size=cfg.graph_pool_size, seed=cfg.graph_seed)
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
            loss,
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
            loss,
            task["n_vertices"],
            specs,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            hidden=cfg.hidden,
            **common,
        )
    return {"records": records, "figure": figure, "seconds": time.perf_counter() - start}


def _worker(task: dict, cfg: ShapesConfig) -> dict:
    torch.set_num_threads(1)
    return execute_task(task, cfg, show_progress=False)


def _restore(value: Any, key: str | None = None) -> Any:
    """A saved result as it was computed: JSON's ``null`` / ``"inf"`` back to the float NaN / infinity.

    The run-folder writers store NaN as ``null`` and infinities as strings; every record value is a number except
    ``coefficients`` and ``loss_spec`` (``None`` when absent), so a resumed group reads as a fresh one.
    """
    if isinstance(value, dict):
        return {k: _restore(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v, key) for v in value]
    if value is None and key not in ("coefficients", "loss_spec"):
        return math.nan
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    return value


def _load_group(store: JobStore, task: dict, fp: str) -> dict | None:
    saved = store.load(task["name"], fp)
    if not isinstance(saved, dict) or len(saved.get("records") or ()) != len(task["specs"]):
        return None
    return {
        "task": saved.get("task", task),
        "records": _restore(saved["records"]),
        "figure": _restore(saved.get("figure") or {}),
        "seconds": saved.get("seconds", math.nan),
    }


def run_tasks(tasks: Sequence[dict], cfg: ShapesConfig, run_dir: Path) -> dict[str, dict]:
    """Train every task not already saved in ``run_dir/groups``; return ``{task name: result}``.

    Saved groups are kept when their :func:`job_settings` fingerprint matches; the others (other settings, or a
    file that cannot be read, which is reported with its path) are trained again. Progress: a live bar on a
    terminal, otherwise one line per finished group (with the count, elapsed time and an estimate of the time
    left); worker processes print nothing.
    """
    store = JobStore(Path(run_dir) / "groups")
    fps = {task["name"]: fingerprint(job_settings(task, cfg)) for task in tasks}
    results: dict[str, dict] = {}
    todo, redone = [], 0
    for task in tasks:
        saved = _load_group(store, task, fps[task["name"]])
        if saved is not None:
            results[task["name"]] = saved
        else:
            redone += store.path(task["name"]).exists()
            todo.append(task)
    if results or redone:
        again = f" ({redone} saved with other settings or unreadable: trained again)" if redone else ""
        log(f"resuming: {len(results)} of {len(tasks)} groups already trained in {store.folder}{again}")
    todo.sort(key=lambda t: -t["cost"])
    start = time.monotonic()
    bars = live_bars()

    def finish(done: int, task: dict, result: dict) -> None:
        fp = fps[task["name"]]
        store.save(task["name"], fp, {"task": task, **result})
        # the in-memory result is the saved one, so a fresh and a resumed run summarise the same values
        results[task["name"]] = _load_group(store, task, fp) or {"task": task, **result}
        best = _best_of(result["records"], cfg.select_by)
        elapsed = time.monotonic() - start
        left = elapsed / done * (len(todo) - done)
        log(
            f"  done {task['name']:<36s} {len(task['specs']):3d} models {result['seconds']:7.1f} s   {best}"
            f"   [{done}/{len(todo)} groups, {format_seconds(elapsed)}, {format_seconds(left)} left]"
        )

    if cfg.workers <= 1 or len(todo) <= 1:
        for done, task in enumerate(progress(todo, desc="groups", total=len(todo), disable=not bars), 1):
            finish(done, task, execute_task(task, cfg))
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(cfg.workers, len(todo)), mp_context=ctx) as executor:
        futures = {executor.submit(_worker, task, cfg): task for task in todo}
        finished = progress(as_completed(futures), desc="groups", total=len(futures), disable=not bars)
        for done, future in enumerate(finished, 1):
            finish(done, futures[future], future.result())
    return results


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
        rec.get("loss_spec") or "",
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
    for _key, recs in sorted(by_setting.items(), key=lambda kv: (kv[0][4], kv[0][3], str(kv[0][1:3]), kv[0][5])):
        row = {
            "loss": record_spec(recs[0]).label,
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
        wanted = {(loss.label, round(t, 4), n) for loss, t, n in settings[study]}
        chosen = [r for r in rows if (r["loss"], r["theta_aug/pi"], r["N"]) in wanted]
        if order == "loss":
            rank = {parse_loss_spec(s).label: i for i, s in enumerate(cfg.losses)}
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
