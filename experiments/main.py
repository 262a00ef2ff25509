"""Command line entry point: parse flags, check the config, join a multi-process job, dispatch.

  python -m experiments.main --config=experiments/configs/toy2d.py --workdir=/tmp/toy2d
  # the workdir remembers its config: sample or score it with only the settings that change
  python -m experiments.main --workdir=/tmp/toy2d --mode=sample --config.sampling.sampler=ipndm
  python -m experiments.main --workdir=/tmp/toy2d --mode=eval_likelihood --checkpoint_step=5000
  # two processes on one machine (or one per host, with the coordinator's address):
  python -m experiments.main --config=... --workdir=... --coordinator_address=127.0.0.1:1234
      --num_processes=2 --process_id=0   (the same line)
  # on a cluster that JAX detects (SLURM, Cloud TPU, ...):
  python -m experiments.main --config=... --workdir=... --distributed
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import cpu_flags, validate
from experiments import workdir as workdir_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None,
    "Path to an ml_collections config file; required to train. --mode=sample and "
    "--mode=eval_likelihood default to the config saved in --workdir at training time. Any field "
    "can be overridden with --config.<section>.<field>=VALUE.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results (required).")
flags.DEFINE_enum("mode", "train", ["train", "sample", "eval_likelihood", "train_classifier",
                                    "tune"],
                  "train: train (resuming from the latest checkpoint), then sample and evaluate; "
                  "sample: draw samples from a checkpoint; eval_likelihood: test-set "
                  "log-likelihood of a checkpoint; train_classifier: the image run's "
                  "noise-conditional classifier for classifier guidance "
                  "(config.sampling.guidance.kind=classifier); tune: train a small part of a "
                  "trained, frozen model (config.tune: experiments/configs/tune_digits.py), then "
                  "evaluate it on the held-out class and for forgetting.")
flags.DEFINE_integer("checkpoint_step", None,
                     "--mode=sample / eval_likelihood: the checkpoint to use (default: the latest).")
flags.DEFINE_bool("distributed", False,
                  "Join a multi-process job described by the cluster environment "
                  "(jax.distributed.initialize() auto-detection).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for a multi-process job.")
flags.DEFINE_integer("num_processes", None, "Number of processes in the multi-process job.")
flags.DEFINE_integer("process_id", None, "Index of this process in the multi-process job.")
flags.DEFINE_string("compilation_cache", "~/.cache/diffusion_jax/xla",
                    "JAX's persistent compilation cache directory: a rerun (resume, sample, "
                    "evaluate) reuses the compiled programs instead of compiling them again. An "
                    "empty string turns it off.")
flags.DEFINE_enum("cpu_convolutions", "xla", ["xla", "ynnpack"],
                  "Which library runs convolutions on XLA:CPU. xla (default): XLA's own, with "
                  "YNNPACK kept to matrix products; ynnpack: jaxlib's default. On this project's "
                  "2-core CPU the digits U-Net's train step (batch 128) took 0.55 s with xla and "
                  "0.79 s with ynnpack. No effect on GPU or TPU.")
flags.mark_flag_as_required("workdir")


def _enable_compilation_cache() -> None:
  import os

  import jax

  if not FLAGS.compilation_cache or jax.config.jax_compilation_cache_dir:
    return  # off, or set already (JAX_COMPILATION_CACHE_DIR)
  jax.config.update("jax_compilation_cache_dir", os.path.expanduser(FLAGS.compilation_cache))
  # Programs that compiled in under a second are cheaper to recompile than to read back.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _set_cpu_convolutions() -> None:
  """--cpu_convolutions=xla: experiments/cpu_flags.py's XLA_FLAGS option, before JAX starts."""
  if FLAGS.cpu_convolutions == "xla":
    cpu_flags.use_xla_convolutions()


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


def _config():
  """The run's config: --config (+ overrides), or for evaluation the workdir's saved one."""
  if FLAGS.mode in ("train", "tune"):
    if FLAGS.config is None:
      raise app.UsageError(f"--mode={FLAGS.mode} needs --config.")
    if FLAGS.checkpoint_step is not None:
      raise app.UsageError("--checkpoint_step is for --mode=sample and --mode=eval_likelihood.")
    return FLAGS.config
  return workdir_lib.config_from_flags(FLAGS["config"], FLAGS.workdir)


def _sample(config, step) -> None:
  from experiments import sampling

  sampling.run(config, FLAGS.workdir, step=step)  # prints what it wrote and the headline numbers


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    # Orbax logs dozens of INFO lines per checkpoint; keep the progress bar readable.
    logging.set_verbosity(logging.WARNING)
  _set_cpu_convolutions()
  _enable_compilation_cache()
  try:
    config = _config()
    _join_job()
    validate.validate(config, FLAGS.mode)
    step = (None if FLAGS.mode in ("train", "train_classifier", "tune") else
            workdir_lib.check_checkpoint_step(FLAGS.workdir, FLAGS.checkpoint_step))
  except (validate.ConfigError, workdir_lib.WorkdirError) as e:
    sys.exit(f"Error: {e}")
  from experiments import checkpoints
  from experiments import train as train_loop

  try:
    if FLAGS.mode == "train":
      from experiments import run

      run.train_and_evaluate(config, FLAGS.workdir)
    elif FLAGS.mode == "sample":
      _sample(config, step)
    elif FLAGS.mode == "eval_likelihood":
      from experiments import likelihood_eval

      likelihood_eval.run(config, FLAGS.workdir, step=step)
    elif FLAGS.mode == "tune":
      from experiments import tune

      tune.run(config, FLAGS.workdir)
    elif FLAGS.mode == "train_classifier":
      from experiments import noisy_classifier

      noisy_classifier.train(config, FLAGS.workdir)
  except (train_loop.TrainingDiverged, checkpoints.NoIntactCheckpointError) as e:
    # The message names the step and the checkpoint that is intact; a traceback adds nothing.
    sys.exit(f"Error: {e}")


if __name__ == "__main__":
  app.run(main, flags_parser=workdir_lib.parse_flags)
