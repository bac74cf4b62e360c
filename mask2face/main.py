"""Trains and evaluates one configuration: `python -m mask2face.main --config=... --workdir=...`.

Kept short on purpose (as in the flax examples): it parses the flags, sets up the process
(multi-host initialisation, JAX's compilation cache) and hands the config to
`train.train_and_evaluate`, where the work happens. Any config field can be overridden on the
command line, e.g. `--config.batch_size=32 --config.data.source=../shared/data/lfw_gray`.
Rerunning the same command resumes from the last checkpoint in the workdir.
"""

import logging as std_logging
import os

import jax
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from mask2face import cli, train

FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", None, "Where checkpoints, logs and results.json are written.")
config_flags.DEFINE_config_file(
  "config",
  None,
  "A config file (a path, from any folder), optionally with an argument: configs/unet.py:runlocal",
  lock_config=True,
)
flags.mark_flags_as_required(["config", "workdir"])


class DropOrbaxInfo(std_logging.Filter):
  """Drops orbax's INFO (and DEBUG) records, keeping its warnings and errors.

  Orbax logs several INFO lines per checkpoint ("Closing _NonBlockingMetadataStore ...") that
  bury the progress lines. It logs through absl, so every record carries the absl logger's
  name: the file that logged it (`pathname`) is what tells orbax apart.
  """

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.WARNING:
      return True
    from_orbax = f"{os.sep}orbax{os.sep}" in record.pathname or record.name.startswith("orbax")
    return not from_orbax


def quiet_orbax() -> None:
  """Installs `DropOrbaxInfo` on absl's logger and its handler (once)."""
  for target in (logging.get_absl_logger(), logging.get_absl_handler()):
    if not any(isinstance(f, DropOrbaxInfo) for f in target.filters):
      target.addFilter(DropOrbaxInfo())


def setup_compilation_cache(cache_dir: str, min_compile_secs: float = 1.0) -> None:
  """Turns on JAX's persistent compilation cache so a rerun does not compile again, and on
  GPU XLA's autotuning cache with it (`<cache_dir>/xla_gpu_per_fusion_autotune_cache_dir`).

  Takes effect only before the process compiles anything (JAX fixes the cache at first use).
  """
  if not cache_dir:
    return
  path = os.path.expanduser(cache_dir)
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  # GPU: XLA's per-fusion autotuning results (cuDNN algorithm choices, most of a cold compile)
  # are kept beside the programs, so a new program with the same convolutions skips them.
  autotune = "xla_gpu_per_fusion_autotune_cache_dir"
  os.makedirs(os.path.join(path, autotune), exist_ok=True)  # XLA expects it to exist.
  jax.config.update("jax_persistent_cache_enable_xla_caches", autotune)


def distributed_args(environ=os.environ) -> dict[str, int]:
  """`jax.distributed.initialize` arguments from `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`.

  JAX reads `JAX_COORDINATOR_ADDRESS` itself but not these two; without them ({}) it detects
  the cluster (TPU VM pods, SLURM, Open MPI, Kubernetes) on its own.
  """
  names = {"num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}
  return {arg: int(environ[name]) for arg, name in names.items() if environ.get(name)}


@cli.one_line_errors  # A refused run (bad config, workdir in use, ...) is one line, exit 1.
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  quiet_orbax()
  config = FLAGS.config
  # Process set-up, before anything touches a device or compiles.
  if config.multihost:
    jax.distributed.initialize(**distributed_args())
  setup_compilation_cache(config.compilation_cache_dir, config.compilation_cache_min_secs)
  train.train_and_evaluate(config, FLAGS.workdir)
  if jax.process_index() != 0:
    return
  if (epath.Path(FLAGS.workdir).expanduser() / "results.json").exists():
    cli.emit(f"Done: results in {FLAGS.workdir}/results.json")
  else:  # Preempted (SIGTERM): a checkpoint was saved.
    cli.emit(f"Stopped early to be preempted: rerun the same command to resume {FLAGS.workdir}")


if __name__ == "__main__":
  app.run(main)
