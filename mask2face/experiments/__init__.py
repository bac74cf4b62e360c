"""Ablation grids over the configs in `configs/`: loading (`grid`), running (`run`), tables (`report`).

A grid is a Python file in `experiments/` with a `sweep(add)` function; every `add(...)` call
is one configuration (a config file plus overrides) trained once per seed. See
`experiments/architectures.py` for an example and `python -m mask2face.experiments.run --help`.
The runner's parts: `commands` (a point's trainer command line), `prepare` (each data source
once, before the points), `devices` (each parallel run's share of the GPUs or TPU chips).
`stats`: the seed statistics of the tables (95% intervals, Welch's test against the best row).
"""
