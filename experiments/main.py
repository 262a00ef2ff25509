"""Command line entry point: parse flags, join a multi-process job if asked, dispatch.

  python -m experiments.main --config=experiments/configs/toy2d.py --workdir=/tmp/toy2d
  python -m experiments.main --config=... --workdir=... --mode=sample
  # two processes on one machine (or one per host, with the coordinator's address):
  python -m experiments.main --config=... --workdir=... --coordinator_address=127.0.0.1:1234 \
      --num_processes=2 --process_id=0
  # on a cluster that JAX detects (SLURM, Cloud TPU, ...):
  python -m experiments.main --config=... --workdir=... --distributed
"""

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.DEFINE_enum("mode", "train", ["train", "sample", "eval_likelihood"], "What to run.")
flags.DEFINE_bool("distributed", False,
                  "Join a multi-process job described by the cluster environment "
                  "(jax.distributed.initialize() auto-detection).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for a multi-process job.")
flags.DEFINE_integer("num_processes", None, "Number of processes in the multi-process job.")
flags.DEFINE_integer("process_id", None, "Index of this process in the multi-process job.")
flags.mark_flags_as_required(["config", "workdir"])


def _join_job() -> None:
  import jax

  if FLAGS.coordinator_address:
    if FLAGS.num_processes is None or FLAGS.process_id is None:
      raise app.UsageError("--coordinator_address needs --num_processes and --process_id.")
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  elif FLAGS.distributed:
    jax.distributed.initialize()
  logging.info("Process %d of %d; %d local and %d global devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    # Orbax logs dozens of INFO lines per checkpoint; keep the progress bar readable.
    logging.set_verbosity(logging.WARNING)
  _join_job()
  if FLAGS.mode == "train":
    from experiments import run

    run.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  elif FLAGS.mode == "sample":
    from experiments import sampling

    sampling.run(FLAGS.config, FLAGS.workdir)
  elif FLAGS.mode == "eval_likelihood":
    from experiments import likelihood_eval

    likelihood_eval.run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
