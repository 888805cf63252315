"""Run folders, result tables, progress bars and seeding shared by every experiment.

A run folder holds ``config.json`` (the resolved configuration), ``metrics.json``, ``records.csv`` (one row per
trained model / measurement), figures (PNG), checkpoints, and ``summary.md`` (also printed).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import functools
import json
import math
import os
import platform
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")

__all__ = [
    "JobStore",
    "RunFolderBusy",
    "SettingsChanged",
    "apply_overrides",
    "atomic_save",
    "config_changes",
    "current_run_folder",
    "derive_seed",
    "derived_generator",
    "fingerprint",
    "format_seconds",
    "live_bars",
    "lock_run_folder",
    "log",
    "open_run_folder",
    "read_json",
    "release_run_folders",
    "set_progress",
    "to_jsonable",
    "unlock_run_folder",
    "machine_info",
    "code_commit",
    "with_machine_history",
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


def to_jsonable(obj: Any) -> Any:
    """``obj`` as JSON-ready Python (dataclasses, mappings, sequences, tensors, numpy values, paths, inf/NaN)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else str(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def atomic_save(path: str | os.PathLike, save: Any) -> Path:
    """Call ``save(tmp_path)`` and rename the result onto ``path`` (e.g. ``lambda p: torch.save(state, p)``).

    The temporary file is ``<name>.tmp-<pid>`` next to ``path`` (what :func:`remove_stale_temporaries` cleans up);
    it is removed if ``save`` fails, and the old ``path``, if any, is kept.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        save(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_save`, so a reader never sees half a file."""
    atomic_save(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` (dicts, lists, dataclasses, tensors, numpy scalars) as indented JSON, atomically."""
    path = Path(path)
    _atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")
    return path


def read_json(path: str | os.PathLike, *, what: str = "state file") -> Any | None:
    """The JSON content of ``path``; ``None`` when it is missing, or corrupt (then one warning line names it).

    Resume logic reads its state through this: a truncated or corrupt file is reported and redone, never a crash.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        log(f"warning: corrupt {what} {path} ({type(err).__name__}: {err}); it is redone")
        return None


def write_csv(path: str | os.PathLike, records: Sequence[Mapping[str, Any]]) -> Path:
    """Write a list of flat records as CSV (atomically); the header is the union of keys in first-seen order."""
    import io

    path = Path(path)
    keys: list[str] = []
    for rec in records:
        for k in rec:
            if k not in keys:
                keys.append(k)
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    for rec in records:
        writer.writerow({k: to_jsonable(rec.get(k)) for k in keys})
    _atomic_write_text(path, buffer.getvalue())
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
    _atomic_write_text(path, text.rstrip() + "\n")
    if echo:
        print(text)
    return path


#: ``set_progress(False)`` (``--no-progress``) turns live bars into plain lines for the whole process.
_PROGRESS = {"bars": True}


def set_progress(bars: bool) -> bool:
    """Allow (``True``) or forbid live progress bars; plain progress lines are printed either way.

    Returns the previous setting, so that a caller can restore it.
    """
    previous, _PROGRESS["bars"] = _PROGRESS["bars"], bool(bars)
    return previous


def live_bars() -> bool:
    """Whether live bars may be drawn: stderr is a terminal, ``TQDM_DISABLE`` is unset, not ``--no-progress``,
    and this is not a worker process (workers never draw into a shared stream)."""
    import multiprocessing

    if not _PROGRESS["bars"] or os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false"):
        return False
    if multiprocessing.parent_process() is not None:
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def format_seconds(seconds: float) -> str:
    """``75`` -> ``'1m15s'``; ``4000`` -> ``'1h06m'``; ``9.5`` -> ``'9.5s'``.

    >>> format_seconds(75), format_seconds(4000), format_seconds(9.5)
    ('1m15s', '1h06m', '9.5s')
    """
    if not math.isfinite(seconds):
        return "?"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def log(message: str) -> None:
    """One plain line on stderr, flushed (progress, resume notes, warnings); above the live bars while they draw."""
    if live_bars():
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - tqdm is in the experiments extra
            pass
        else:
            tqdm.write(message, file=sys.stderr)
            return
    print(message, file=sys.stderr, flush=True)


def progress(
    iterable: Iterable[T],
    *,
    desc: str = "",
    total: int | None = None,
    disable: bool = False,
    lines: int = 10,
) -> Iterator[T]:
    """Iterate with progress output that suits the stream.

    A live tqdm bar when :func:`live_bars` allows it; otherwise up to ``lines`` plain lines on stderr, each with the
    count, elapsed time and an estimate of the time left (every item when ``total <= lines``). ``disable`` prints
    nothing.
    """
    if disable:
        yield from iterable
        return
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if live_bars():
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - tqdm is in the experiments extra
            tqdm = None
        if tqdm is not None:
            yield from tqdm(iterable, desc=desc, total=total, dynamic_ncols=True, leave=False)
            return
    start = time.monotonic()
    step = 1 if total is None or total <= lines else max(1, math.ceil(total / lines))
    done = 0
    for item in iterable:
        yield item
        done += 1
        if done % step == 0 or done == total:
            elapsed = time.monotonic() - start
            left = f", {format_seconds(elapsed / done * (total - done))} left" if total else ""
            log(f"{desc} {done}/{total if total is not None else '?'} ({format_seconds(elapsed)}{left})")


def fingerprint(obj: Any) -> str:
    """A short stable hash of ``obj``'s JSON form (dataclasses, mappings, sequences, numbers, strings).

    >>> fingerprint({"a": 1, "b": (2, 3)}) == fingerprint({"b": [2, 3], "a": 1})
    True
    """
    import hashlib

    text = json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any], *, keys: Iterable[str] | None = None) -> list[str]:
    """``["size: 6 -> 4", ...]`` for the settings (``keys``, default all) that differ between two configs.

    >>> config_changes({"size": 6, "lr": 0.1}, {"size": 4, "lr": 0.1})
    ['size: 6 -> 4']
    """
    old, new = to_jsonable(old), to_jsonable(new)
    names = list(keys) if keys is not None else sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in names if old.get(k) != new.get(k)]


class SettingsChanged(ValueError):
    """A run folder holds a run with other settings than the ones asked for."""


class RunFolderBusy(RuntimeError):
    """Another process is running in this run folder (two writers would mix their files)."""


#: The lock file of a run folder; it holds the process id and start time of the process that has it.
LOCK_FILE = ".lock"
_LOCKS: dict[str, Any] = {}  # resolved run folder -> the open lock file this process holds


def lock_run_folder(run_dir: str | os.PathLike) -> Path:
    """Take the run folder's advisory lock; :class:`RunFolderBusy` if another process has it.

    The lock is ``flock(2)`` on ``run_dir/.lock``, held until :func:`unlock_run_folder` /
    :func:`release_run_folders` (the command line calls it when a command ends) or the end of the process, however
    it ends, so it never goes stale. Taking it again in the same process is a no-op. On systems without ``fcntl``
    (Windows) nothing is locked.
    """
    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _LOCKS:
        return run_dir
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return run_dir
    path = run_dir / LOCK_FILE
    handle = open(path, "a+")  # kept open: the lock lives as long as the file stays open
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunFolderBusy(
            f"run folder {run_dir} is in use by {holder}; wait for it to finish or choose another --out"
        ) from None
    except OSError as err:  # a file system without flock (some network mounts): run unlocked, say so
        handle.close()
        log(f"{run_dir}: cannot lock the run folder ({err}); make sure no other process runs in it")
        return run_dir
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {platform.node()} since {_dt.datetime.now().isoformat(timespec='seconds')}\n")
    handle.flush()
    _LOCKS[key] = handle
    return run_dir


def unlock_run_folder(run_dir: str | os.PathLike) -> None:
    """Release the lock :func:`lock_run_folder` took (the end of the process releases it too)."""
    handle = _LOCKS.pop(str(Path(run_dir).resolve()), None)
    if handle is not None:
        handle.close()


def release_run_folders() -> None:
    """Release every run-folder lock this process holds (the command line does it when a command ends)."""
    for key in list(_LOCKS):
        unlock_run_folder(key)


class JobStore:
    """Finished jobs of a run, one JSON file each under ``folder``, keyed by name and settings fingerprint.

    :meth:`load` returns a saved result only if it was produced with the same fingerprint; a file with another
    fingerprint is redone (and overwritten), a corrupt one is reported with its path and redone. Every file is
    written atomically, so an interrupted run leaves whole files or none.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     store = JobStore(d)
        ...     _ = store.save("a", "fp1", {"x": 1})
        ...     store.load("a", "fp1"), store.load("a", "fp2")
        ({'x': 1}, None)
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.folder, "*.tmp-*", r"\.tmp-(\d+)$")

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def load(self, name: str, fp: str) -> dict[str, Any] | None:
        saved = read_json(self.path(name), what="job file")
        if not isinstance(saved, dict) or saved.get("fingerprint") != fp or "result" not in saved:
            return None
        return saved["result"]

    def save(self, name: str, fp: str, result: Mapping[str, Any]) -> Path:
        return write_json(self.path(name), {"fingerprint": fp, "result": result})


def open_run_folder(
    out: str | os.PathLike | None,
    experiment: str,
    config: Any,
    *,
    preset: str | None = None,
    fixed: Iterable[str] = (),
    argv: Sequence[str] | None = None,
) -> Path:
    """Create or reopen a run folder and write its ``config.json`` (the resolved config, fingerprint, machine).

    Reopening a folder compares the stored config with ``config``: a change of a ``fixed`` setting raises
    :class:`SettingsChanged` naming the settings (such a run cannot be continued); other changes are reported
    in one line and the experiment redoes whatever depends on them (its jobs carry their own fingerprints).
    The folder is remembered for the interrupt message of the command line (:func:`current_run_folder`).
    The process takes the folder's lock (:func:`lock_run_folder`): a second process opening the same folder while
    the first runs gets :class:`RunFolderBusy`, naming the holder, before it has written anything.
    """
    run_dir = lock_run_folder(make_run_dir(out, experiment))
    cfg = to_jsonable(config)
    old = read_json(run_dir / "config.json", what="config file")
    if isinstance(old, dict) and isinstance(old.get("config"), dict):
        changed = config_changes(old["config"], cfg, keys=[k for k in fixed if k in old["config"] or k in cfg])
        if changed:
            raise SettingsChanged(
                f"run folder {run_dir} holds a run with other settings ({'; '.join(changed)}); "
                "continue it with its own settings (--config " + str(run_dir / "config.json") + ") "
                "or choose another --out"
            )
        other = config_changes(old["config"], cfg)
        if other:
            log(
                f"{run_dir}: settings changed since the last run here ({'; '.join(other)}); work done with the "
                "old settings is redone where they matter"
            )
    record = {
        "experiment": experiment,
        "preset": preset,
        "config": cfg,
        "fingerprint": fingerprint(cfg),
        "argv": list(sys.argv if argv is None else argv),
    }
    write_json(run_dir / "config.json", with_machine_history(record, old))
    _CURRENT["run_dir"] = run_dir
    return run_dir


_CURRENT: dict[str, Path | None] = {"run_dir": None}


def current_run_folder() -> Path | None:
    """The run folder opened last in this process (for the command line's resume hint), or ``None``."""
    return _CURRENT["run_dir"]


def derive_seed(*parts: object) -> int:
    """A 63-bit seed that depends only on ``parts`` (ints and strings), stable across runs and platforms.

    >>> derive_seed(0, "order") == derive_seed(0, "order") != derive_seed(1, "order")
    True
    """
    words: list[int] = []
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool) and part >= 0:
            words.append(part)
        else:
            data = str(part).encode()
            words.extend([len(data), *data])
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] & ((1 << 63) - 1))


def derived_generator(*parts: object) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed` of ``parts`` (independent streams)."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a fresh ``torch.Generator`` seeded with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds the legacy global RNG that third-party code uses
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def machine_info() -> dict[str, Any]:
    """What ran this: date, host platform, CPU model and count, python, torch, (if any) the GPU name, and the code: the
    energyloss version and, when the package is imported from a git checkout, its commit (:func:`code_commit`)."""
    info: dict[str, Any] = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    from .. import __version__

    info["energyloss"] = __version__
    commit = code_commit()
    if commit is not None:
        info["commit"] = commit
    return info


def _cpu_model() -> str | None:
    """The CPU's model name (Linux's /proc/cpuinfo), or ``None``: float results on the CPU can depend on it, since
    torch picks its kernels by instruction set."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return None


@functools.cache
def code_commit() -> str | None:
    """The git commit of the checkout energyloss is imported from (short hash, ``+dirty`` when the package's
    tracked files differ from it), or ``None`` for an installed package or without git. Computed once per process."""
    package = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "-C", str(package), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(package), "diff", "--quiet", "HEAD", "--", "."], timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.returncode == 1 else "")


def with_machine_history(record: dict[str, Any], old: Any) -> dict[str, Any]:
    """``record`` with ``machine`` (:func:`machine_info`, now) and ``earlier_machines``: those of ``old``, the
    config file this record replaces (``None`` for a new run), then its own ``machine`` entry; so a resumed run
    says when, where and with which code each part ran."""
    earlier = []
    if isinstance(old, dict):
        earlier = list(old.get("earlier_machines") or [])
        if isinstance(old.get("machine"), dict):
            earlier.append(old["machine"])
    return record | {"machine": machine_info(), "earlier_machines": earlier}


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
