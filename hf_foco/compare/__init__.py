"""Optimizer studies: run a grid of pretraining runs and compare them (``hf-foco compare STUDY.yaml``).

``study`` parses a study file into runs, ``runner`` runs them as subprocesses of the pretraining job
(resumable), ``analysis`` holds the arithmetic over their logs, and ``report`` writes plots, ``report.md``
and ``summary.json``. Nothing heavy is imported here, so the CLI stays fast.
"""
