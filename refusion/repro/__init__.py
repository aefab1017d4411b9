"""Reproduce the paper with our trainer: data splits, recipes, runs and result reports.

``refusion repro TASK`` (see :mod:`refusion.repro.run`) splits ``../shared/data`` as
:mod:`refusion.repro.splits` defines, trains the ablation variants with a recipe from
``refusion/configs/recipes``, scores the test split and writes ``docs/results/TASK.md``.
"""
