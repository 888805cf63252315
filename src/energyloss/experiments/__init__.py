"""Experiments of the paper, each runnable as ``energyloss run NAME``.

Experiments use the public API of :mod:`energyloss` exactly as a user would. Shared plumbing (run folders,
tables, progress bars, seeding) lives in :mod:`energyloss.experiments.runs`.
"""
