"""Every config value checked before any work starts: ``validate(config, mode)``.

main.py calls it before dispatch, so a bad sampler name, a zero count or a probability of 1.5
fails in the first second with a message naming ``config.x.y`` and what was expected, instead of
after training (or as a ZeroDivisionError from inside the loop). Two layers: explicit checks of
every numeric field below, then every piece built once through ``experiments/build.py`` (which
names the key of an unknown string choice).
"""

from __future__ import annotations

import difflib
import math
import numbers
import pathlib

import ml_collections

MODES = ("train", "sample", "eval_likelihood", "train_classifier", "tune")


class ConfigError(ValueError):
  """A config value (or a config key on the command line) that cannot be run."""


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


class _Checker:
  """Checks fields of one config; a field absent from the config is skipped (configs differ)."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  def get(self, path: str):
    value = self.config
    for part in path.split("."):
      if not isinstance(value, ml_collections.ConfigDict) or part not in value:
        return _ABSENT
      value = value[part]
    return value

  def int(self, path: str, minimum: int = 1, maximum: int | None = None) -> None:
    value = self.get(path)
    if value is _ABSENT:
      return
    bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
      raise ConfigError(f"config.{path} must be an integer {bounds}, got {value!r}.")

  def real(self, path: str, *, low: float = -math.inf, high: float = math.inf,
           low_open: bool = False, high_open: bool = False) -> None:
    value = self.get(path)
    if value is _ABSENT:
      return
    ok = (_is_real(value) and math.isfinite(value)
          and (value > low if low_open else value >= low)
          and (value < high if high_open else value <= high))
    if not ok:
      lo = f"{'(' if low_open else '['}{low:g}"
      hi = f"{high:g}{')' if high_open else ']'}"
      raise ConfigError(f"config.{path} must be a finite number in {lo}, {hi}, got {value!r}.")

  def positive(self, path: str) -> None:
    self.real(path, low=0.0, low_open=True)

  def nonnegative(self, path: str) -> None:
    self.real(path, low=0.0)

  def probability(self, path: str) -> None:
    self.real(path, low=0.0, high=1.0)

  def less(self, path_lo: str, path_hi: str, *, strict: bool = True) -> None:
    lo, hi = self.get(path_lo), self.get(path_hi)
    if lo is _ABSENT or hi is _ABSENT:
      return
    if not (lo < hi if strict else lo <= hi):
      raise ConfigError(f"config.{path_lo} must be {'<' if strict else '<='} config.{path_hi}, got "
                        f"{lo!r} and {hi!r}.")


_ABSENT = object()


def _check_numbers(config: ml_collections.ConfigDict) -> None:
  """Types and ranges of every numeric field of the toy configs."""
  c = _Checker(config)
  c.int("seed", minimum=0)

  if c.get("data.name") in ("gaussian_mixture", "labelled_mixture"):
    for path in ("data.mixture_weights", "data.mixture_means", "data.mixture_variances"):
      flat = _flatten(c.get(path))
      if not flat or not all(_is_real(v) and math.isfinite(v) for v in flat):
        raise ConfigError(f"config.{path} must be a non-empty (nested) tuple of finite numbers, "
                          f"got {c.get(path)!r}.")
    if any(w < 0 for w in _flatten(c.get("data.mixture_weights"))) or not sum(
        _flatten(c.get("data.mixture_weights"))) > 0:
      raise ConfigError("config.data.mixture_weights must be >= 0 with a positive sum, got "
                        f"{c.get('data.mixture_weights')!r}.")
    if not all(v > 0 for v in _flatten(c.get("data.mixture_variances"))):
      raise ConfigError("config.data.mixture_variances must all be > 0, got "
                        f"{c.get('data.mixture_variances')!r}.")

  sde = c.get("sde.name")
  if sde in ("vp", "subvp"):
    c.nonnegative("sde.beta_min")
    c.positive("sde.beta_max")
    c.less("sde.beta_min", "sde.beta_max", strict=False)  # equal: a constant-beta VP SDE
  elif sde == "ve":
    c.positive("sde.sigma_min")
    c.positive("sde.sigma_max")
    c.less("sde.sigma_min", "sde.sigma_max")
  elif sde == "cosine_vp":
    c.positive("sde.cosine_s")

  sizes = c.get("model.hidden_sizes")
  if sizes is not _ABSENT and (not isinstance(sizes, tuple) or not sizes
                               or not all(_is_int(s) and s >= 1 for s in sizes)):
    raise ConfigError(f"config.model.hidden_sizes must be a non-empty tuple of integers >= 1, got "
                      f"{sizes!r}.")
  c.int("model.embed_dim")
  if c.get("model.time_embedding") == "sinusoidal":
    embed = c.get("model.embed_dim")
    if embed is not _ABSENT and embed % 2:
      raise ConfigError(f"config.model.embed_dim must be even for the sinusoidal embedding, got "
                        f"{embed!r}.")
  c.positive("model.fourier_scale")
  c.int("model.num_classes", minimum=0)
  if c.get("model.label_dropout") is not _ABSENT:
    c.probability("model.label_dropout")
  source = c.get("data.source")
  if source is not _ABSENT and source not in ("generated", "array", "tfds"):
    raise ConfigError(f"config.data.source must be one of 'generated', 'array', 'tfds', got "
                      f"{source!r}.")
  if source == "array":
    c.int("data.num_examples")
  if source == "tfds" and not c.get("data.tfds_name"):
    raise ConfigError("config.data.tfds_name must name a prepared TFDS dataset when "
                      "config.data.source='tfds'.")

  c.int("training.num_steps")
  c.int("training.batch_size")
  c.positive("training.learning_rate")
  c.int("training.warmup_steps", minimum=0)
  if c.get("training.lr_schedule") == "cosine":
    c.less("training.warmup_steps", "training.num_steps")
  c.nonnegative("training.grad_clip_norm")  # 0: no clipping
  c.nonnegative("training.weight_decay")
  c.probability("training.ema_decay")
  c.nonnegative("training.ema_power")
  c.positive("training.t_min")  # and < T: _check_times
  c.int("training.log_every")
  c.int("noisy_classifier.num_steps")
  c.int("noisy_classifier.warmup_steps", minimum=0)
  c.less("noisy_classifier.warmup_steps", "noisy_classifier.num_steps")
  c.int("noisy_classifier.batch_size")
  c.int("noisy_classifier.max_shift", minimum=0)
  c.positive("noisy_classifier.learning_rate")
  c.positive("noisy_classifier.t_min")
  c.int("training.checkpoint_every")
  c.int("training.keep_checkpoints")
  c.nonnegative("training.time_budget_s")
  c.real("training.adam_b1", low=0.0, high=1.0, high_open=True)

  c.int("sampling.num_samples")
  c.int("sampling.num_steps")
  c.positive("sampling.t_min")  # and < T: _check_times
  c.positive("sampling.rho")
  c.positive("sampling.snr")
  c.int("sampling.corrector_steps")
  c.int("sampling.ancestral_start_steps", minimum=0)
  if c.get("sampling.sampler") != "adaptive":
    c.less("sampling.ancestral_start_steps", "sampling.num_steps")
  c.positive("sampling.langevin_step_lr")
  c.int("sampling.langevin_steps")
  c.probability("sampling.eta")
  c.int("sampling.order", minimum=1, maximum=3)
  c.nonnegative("sampling.s_churn")
  c.nonnegative("sampling.s_tmin")
  c.nonnegative("sampling.s_tmax")
  c.less("sampling.s_tmin", "sampling.s_tmax", strict=False)
  c.positive("sampling.s_noise")
  c.positive("sampling.rtol")
  c.positive("sampling.atol")
  c.int("sampling.batch_size")
  if c.get("sampling.guidance") is not _ABSENT:
    _check_guidance(config, c)

  c.positive("eval.mmd_bandwidth")
  c.int("eval.num_projections")
  c.int("eval.floor_repeats")

  c.int("likelihood.num_samples")
  c.positive("likelihood.t_min")  # and < T: _check_times
  c.positive("likelihood.rtol")
  c.positive("likelihood.atol")
  c.int("likelihood.num_probes")
  c.int("likelihood.batch_size")
  levels = c.get("likelihood.num_levels")
  if levels is not _ABSENT and not (_is_int(levels) and (levels == 0 or levels >= 2)):
    raise ConfigError(f"config.likelihood.num_levels must be 0 (continuous data) or an integer "
                      f">= 2, got {levels!r}.")
  data_range = c.get("likelihood.data_range")
  if data_range is not _ABSENT and not (
      isinstance(data_range, tuple) and len(data_range) == 2
      and all(_is_real(v) and math.isfinite(v) for v in data_range) and data_range[0] < data_range[1]):
    raise ConfigError(f"config.likelihood.data_range must be a tuple (lo, hi) of finite numbers "
                      f"with lo < hi, got {data_range!r}.")
  c.int("likelihood.num_dequant_draws")
  c.int("likelihood.elbo_steps")


def _flatten(value) -> list:
  if isinstance(value, (tuple, list)):
    return [v for item in value for v in _flatten(item)]
  return [value]


def _check_devices(config: ml_collections.ConfigDict) -> None:
  import jax

  batch_size, devices = config.training.batch_size, jax.device_count()
  if batch_size % devices:
    raise ConfigError(f"config.training.batch_size={batch_size} must be divisible by the number of "
                      f"devices ({devices}).")


def _check_times(config: ml_collections.ConfigDict, sde) -> None:
  """Cut-off times inside (0, T) of the SDE that was built."""
  for path in ("training.t_min", "sampling.t_min", "likelihood.t_min"):
    section, name = path.split(".")
    value = config[section].get(name)
    if value is not None and not 0 < value < float(sde.T):
      raise ConfigError(f"config.{path} must lie in (0, T) = (0, {float(sde.T):g}), got {value!r}.")


def _build(section: str, fn, *args):
  """fn(*args); an error from a library constructor that names no config key gets its section."""
  try:
    return fn(*args)
  except ConfigError:
    raise
  except (ValueError, TypeError) as e:
    message = str(e)
    raise ConfigError(message if "config." in message else f"config.{section}: {message}") from e


def _check_image_numbers(config: ml_collections.ConfigDict) -> None:
  """The fields only image configs have: their types, ranges and mutual constraints."""
  from experiments import build_images

  c = _Checker(config)
  name = config.data.name
  if name == "shapes" and config.data.resolution not in (16, 32):
    raise ConfigError(f"config.data.resolution must be 16 or 32 for the shapes, got "
                      f"{config.data.resolution!r}.")
  if name == "shapes":
    c.int("data.num_train")
  c.int("data.num_test")
  if name in build_images.TFDS_DATASETS and config.data.source != "tfds":
    raise ConfigError(f"config.data.name={name!r} is a TFDS dataset: set config.data.source='tfds' "
                      "(and config.data.tfds_data_dir to where it is prepared).")
  if name in ("digits", "shapes") and config.data.source != "array":
    raise ConfigError(f"config.data.name={name!r} is generated in memory: config.data.source must "
                      f"be 'array', got {config.data.source!r}.")
  held = config.data.get("holdout_classes", ())
  if held:
    k = config.model.num_classes
    if not (isinstance(held, tuple) and all(_is_int(v) for v in held)) or not k or \
        sorted(held) != list(range(k - len(held), k)) or len(held) >= k:
      raise ConfigError(f"config.data.holdout_classes must be a tuple of the highest labels of a "
                        f"class-conditional model (config.model.num_classes={k!r}), e.g. "
                        f"({max(k - 1, 0)},), with at least one class left; got {held!r}.")
  m = config.model
  if m.name not in build_images.MODELS:
    raise ConfigError(f"config.model.name must be one of {build_images.MODELS} for image data, got "
                      f"{m.name!r}.")
  c.int("model.model_channels")
  mult = m.channel_mult
  if not (isinstance(mult, tuple) and mult and all(_is_int(v) and v >= 1 for v in mult)):
    raise ConfigError(f"config.model.channel_mult must be a non-empty tuple of integers >= 1, got "
                      f"{mult!r}.")
  c.int("model.num_res_blocks")
  height = build_images.image_shape(config)[0]
  resolutions = [height // 2**i for i in range(len(mult))]
  if height % 2 ** (len(mult) - 1):
    raise ConfigError(f"config.model.channel_mult has {len(mult)} levels, so the image side "
                      f"{height} must be divisible by {2 ** (len(mult) - 1)}.")
  attn = m.attn_resolutions
  if not isinstance(attn, tuple) or any(r not in resolutions for r in attn):
    raise ConfigError(f"config.model.attn_resolutions must be a tuple of the U-Net's resolutions "
                      f"{tuple(resolutions)}, got {attn!r}.")
  c.probability("model.dropout")
  c.positive("model.noise_scale")
  if config.training.loss not in build_images.LOSSES:
    raise ConfigError(f"config.training.loss must be one of {build_images.LOSSES}, got "
                      f"{config.training.loss!r}.")
  c.positive("training.sigma_data")
  c.positive("training.p_std")
  c.int("training.sample_every", minimum=0)
  c.int("training.sample_grid_size")
  c.int("eval.floor_repeats", minimum=2)
  if config.eval.features not in ("classifier", "inception"):
    raise ConfigError(f"config.eval.features must be 'classifier' or 'inception', got "
                      f"{config.eval.features!r}.")
  if config.eval.features == "inception":
    path = config.eval.inception_weights
    if not path or not pathlib.Path(path).expanduser().is_file():
      raise ConfigError("config.eval.features='inception' needs config.eval.inception_weights, the "
                        "path of an Inception-v3 FID weights file (pytorch-fid's "
                        "pt_inception-2015-12-05-6726825d.pth or jax-fid's "
                        f"inception_v3_weights_fid.pickle); got {path!r}, which is not a file.")
  c.int("eval.classifier_steps")
  conf = config.eval.confidence
  if not (_is_real(conf) and 0 < conf < 1):
    raise ConfigError(f"config.eval.confidence must lie in (0, 1), got {conf!r}.")


def _check_guidance(config, c) -> None:
  from experiments import build

  kind = c.get("sampling.guidance.kind")
  if kind not in build.GUIDANCE_KINDS:
    raise ConfigError(f"config.sampling.guidance.kind must be one of {build.GUIDANCE_KINDS}, got "
                      f"{kind!r}.")
  c.nonnegative("sampling.guidance.gamma")
  c.nonnegative("sampling.guidance.scale")
  c.nonnegative("sampling.guidance.sigma_lo")
  c.less("sampling.guidance.sigma_lo", "sampling.guidance.sigma_hi")
  c.int("sampling.guidance.guide_step", minimum=0)
  if kind in ("cfg", "cfgpp") and not (c.get("model.num_classes") and c.get("model.label_dropout")):
    raise ConfigError(f"config.sampling.guidance.kind={kind!r} needs a class-conditional model "
                      "trained with label dropout: config.model.num_classes > 0 and "
                      f"config.model.label_dropout > 0, got {c.get('model.num_classes')!r} and "
                      f"{c.get('model.label_dropout')!r}.")
  if kind == "cfgpp" and build.has_noise_interval(build.guidance_config(config)):
    raise ConfigError("config.sampling.guidance.kind='cfgpp' has no noise interval: leave "
                      "config.sampling.guidance.sigma_lo at 0 and sigma_hi at inf.")
  if kind == "classifier" and c.get("noisy_classifier") is _ABSENT:
    raise ConfigError("config.sampling.guidance.kind='classifier' is for image runs (their "
                      "config.noisy_classifier section: --mode=train_classifier).")
  if kind == "autoguidance" and not c.get("sampling.guidance.guide_step"):
    raise ConfigError("config.sampling.guidance.kind='autoguidance' needs "
                      "config.sampling.guidance.guide_step, the earlier checkpoint of the run whose "
                      "EMA model guides (--mode=sample).")


def _build_everything(config: ml_collections.ConfigDict) -> None:
  """Build each piece once (cheap: no network initialisation); build.py names bad string keys."""
  from experiments import build

  sde = _build("sde", build.build_sde, config)
  _check_times(config, sde)
  if build.is_image_data(config) and _is_baseline(config):
    _check_baseline(config)
  elif build.is_image_data(config):
    from experiments import build_images

    _check_image_numbers(config)
    _build("model", build_images.build_image_model, config, config.model.num_classes)
    if config.training.loss == "dsm":
      _build("model", build.build_prediction, config)
  else:
    _build("model", build.build_model, config)
    _build("model", build.build_prediction, config)
    _build("data", build.build_dataset, config)
  _build("training", build.build_weighting, config)
  _build("training", build.build_optimizer, config)
  _build("sampling", build.build_sampler, config)
  _build("sampling", build.build_time_grid, config, sde)
  _build("sampling", build.build_denoise_final, config)
  _build("likelihood", build.build_divergence, config)
  _build("likelihood", build.build_flow_variable, config, sde)
  c = config.likelihood
  estimators = ("ode",) if c.num_levels == 0 else ("ode", "ddpm_elbo")
  if c.estimator not in estimators:
    raise ConfigError(f"config.likelihood.estimator must be one of {estimators} with "
                      f"config.likelihood.num_levels={c.num_levels}, got {c.estimator!r}.")


def _is_baseline(config: ml_collections.ConfigDict) -> bool:
  from experiments import build_baselines

  return build_baselines.is_baseline(config)


# The integer fields of each family's config.model (experiments/configs/baselines.py).
_BASELINE_INTS = {
    "vae": ("latent_dim", "num_mixtures", "iwae_samples"),
    "pixelcnn": ("features", "num_blocks", "num_mixtures"),
    "flow": ("num_scales", "flow_steps", "hidden", "eval_dequantizations"),
    "gan": ("latent_dim",),
}


def _check_baseline(config: ml_collections.ConfigDict) -> None:
  """A baseline family's fields (experiments/build_baselines.py), its data and what it cannot do."""
  from experiments import build as build_lib
  from experiments import build_baselines, build_images

  c, m = _Checker(config), config.model
  for name in _BASELINE_INTS[m.name]:
    c.int(f"model.{name}")
  for name in ("encoder_features", "decoder_features", "generator_features",
               "discriminator_features"):
    value = c.get(f"model.{name}")
    if value is not _ABSENT and not (isinstance(value, tuple) and value and
                                     all(_is_int(v) and v >= 1 for v in value)):
      raise ConfigError(f"config.model.{name} must be a non-empty tuple of integers >= 1, got "
                        f"{value!r}.")
  c.probability("model.dropout")
  c.nonnegative("model.beta")
  c.nonnegative("model.r1_gamma")
  c.positive("sampling.temperature")
  kind = build_lib.guidance_config(config).kind
  if kind != "none":
    raise ConfigError(f"config.sampling.guidance.kind must be 'none' for config.model.name="
                      f"{m.name!r} (guidance steers a diffusion model's score), got {kind!r}.")
  c.int("data.num_test")
  _build("model", build_baselines.build_module, config, build_images.image_shape(config))


def _check_tune(config: ml_collections.ConfigDict) -> None:
  """config.tune (experiments/tune.py): the method, its numbers, and that the base run exists and
  was trained with this config's network and data (before any work starts)."""
  from experiments import tune

  c = _Checker(config)
  t = config.tune
  if t.method not in tune.METHODS:
    raise ConfigError(f"config.tune.method must be one of {tune.METHODS}, got {t.method!r}.")
  c.int("tune.num_shots")
  c.int("tune.shot_seed", minimum=0)
  c.int("tune.base_step", minimum=0)
  c.int("tune.num_prior")
  c.int("tune.lora_rank")
  c.nonnegative("tune.lora_alpha")
  c.int("tune.hint_channels")
  c.int("tune.control_size")
  c.int("eval.tune_num_samples", minimum=2)
  c.int("eval.tune_num_forgetting", minimum=2)
  if t.prompt_init not in ("mean", "row"):
    raise ConfigError(f"config.tune.prompt_init must be 'mean' or 'row', got {t.prompt_init!r}.")
  held = config.data.get("holdout_classes", ())
  if t.method != "controlnet" and t.label not in held:
    raise ConfigError(f"config.tune.label must be one of config.data.holdout_classes {held!r} (a "
                      f"label the base model never saw), got {t.label!r}.")
  if t.method == "controlnet" and config.model.name != "unet":
    raise ConfigError("config.tune.method='controlnet' needs a U-Net base (config.model.name="
                      f"'unet'), got {config.model.name!r}.")
  from experiments import build_images

  side = build_images.image_shape(config)[0]
  if t.method == "controlnet" and side % t.control_size:
    raise ConfigError(f"config.tune.control_size must divide the image side {side}, got "
                      f"{t.control_size!r}.")
  try:
    tune.base_config(config)
    if t.method != "controlnet":  # K must not exceed the label's training images
      tune.shots(config, build_images.build_image_data(config)[0])
  except tune.TuneError as e:
    raise ConfigError(str(e)) from None


def validate(config: ml_collections.ConfigDict, mode: str = "train") -> None:
  """Raise ConfigError naming the first bad field of ``config`` for ``--mode=mode``.

  Every mode checks the whole config: training ends by sampling, so a bad sampler name must
  stop a training run before its first step too.
  """
  if mode not in MODES:
    raise ConfigError(f"mode must be one of {MODES}, got {mode!r}.")
  _check_numbers(config)
  _build_everything(config)
  tuning = config.get("tune") is not None
  if mode == "tune" and not tuning:
    raise ConfigError("--mode=tune needs a config with a tune section "
                      "(experiments/configs/tune_digits.py:<method>).")
  if mode == "train" and tuning:
    raise ConfigError("a config with a tune section tunes a trained model: use --mode=tune.")
  if tuning:
    _check_tune(config)
  if mode in ("eval_likelihood", "train_classifier") and _is_baseline(config):
    raise ConfigError(f"--mode={mode} is for diffusion models; config.model.name="
                      f"{config.model.name!r} is a baseline family, whose test bits/dim are part of "
                      "its evaluation (eval/summary.json of --mode=train).")
  if mode == "train_classifier" and config.get("noisy_classifier") is None:
    raise ConfigError("--mode=train_classifier is for image runs: config.noisy_classifier is the "
                      "noisy classifier's section (experiments/configs/image_base.py).")
  if mode in ("train", "tune"):  # a run trained on 8 devices may be sampled on 3
    _check_devices(config)
    kind = config.sampling.get("guidance", {}).get("kind", "none")
    if kind in ("autoguidance", "classifier"):
      raise ConfigError(f"config.sampling.guidance.kind={kind!r} is for --mode=sample: its guide "
                        "(an earlier checkpoint, or the noisy classifier of --mode=train_classifier) "
                        "comes from a trained run.")


# ---------------------------------------------------------------------------------------------
# Keys given on the command line.


def _keys(config, prefix: str = "") -> list[str]:
  out = []
  for key in config.keys():
    path = f"{prefix}{key}"
    out.append(path)
    if isinstance(config[key], ml_collections.ConfigDict):
      out.extend(_keys(config[key], f"{path}."))
  return out


def check_override_keys(config: ml_collections.ConfigDict, paths) -> None:
  """Each ``--config.a.b`` override must name a field of ``config``; else the nearest ones."""
  valid = _keys(config)
  for path in paths:
    value = config
    for i, part in enumerate(path.split(".")):
      if not isinstance(value, ml_collections.ConfigDict):
        parent = ".".join(path.split(".")[:i])
        raise ConfigError(f"--config.{path}: config.{parent} is a {type(value).__name__}, not a "
                          "section with fields.")
      if part not in value:
        near = difflib.get_close_matches(path, valid, n=3, cutoff=0.6)
        parent = ".".join(path.split(".")[:i])
        where = f"config.{parent}" if parent else "the config"
        hint = (f"did you mean {', '.join('config.' + n for n in near)}?" if near else
                f"{where} has the fields {', '.join(sorted(value.keys()))}.")
        raise ConfigError(f"--config.{path}: unknown config key config.{path}; {hint}")
      value = value[part]
