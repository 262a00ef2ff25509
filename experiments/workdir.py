"""A workdir remembers its run: the config saved at training time, its checkpoints, its command line.

  python -m experiments.main --config=experiments/configs/toy2d.py --workdir=DIR --config.sde.name=ve
  python -m experiments.main --workdir=DIR --mode=sample      # samples the VE model: no --config needed
  python -m experiments.main --workdir=DIR --mode=sample --config.sde.name=vp   # error: names config.sde.name

``save_config`` writes ``DIR/config.json``; ``load_config`` reads it back exactly (JSON arrays
become tuples, the only sequence type ml_collections overrides). With no ``--config`` on the command
line, ``parse_flags`` points the config flag at the saved config, so ``--config.x.y=`` overrides are
parsed against the trained run's own fields. ``resolve_config`` then refuses any change to what
was trained. This module imports no JAX: ml_collections loads it as a config file.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import sys

import ml_collections

CONFIG_FILE = "config.json"
# What a checkpoint means: a change to any of these after training re-interprets the parameters.
# Everything else (seed, sampling, likelihood, eval, ...) may differ between training and evaluation.
TRAINED_SECTIONS = ("data", "sde", "model", "training", "tune")


class WorkdirError(ValueError):
  """The command line asks for something this workdir cannot give (a field or a step)."""


def _tuples(value):
  """JSON arrays back to tuples, dicts to ConfigDicts: the inverse of ``to_dict`` + JSON."""
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return ml_collections.ConfigDict({k: _tuples(v) for k, v in value.items()})
  return value


def config_to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2)


def config_from_json(text: str) -> ml_collections.ConfigDict:
  return _tuples(json.loads(text))


def first_difference(a, b, prefix: str = "config") -> str | None:
  """The dotted path of the first field where two configs differ in value or type, or None."""
  if isinstance(a, ml_collections.ConfigDict) and isinstance(b, ml_collections.ConfigDict):
    for key in sorted(set(a.keys()) | set(b.keys())):
      if key not in a or key not in b:
        return f"{prefix}.{key}"
      found = first_difference(a[key], b[key], f"{prefix}.{key}")
      if found:
        return found
    return None
  if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
    if type(a) is not type(b) or len(a) != len(b):
      return prefix
    for i, (x, y) in enumerate(zip(a, b)):
      found = first_difference(x, y, f"{prefix}[{i}]")
      if found:
        return found
    return None
  if type(a) is not type(b) or a != b:
    return prefix
  return None


def save_config(workdir, config: ml_collections.ConfigDict) -> pathlib.Path:
  """Write ``workdir/config.json`` atomically; raise if it would not read back as ``config``.

  Call once per training start (process 0). Only literal fields (str, int, float, bool, None,
  tuples of them, nested ConfigDicts) survive JSON; a list or an object field is named in the error.
  """
  text = config_to_json(config)
  back = config_from_json(text)
  where = first_difference(ml_collections.ConfigDict(config.to_dict()), back)
  if where:
    raise WorkdirError(f"{where} does not survive a round trip through {CONFIG_FILE}: use str, "
                       "int, float, bool, None or tuples of them in configs.")
  return write_text_atomically(pathlib.Path(workdir) / CONFIG_FILE, text)


def write_text_atomically(path: pathlib.Path, text: str) -> pathlib.Path:
  """Write ``path`` through a temporary file and ``os.replace``: a reader sees the old file or the
  new one, never a part."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(path.suffix + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)
  return path


def write_json_atomically(path: pathlib.Path, value) -> pathlib.Path:
  return write_text_atomically(path, json.dumps(value, indent=1))


def load_config(workdir) -> ml_collections.ConfigDict | None:
  """The config saved in ``workdir`` at training time, or None if there is none."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  if not path.exists():
    return None
  return config_from_json(path.read_text())


def get_config(workdir: str) -> ml_collections.ConfigDict:
  """ml_collections entry point: ``--config=experiments/workdir.py:DIR`` is DIR's saved config.

  Sections added to the configs after DIR was trained (sampling.guidance; noisy_classifier for
  image runs) are filled in with their defaults, so older runs can still be sampled and guided;
  nothing saved is changed.
  """
  config = load_config(workdir)
  if config is None:
    raise WorkdirError(f"{pathlib.Path(workdir) / CONFIG_FILE} does not exist; pass --config.")
  from experiments.configs import image_base, toy2d

  if "sampling" in config:
    if "guidance" not in config.sampling:
      config.sampling.guidance = ml_collections.ConfigDict()
    for key, value in toy2d.guidance_section().items():
      if key not in config.sampling.guidance:
        config.sampling.guidance[key] = value
  if "model" in config and "model_channels" in config.model and "noisy_classifier" not in config:
    config.noisy_classifier = image_base.noisy_classifier_section()
  return config


# ---------------------------------------------------------------------------------------------
# The command line.

_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)")


def _flag_value(argv, name: str) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}=") or arg.startswith(f"-{name}="):
      return arg.split("=", 1)[1]
    if arg in (f"--{name}", f"-{name}") and i + 1 < len(argv):
      return argv[i + 1]
  return None


def override_paths(argv) -> list[str]:
  """The dotted fields that ``--config.a.b=`` arguments override, in order (``a.b``)."""
  return [m.group(1) for arg in argv if (m := _OVERRIDE.match(arg))]


def with_saved_config(argv) -> list[str]:
  """``argv`` with ``--config`` pointing at the workdir's saved config when no --config is given."""
  if _flag_value(argv, "config") is not None:
    return list(argv)
  workdir = _flag_value(argv, "workdir")
  if workdir is None or not (pathlib.Path(workdir) / CONFIG_FILE).exists():
    return list(argv)
  return [argv[0], f"--config={saved_config_spec(workdir)}", *argv[1:]]


def saved_config_spec(workdir) -> str:
  return f"{pathlib.Path(__file__).resolve()}:{workdir}"


def config_is_saved(config_flag) -> bool:
  """Whether the parsed --config flag is the workdir's saved config (no --config file given)."""
  from ml_collections import config_flags

  name = config_flags.get_config_filename(config_flag)
  return name.startswith(f"{pathlib.Path(__file__).resolve()}:")


def parse_flags(argv):
  """absl ``flags_parser`` for ``app.run``: injects the saved config, checks override keys."""
  from absl import app

  # absl's own --help exits with status 1; asking for help is not an error.
  if any(a in ("--help", "-help", "-h", "-?", "--helpshort") for a in argv[1:]):
    app.usage(shorthelp=True, writeto_stdout=True, exitcode=0)
  if "--helpfull" in argv[1:]:
    app.usage(shorthelp=False, writeto_stdout=True, exitcode=0)
  argv = with_saved_config(argv)
  spec = _flag_value(argv, "config")
  paths = override_paths(argv)
  if spec is not None and paths:
    from experiments import validate

    try:
      config = _load_config_file(spec)
    except Exception:  # pylint: disable=broad-except
      config = None  # let ml_collections report a config file that does not load
    try:
      if config is not None:
        validate.check_override_keys(config, paths)
    except validate.ConfigError as e:
      print(f"FATAL Flags parsing error: {e}", file=sys.stderr)
      sys.exit(1)
  return app.parse_flags_with_usage(argv)


def _load_config_file(spec: str):
  """``get_config(*args)`` of ``path[:args]``, as ml_collections' --config flag loads it."""
  import importlib.util

  path, *args = spec.split(":", 1)
  module_spec = importlib.util.spec_from_file_location("_config_for_key_check", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(*args)


# ---------------------------------------------------------------------------------------------
# After parsing.


def resolve_config(config: ml_collections.ConfigDict | None, workdir, *, from_file: bool,
                   overrides=()) -> ml_collections.ConfigDict:
  """The config to evaluate ``workdir`` with: the command line's, checked against the saved one.

  ``config`` is the parsed --config flag (the saved config with overrides when ``from_file`` is
  False). Any difference from the saved config inside TRAINED_SECTIONS is an error naming the
  field; without a saved config (a workdir from before configs were saved) ``config`` is used.
  """
  saved = load_config(workdir)
  if saved is None:
    if config is None:
      raise WorkdirError(f"{pathlib.Path(workdir) / CONFIG_FILE} does not exist, so --config is "
                         "required.")
    return config
  if config is None:
    return saved
  for section in TRAINED_SECTIONS:
    where = first_difference(saved.get(section), config.get(section), f"config.{section}")
    if where is None:
      continue
    field = where.split("[", 1)[0]
    trained, given = _value_at(saved, field), _value_at(config, field)
    overridden = any(f"config.{p}" == field or f"config.{p}".startswith(field + ".")
                     or field.startswith(f"config.{p}.") for p in overrides)
    source = ("the command line" if overridden or not from_file else "the --config file")
    raise WorkdirError(
        f"{field} was {trained!r} when {workdir} was trained, but {source} sets it to {given!r}: "
        "a checkpoint is evaluated with the model, SDE, data and training settings it was trained "
        f"with. Omit it (the workdir remembers its run: {pathlib.Path(workdir) / CONFIG_FILE}).")
  return config


def config_from_flags(config_flag, workdir) -> ml_collections.ConfigDict:
  """``resolve_config`` for a parsed ml_collections --config flag (``FLAGS["config"]``)."""
  from ml_collections import config_flags

  config = config_flag.value
  if config is None:
    return resolve_config(None, workdir, from_file=False)
  return resolve_config(config, workdir, from_file=not config_is_saved(config_flag),
                        overrides=list(config_flags.get_override_values(config_flag)))


def _value_at(config, field: str):
  value = config
  for part in field.split(".")[1:]:
    if not isinstance(value, ml_collections.ConfigDict) or part not in value:
      return "<absent>"
    value = value[part]
  return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


def checkpoint_steps(workdir) -> list[int]:
  """The steps of the finished checkpoints in ``workdir/checkpoints``."""
  from experiments import checkpoints

  if not (pathlib.Path(workdir) / "checkpoints").is_dir():
    return []
  with checkpoints.Checkpoints(workdir, read_only=True) as manager:
    return manager.steps()


def check_checkpoint_step(workdir, step: int | None) -> int:
  """``step`` (default: the latest) if ``workdir`` has a checkpoint at it; else an error listing them."""
  steps = checkpoint_steps(workdir)
  if not steps:
    raise WorkdirError(f"No checkpoint in {pathlib.Path(workdir) / 'checkpoints'}; train first "
                       "(--mode=train).")
  if step is None:
    return steps[-1]
  if step not in steps:
    raise WorkdirError(f"--checkpoint_step={step}: no checkpoint at that step in "
                       f"{pathlib.Path(workdir) / 'checkpoints'}; available steps: "
                       f"{', '.join(map(str, steps))}.")
  return step
