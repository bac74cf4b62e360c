"""Trains and evaluates one configuration: `python -m mask2face.main --config=... --workdir=...`.

Kept short on purpose (as in the flax examples): it parses the flags and hands the config to
`train.train_and_evaluate`, where the work happens. Any config field can be overridden on the
command line, e.g. `--config.batch_size=32 --config.data.source=../shared/data/lfw_gray`.
Rerunning the same command resumes from the last checkpoint in the workdir.
"""

from absl import app, flags
from ml_collections import config_flags

from mask2face import train

FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", None, "Where checkpoints, logs and results.json are written.")
config_flags.DEFINE_config_file(
  "config",
  None,
  "A config file from configs/, optionally with an argument: configs/unet.py:runlocal",
  lock_config=True,
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  print(f"Done: results in {FLAGS.workdir}/results.json")


if __name__ == "__main__":
  app.run(main)
