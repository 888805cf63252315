"""Run folders, result tables, progress bars and seeding shared by every experiment.

A run folder holds ``config.json`` (the resolved configuration), ``metrics.json``, ``records.csv`` (one row per
trained model / measurement), figures (PNG), checkpoints, and ``summary.md`` (also printed).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import random
import re
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")

__all__ = [
    "apply_overrides",
    "machine_info",
    "make_run_dir",
    "markdown_table",
    "mean_std",
    "progress",
    "remove_stale_temporaries",
    "seed_everything",
    "write_csv",
    "write_json",
    "write_summary",
]


def make_run_dir(out: str | os.PathLike | None, name: str, *, root: str | os.PathLike = "runs") -> Path:
    """Create and return the run folder: ``out`` if given, else ``root/NAME-YYYYmmdd-HHMMSS``."""
    if out is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(root) / f"{name}-{stamp}"
    else:
        path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    return path


#: A temporary file older than this is stale whatever its process id says (ids are reused).
STALE_TEMPORARY_SECONDS = 24 * 3600


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, glob: str, pid_pattern: str) -> list[Path]:
    r"""Delete the temporary files in ``folder`` left by writers that are gone, or that are over a day old.

    ``glob`` selects candidates; ``pid_pattern`` is a regular expression whose first group is the writer's process
    id in the file name. A live writer's file is kept. Returns the files removed.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = (Path(d) / "data.pt.tmp-999999999").write_text("")
        ...     [p.name for p in remove_stale_temporaries(d, "*.tmp-*", r"\.tmp-(\d+)$")]
        ['data.pt.tmp-999999999']
    """
    pattern = re.compile(pid_pattern)
    removed = []
    for tmp in Path(folder).glob(glob):
        match = pattern.search(tmp.name)
        if match is None or not tmp.is_file():
            continue
        try:
            if time.time() - tmp.stat().st_mtime > STALE_TEMPORARY_SECONDS or not _pid_alive(int(match.group(1))):
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # raced with its writer or another cleaner: nothing to do
            continue
    return removed


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else str(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` (dicts, lists, dataclasses, tensors, numpy scalars) as indented JSON."""
    path = Path(path)
    path.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")
    return path


def write_csv(path: str | os.PathLike, records: Sequence[Mapping[str, Any]]) -> Path:
    """Write a list of flat records as CSV; the header is the union of keys in first-seen order."""
    path = Path(path)
    keys: list[str] = []
    for rec in records:
        for k in rec:
            if k not in keys:
                keys.append(k)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        for rec in records:
            writer.writerow({k: _jsonable(rec.get(k)) for k in keys})
    return path


def _fmt(value: Any, floatfmt: str) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return format(value, floatfmt) if math.isfinite(value) else str(value)
    return str(value)


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    *,
    headers: Sequence[str] | None = None,
    floatfmt: str = ".3g",
) -> str:
    """Render ``rows`` as a GitHub-flavoured Markdown table over ``columns``.

    >>> print(markdown_table([{"loss": "mse", "q": 1.23456}], ["loss", "q"]))
    | loss | q |
    |---|---|
    | mse | 1.23 |
    """
    headers = list(headers) if headers is not None else list(columns)
    if len(headers) != len(columns):
        raise ValueError(f"headers has {len(headers)} entries but columns has {len(columns)}")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c), floatfmt) for c in columns) + " |")
    return "\n".join(lines)


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and population standard deviation (0 for a single value) of finite ``values``.

    >>> mean_std([1.0, 3.0])
    (2.0, 1.0)
    """
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std())


def write_summary(run_dir: str | os.PathLike, text: str, *, echo: bool = True) -> Path:
    """Write ``summary.md`` into the run folder and print it."""
    path = Path(run_dir) / "summary.md"
    path.write_text(text.rstrip() + "\n")
    if echo:
        print(text)
    return path


def progress(iterable: Iterable[T], *, desc: str = "", total: int | None = None, disable: bool = False) -> Iterator[T]:
    """A progress bar over ``iterable``: tqdm when installed, otherwise plain periodic lines on stderr."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the experiments extra
        tqdm = None
    if tqdm is not None:
        yield from tqdm(iterable, desc=desc, total=total, disable=disable, dynamic_ncols=True, leave=False)
        return
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    step = max(1, (total or 10) // 10)
    for i, item in enumerate(iterable):
        if not disable and i % step == 0:
            print(f"{desc} {i}/{total if total is not None else '?'}", file=sys.stderr)
        yield item


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a fresh ``torch.Generator`` seeded with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds the legacy global RNG that third-party code uses
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def machine_info() -> dict[str, Any]:
    """What ran this: date, host platform, CPU count, python, torch and (if any) the GPU name."""
    info: dict[str, Any] = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def apply_overrides(config: Any, overrides: Mapping[str, Any]) -> Any:
    """Return a copy of dataclass ``config`` with the non-``None`` entries of ``overrides`` replaced.

    Unknown keys raise ``ValueError`` naming the key, so a typo never silently does nothing.
    """
    fields = {f.name for f in dataclasses.fields(config)}
    changes = {}
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in fields:
            raise ValueError(f"unknown option {key!r} for {type(config).__name__}; known: {sorted(fields)}")
        changes[key] = value
    return dataclasses.replace(config, **changes)
