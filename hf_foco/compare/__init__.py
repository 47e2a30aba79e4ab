"""Optimizer studies: run a grid of pretraining runs and compare them (``hf-foco compare STUDY.yaml``).

``study`` parses a study file into runs, ``runner`` runs them as subprocesses (resumable), ``analysis``
holds the arithmetic over their logs, ``report`` writes plots, ``report.md`` and ``summary.json``, and
``sharpness`` is the top-Hessian-eigenvalue callback the report plots beside the loss. Nothing heavy is
imported here, so the CLI stays fast.
"""
