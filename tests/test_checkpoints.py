"""Checkpoints lose nothing: a corrupted latest checkpoint is reported by path and the run falls
back to the newest intact one (or stops), a diverging run stops without overwriting the last good
checkpoint, and restoring read-only prints no orbax notice."""

import logging
import pathlib
import shutil

import pytest

from experiments import checkpoints, run
from experiments.train import TrainingDiverged
from experiment_helpers import assert_trees_equal, tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """The tiny config trained to the end (checkpoints 2, 4, 6) and its final state."""
  workdir = tmp_path_factory.mktemp("trained")
  return workdir, run.train(tiny_config(), workdir)


def files(directory: pathlib.Path) -> dict:
  """Every file under ``directory`` by relative path, with its bytes."""
  return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
          if p.is_file()}


def corrupt(step_dir: pathlib.Path, kind: str) -> None:
  if kind == "truncated_array_file":  # every array data file cut to half its length
    data = [p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data
    for p in data:
      p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
  elif kind == "empty_manifest":
    manifests = list(step_dir.rglob("manifest.ocdbt"))
    assert manifests
    for p in manifests:
      p.write_bytes(b"")
  elif kind == "empty_metadata":  # the state's tree metadata
    (step_dir / "state" / "_METADATA").write_bytes(b"")
  elif kind == "empty_step_directory":
    shutil.rmtree(step_dir)
    step_dir.mkdir()
  else:
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["truncated_array_file", "empty_manifest", "empty_metadata",
                                  "empty_step_directory"])
def test_corrupted_latest_checkpoint_falls_back_to_the_newest_intact_one(trained, tmp_path, kind,
                                                                         caplog):
  ref_dir, reference = trained
  workdir = tmp_path / "run"
  shutil.copytree(ref_dir, workdir)
  corrupt(workdir / "checkpoints" / "6", kind)
  corrupted = files(workdir / "checkpoints" / "6")
  intact = {s: files(workdir / "checkpoints" / str(s)) for s in (2, 4)}
  with caplog.at_level(logging.WARNING):
    resumed = run.train(tiny_config(), workdir)
  # Reported by path, and the fallback named.
  text = caplog.text
  assert f"{workdir.absolute() / 'checkpoints' / '6'} cannot be restored" in text
  assert f"newest intact checkpoint, {workdir.absolute() / 'checkpoints' / '4'}" in text
  # Resumed from 4 and retrained 5 and 6: exactly the uninterrupted run's result.
  assert_trees_equal(resumed, reference)
  # Nothing lost: the corrupted checkpoint is set aside byte for byte, the intact ones untouched.
  (aside,) = list((workdir / checkpoints.CORRUPTED_DIR).iterdir())
  assert aside.name.startswith("6-") and files(aside) == corrupted
  for s in (2, 4):
    assert files(workdir / "checkpoints" / str(s)) == intact[s]
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4", "6"]


def test_no_intact_checkpoint_stops_and_moves_nothing(trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained[0], workdir)
  for s in (2, 4, 6):
    corrupt(workdir / "checkpoints" / str(s), "empty_metadata")
  before = files(workdir / "checkpoints")
  with pytest.raises(checkpoints.NoIntactCheckpointError,
                     match=r"No intact checkpoint.*refusing to start over.*checkpoints/6 cannot"):
    run.train(tiny_config(), workdir)
  assert files(workdir / "checkpoints") == before
  assert not (workdir / checkpoints.CORRUPTED_DIR).exists()


def test_a_diverging_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint(trained,
                                                                                  tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained[0], workdir)
  shutil.rmtree(workdir / "checkpoints" / "6")  # the run resumes at 4 ...
  good = {s: files(workdir / "checkpoints" / str(s)) for s in (2, 4)}
  # ... with a learning rate that sends the weights past float32 range within two steps (Adam's
  # step is about lr per weight: 1e15 per layer, three layers, overflows to inf, then NaN).
  with pytest.raises(TrainingDiverged, match=r"diverged at step [56]: .*last good checkpoint "
                                             r"is step 4 in .*checkpoints/4, left untouched"):
    run.train(tiny_config(learning_rate=1e15), workdir)
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]
  for s in (2, 4):
    assert files(workdir / "checkpoints" / str(s)) == good[s]  # bitwise intact


def test_restoring_read_only_logs_no_read_only_notice(trained, caplog):
  with caplog.at_level(logging.INFO):
    _, _, state = run.restore_model(tiny_config(), trained[0])
  assert int(state.step) == 6
  assert "read only" not in caplog.text
