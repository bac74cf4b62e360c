"""Every architecture with its own config's recipe (optimizer, schedule, loss), one budget.

What each config ships: the U-Nets at 5e-4 with warm-up, cosine decay and clipping, the
upstream port at upstream's constant 1e-4 with its loss, the others at common.py's defaults.
Read it beside `experiments/architectures.py` (one shared recipe): a row that moves between
the two grids moved by its recipe, not by its architecture.

python -m mask2face.experiments.run --grid=experiments/tuned_recipes.py --root=/tmp/m2f/tuned
python -m mask2face.experiments.report --root=/tmp/m2f/tuned
"""

from mask2face import config_files

# The same architectures, seeds and budget as the shared-recipe grid: only the recipe differs.
architectures = config_files.sibling(__file__, "architectures")
BUDGET = architectures.BUDGET
SEEDS = architectures.SEEDS
CONFIGS = architectures.CONFIGS


def sweep(add):
  for name in CONFIGS:
    add(config=f"configs/{name}.py", seeds=SEEDS)
