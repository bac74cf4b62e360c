"""Scores a trained model on any face source's test split, with every comparison row.

  # The bundled model on the grayscale LFW layout (several photos per person: identity too):
  python -m mask2face.evaluate --workdir=/tmp/m2f/eval_lfw \
    --config.data.source=../shared/data/lfw_gray --config.identity_metric=True
  # A training run on its own test split (its config.json, its best weights):
  python -m mask2face.evaluate --checkpoint=/tmp/m2f/unet --workdir=/tmp/m2f/eval_unet

The model, its crop settings and its data settings come from the checkpoint's config (a run's
config.json or a bundled model's); `--config.*` flags override them (source, identity
pattern, test_size, image_size is the model's and must stay). The test split is made, padded
and scored exactly as at the end of training (`mask2face.evaluation`): the model raw and
composited, the masked input, OpenCV's Telea and Navier-Stokes fills, and with
`identity_metric` dlib verification against another photo of the same person.
Writes `<workdir>/results.json` (atomically) with those rows.
"""

import functools
import time

import jax
from absl import app, flags, logging

from mask2face import (
  bookkeeping,
  bundled,
  checkpointing,
  cli,
  config_files,
  evaluation,
  input_pipeline,
  train,
)
from mask2face.unmasker import load_run


def _state(variables) -> train.TrainState:
  """A state holding only what the eval step reads (weights and BatchNorm statistics)."""
  return train.TrainState(
    step=jax.numpy.zeros((), jax.numpy.int32),
    params=variables["params"],
    batch_stats=variables.get("batch_stats", {}),
    opt_state=(),
    rng=jax.random.PRNGKey(0),
  )


def run(checkpoint: str, workdir, overrides: dict | None = None, *, which: str = "best") -> dict:
  """Evaluates `checkpoint` (a workdir or `bundled:NAME`) on its config's test split.

  Returns:
    {'checkpoint', 'source', 'rows': {row: metrics}, 'wall_secs', ...}, also written to
    `workdir/results.json`.
  """
  from mask2face import identity, losses
  from mask2face.data.masks import FAMILY_NAMES

  start = time.time()
  config, model, variables = load_run(checkpoint, which=which)
  image_size = int(config.data.image_size)
  try:
    config_files.apply_overrides(config, overrides or {})
  except (KeyError, TypeError, ValueError) as e:
    raise cli.UserError(f"--config override: {e}") from e
  if int(config.data.image_size) != image_size:
    raise cli.UserError(f"data.image_size is the model's ({image_size}); it cannot be changed")
  workdir = checkpointing.as_path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = train.create_mesh(config)
  _, eval_batches, prepared = input_pipeline.create_input_pipelines(config, workdir)
  loss_fn = functools.partial(losses.compute_loss, config.loss)
  eval_step = train.make_eval_step(model, loss_fn, mesh, num_samples=config.get("num_samples", 1))
  verifier = None
  if config.get("identity_metric", False) and identity.dlib_available():
    verifier = identity.CrossPhotoVerifier.from_prepared(prepared, config.data, split="test")
  result = evaluation.evaluate(
    eval_step,
    _state(variables),
    eval_batches("test"),
    mesh,
    family_names=FAMILY_NAMES,
    row_fns=[evaluation.comparison_row(verifier)],
    baseline={},
  )
  # The training run's fields the report CLI reads, so a folder of evaluations reports like a
  # grid (`python -m mask2face.experiments.report --root=...`).
  record = {
    "config_name": config.get("name"),
    "architecture": config.get("model_name"),
    "device_kind": jax.devices()[0].device_kind,
    "checkpoint": str(checkpoint),
    "source": config.data.source,
    "image_size": image_size,
    "test_examples": prepared.num_examples("test"),
    "identity_metric": verifier is not None,
    "rows": result.rows,
    "wall_secs": time.time() - start,
    "commit": bookkeeping.git_commit(),
  }
  if jax.process_index() == 0:
    bookkeeping.write_json_atomic(workdir / "results.json", record)
  return record


def _overrides(argv) -> dict[str, str]:
  """`--config.a.b=value` arguments as {'a.b': 'value'} (parsed per field by `run`)."""
  for arg in argv[1:]:
    if not arg.startswith("--config.") or "=" not in arg:
      raise cli.UserError(f"unknown argument {arg!r}; expected --config.KEY=VALUE")
  return config_files.parse_overrides(argv[1:])


def define_flags() -> None:
  """The CLI's flags (defined only when run as a program, so importing this module is free)."""
  flags.DEFINE_string(
    "checkpoint", bundled.PREFIX + bundled.DEFAULT, "A training workdir, or bundled:NAME."
  )
  flags.DEFINE_string("workdir", None, "Where this evaluation writes splits.json and results.")
  flags.DEFINE_enum("which", "best", ["best", "latest"], "Which checkpoint of a run.")


@cli.one_line_errors
def main(argv):
  f = flags.FLAGS
  if not f.workdir:
    raise cli.UserError("--workdir is required")
  record = run(f.checkpoint, f.workdir, _overrides(argv), which=f.which)
  for name, row in sorted(record["rows"].items()):
    shown = {k: round(v, 4) for k, v in row.items() if "/" not in k and k != "count"}
    cli.emit(f"{name:>16}: {shown}")
  cli.emit(f"{record['test_examples']} test examples, {record['wall_secs']:.0f} s: {f.workdir}")
  logging.info("Results: %s", f.workdir)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=lambda argv: flags.FLAGS(argv, known_only=True))
