"""Spin-glass data sets: random couplings with their exact ground states, generated once and cached.

Instance ``i`` of split ``s`` is drawn from ``numpy.random.default_rng([seed, SPLIT_CODES[s], i])``, so every
instance is reproducible on its own, whatever the number of worker processes, and a smaller data set is a
prefix of a larger one. Files live in ``<cache>/spins/`` where ``<cache>`` is, in order, the ``cache_dir``
argument (the ``--cache-dir`` flag), the ``ENERGYLOSS_CACHE`` environment variable, or ``~/.cache/energyloss``;
the file name holds a content hash of the generation settings. On loading, the file's array checksum is
verified and the stored energies are recomputed from the stored spins. A cache file that fails any of this (a
truncated or garbage ``.npz`` included) is reported with its path in a ``UserWarning`` and regenerated, or,
with ``on_invalid="raise"``, raises ``ValueError`` naming it. Every file is written to a temporary name and
renamed into place; temporary files left by a writer that was killed (``*.npz.tmp<pid>.npz``,
``*.json.tmp-<pid>``) are removed on the next load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import time
import warnings
from pathlib import Path

import numpy as np

from energyloss.experiments import runs as _runs
from energyloss.experiments.runs import progress

from . import solver

__all__ = [
    "CACHE_ENV",
    "SPLIT_CODES",
    "SpinDataSpec",
    "cache_root",
    "generate",
    "load_or_generate",
    "remove_stale_temporaries",
]

CACHE_ENV = "ENERGYLOSS_CACHE"
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
#: Bump when the generation procedure changes: it is part of the content hash.
FORMAT_VERSION = 1
_CHUNK = 64


@dataclasses.dataclass(frozen=True)
class SpinDataSpec:
    """Everything that determines a split's content (and hence its cache key)."""

    size: int = 16
    periodic: bool = False
    low: float = -1.0
    high: float = 1.0
    grid: int | None = solver.COUPLING_GRID
    seed: int = 0
    method: str = "auto"

    def key(self, split: str) -> str:
        """Content hash of the settings and the split (instances are prefix-stable, so ``n`` is not in it)."""
        payload = {"version": FORMAT_VERSION, "split": split, **dataclasses.asdict(self)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$ENERGYLOSS_CACHE``, else ``~/.cache/energyloss``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    return Path.home() / ".cache" / "energyloss"


def _instance(spec: SpinDataSpec, split: str, index: int) -> tuple[np.ndarray, np.ndarray, float]:
    rng = np.random.default_rng([spec.seed, SPLIT_CODES[split], index])
    couplings = solver.random_couplings(
        spec.size, rng=rng, periodic=spec.periodic, low=spec.low, high=spec.high, grid=spec.grid
    )
    spins, energy = solver.ground_state(couplings, periodic=spec.periodic, method=spec.method)
    return couplings, spins, energy


def _chunk(args: tuple[SpinDataSpec, str, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    spec, split, start, stop = args
    parts = [_instance(spec, split, i) for i in range(start, stop)]
    return (
        np.stack([p[0] for p in parts]),
        np.stack([p[1] for p in parts]),
        np.asarray([p[2] for p in parts], dtype=np.float64),
    )


def generate(
    spec: SpinDataSpec, split: str, n: int, *, workers: int = 1, show_progress: bool = True
) -> dict[str, np.ndarray]:
    """Generate ``n`` instances of ``split``: ``couplings (n, 2, L, L)`` float32, ``spins (n, L, L)`` int8
    (ground states, first site +1) and ``energies (n,)`` float64 (their exact energies).

    >>> d = generate(SpinDataSpec(size=4), "test", 3, show_progress=False)
    >>> d["couplings"].shape, d["spins"].shape, d["energies"].shape
    ((3, 2, 4, 4), (3, 4, 4), (3,))
    """
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be one of {sorted(SPLIT_CODES)}, got {split!r}")
    tasks = [(spec, split, a, min(n, a + _CHUNK)) for a in range(0, n, _CHUNK)]
    desc = f"ground states ({split}, {spec.size}x{spec.size})"
    if workers > 1 and len(tasks) > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            results = list(progress(pool.imap(_chunk, tasks), desc=desc, total=len(tasks), disable=not show_progress))
    else:
        results = [_chunk(t) for t in progress(tasks, desc=desc, total=len(tasks), disable=not show_progress)]
    if not results:
        size = spec.size
        return {
            "couplings": np.zeros((0, 2, size, size), np.float32),
            "spins": np.zeros((0, size, size), np.int8),
            "energies": np.zeros(0),
        }
    return {
        "couplings": np.concatenate([r[0] for r in results]),
        "spins": np.concatenate([r[1] for r in results]),
        "energies": np.concatenate([r[2] for r in results]),
    }


def _checksum(data: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in ("couplings", "spins", "energies"):
        digest.update(np.ascontiguousarray(data[name]).tobytes())
    return digest.hexdigest()


def _verify(data: dict[str, np.ndarray], spec: SpinDataSpec, path: Path) -> None:
    missing = sorted({"checksum", "couplings", "spins", "energies"} - set(data))
    if missing:
        raise ValueError(f"{path}: missing arrays {missing} (corrupt cache file)")
    size, n = spec.size, len(data["energies"])
    expected = {"couplings": (n, 2, size, size), "spins": (n, size, size), "energies": (n,)}
    for name, shape in expected.items():
        if data[name].shape != shape:
            raise ValueError(f"{path}: {name} has shape {data[name].shape}, expected {shape} (corrupt cache file)")
    if str(data["checksum"]) != _checksum(data):
        raise ValueError(f"{path}: checksum mismatch (corrupt cache file); delete it to regenerate")
    energies = solver.energy(data["spins"], data["couplings"], periodic=spec.periodic)
    if not np.allclose(energies, data["energies"], rtol=0, atol=1e-9):
        raise ValueError(f"{path}: stored energies do not match the stored spins; delete it to regenerate")


STALE_TEMPORARY_SECONDS = _runs.STALE_TEMPORARY_SECONDS


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files (``*.npz.tmp<pid>.npz``, ``*.json.tmp-<pid>``) of writers that are gone (or
    over a day old)."""
    removed = _runs.remove_stale_temporaries(folder, "*.npz.tmp*.npz", r"\.npz\.tmp(\d+)\.npz$")
    return removed + _runs.remove_stale_temporaries(folder, "*.json.tmp-*", r"\.json\.tmp-(\d+)$")


def _read(path: Path, spec: SpinDataSpec) -> dict[str, np.ndarray]:
    """The verified arrays of a cache file; ``ValueError`` naming the file for anything wrong with it."""
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except Exception as err:  # truncated / garbage files fail in many ways (BadZipFile, EOFError, zlib, ...)
        raise ValueError(f"{path}: unreadable cache file ({type(err).__name__}: {err})") from None
    _verify(data, spec, path)
    return data


def load_or_generate(
    spec: SpinDataSpec,
    split: str,
    n: int,
    *,
    cache_dir: str | os.PathLike | None = None,
    workers: int = 1,
    show_progress: bool = True,
    on_invalid: str = "rebuild",
) -> tuple[dict[str, np.ndarray], dict]:
    """Load split ``split`` (``n`` instances) from the cache, generating and saving it first if needed.

    A corrupt cache file (unreadable, wrong arrays, checksum or energies not matching) is deleted and
    regenerated with a ``UserWarning`` naming it (``on_invalid="rebuild"``), or raises ``ValueError`` naming it
    (``on_invalid="raise"``). Returns the arrays and an info dict (``path``, ``cached``, ``seconds``,
    ``instances_per_second``).
    """
    if on_invalid not in ("rebuild", "raise"):
        raise ValueError(f"on_invalid must be 'rebuild' or 'raise'; got {on_invalid!r}")
    folder = cache_root(cache_dir) / "spins"
    stem = f"{split}-L{spec.size}-{spec.key(split)}"
    path = folder / f"{stem}-n{n}.npz"
    if folder.is_dir():
        remove_stale_temporaries(folder)
    # any cached file of the same settings with at least n instances will do: instance i never changes
    candidates = sorted(
        (int(p.stem.rsplit("-n", 1)[1]), p)
        for p in folder.glob(f"{stem}-n*.npz")
        if p.stem.rsplit("-n", 1)[1].isdigit()
    )
    for _, candidate in ((m, p) for m, p in candidates if m >= n):
        try:
            data = _read(candidate, spec)
        except ValueError as err:
            if on_invalid == "raise":
                raise
            warnings.warn(f"spins cache file is corrupt and will be regenerated: {err}", stacklevel=2)
            candidate.unlink(missing_ok=True)
            candidate.with_suffix(".json").unlink(missing_ok=True)
            continue
        data = {k: data[k][:n] for k in ("couplings", "spins", "energies")}
        return data, {"path": str(candidate), "n": n, "cached": True, "seconds": 0.0, "instances_per_second": None}
    start = time.perf_counter()
    data = generate(spec, split, n, workers=workers, show_progress=show_progress)
    seconds = time.perf_counter() - start
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
    try:
        np.savez(tmp, checksum=np.asarray(_checksum(data)), **data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    info = {
        "path": str(path),
        "n": n,
        "cached": False,
        "seconds": seconds,
        "instances_per_second": n / seconds if seconds > 0 else None,
        "workers": workers,
    }
    _runs.write_json(path.with_suffix(".json"), {"spec": dataclasses.asdict(spec), "split": split, **info})
    return data, info
