"""Molecule experiments: QM9 / GEOM-Drugs data, molecule metrics, diffusion training (paper §6.2, App. C.2).

Modules (import the one you need; this package imports nothing heavy on its own):

- :mod:`~energyloss.experiments.molecules.data`: ragged molecule store, padded / ragged batching, element
  tables, the project's sample file format and XYZ / SDF readers;
- :mod:`~energyloss.experiments.molecules.qm9`: QM9 from the ``qm9pack`` wheel (offline) or figshare, EDM's
  split, the verified cache;
- :mod:`~energyloss.experiments.molecules.geom`: GEOM-Drugs in the ``geom_drugs_30.npy`` row format;
- :mod:`~energyloss.experiments.molecules.metrics`: bond orders, stability, RDKit validity, uniqueness,
  novelty (functional and accumulating, DDP-correct);
- :mod:`~energyloss.experiments.molecules.bonds`: bond graphs, bonds perceived from 3-D structures, QM9 with bonds
  (checked against QM9's SMILES, cached);
- :mod:`~energyloss.experiments.molecules.table3_metrics` / :mod:`~energyloss.experiments.molecules.geometry_mmd`:
  the paper's Table 3 metrics (JODO's 3-D and 2-D metrics, FCD, bond / angle / dihedral MMD);
- :mod:`~energyloss.experiments.molecules.models`: the EGNN (EDM) and the plain message-passing GNN (GDM,
  GDM-aug) denoisers, padding-safe;
- :mod:`~energyloss.experiments.molecules.diffusion_model`: EDM-style diffusion over positions, atom types and
  charges with any positional loss of the library, ancestral sampling;
- :mod:`~energyloss.experiments.molecules.train`: ``energyloss run qm9``: presets, EMA, checkpoints and resume,
  evaluation, compute-matched sweeps, torchrun data parallelism;
- :mod:`~energyloss.experiments.molecules.step_timing`: the loss's share of a training step (paper Table 10);
- :mod:`~energyloss.experiments.molecules.data_cli` / :mod:`~energyloss.experiments.molecules.eval_cli`: the
  ``energyloss data`` and ``energyloss eval-molecules`` commands.
"""
