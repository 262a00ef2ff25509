"""What the shapes' factor readers see in a model's samples against the data: one panel per factor
(shape, colour, scale, visible rotation, x, y), the samples' histogram next to the test set's.

  python experiments/figures/shape_factors.py --summary=workdirs/shapes16/eval/summary.json

``--summary`` is the JSON of a shapes run's evaluation (``eval/summary.json`` at the end of
training, or ``samples/<stem>.json`` of ``--mode=sample``); each panel's title gives the
total-variation distance of the two histograms, its floor (training images against the same test
set), the share of samples the reader reads confidently and the reader's test accuracy.
"""

import json
import pathlib

import _common
import numpy as np
from absl import app, flags

flags.DEFINE_string("summary", None, "A shapes run's evaluation JSON (eval/summary.json or "
                    "samples/<stem>.json).")
flags.mark_flag_as_required("summary")
flags.adopt_module_key_flags(_common)
FLAGS = flags.FLAGS

_TITLES = {"shape": "shape", "colour": "colour", "scale": "scale",
           "rotation": "visible rotation (not circles)", "x": "x (centroid)", "y": "y (centroid)"}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  path = pathlib.Path(FLAGS.summary)
  if not path.is_file():
    raise app.UsageError(f"--summary must be an evaluation JSON file, got {str(path)!r}.")
  summary = json.loads(path.read_text())
  table = summary.get("factors")
  if not table:
    raise app.UsageError(f"--summary={str(path)!r} has no 'factors' entry: it is not the "
                         "evaluation of a shapes model.")
  plt = _common.pyplot()
  fig, axes = plt.subplots(2, 3, figsize=(13, 6.8))
  for ax, (factor, title) in zip(axes.ravel(), _TITLES.items()):
    entry = table[factor]
    k = np.arange(len(entry["classes"]))
    ax.bar(k - 0.2, entry["data_histogram"], 0.4, label="test set")
    ax.bar(k + 0.2, entry["histogram"], 0.4, label="samples")
    ax.set_xticks(k)
    ax.set_xticklabels(entry["classes"], rotation=60 if len(k) > 6 else 0, fontsize=8)
    ax.set_ylabel("share read")
    confident = entry["confident_fraction"]
    ax.set_title(f"{title}\nTV {entry['tv']:.3f} (floor {entry['tv_floor']:.3f}), "
                 f"{100 * (confident or 0):.0f}% conf., reader {100 * entry['reader_test_accuracy']:.1f}%",
                 fontsize=9)
  axes[0, 0].legend(fontsize=8)
  fig.suptitle(f"Factor readers on {summary.get('num_scored', '?')} samples: "
               f"{100 * summary['valid_fraction']:.1f}% valid (every reader confident; "
               f"test-set level {100 * summary['valid_fraction_floor']:.1f}%)")
  fig.tight_layout()
  _common.write(FLAGS.out, "shape_factors", fig,
                {"summary": str(path), "factors": table,
                 **{k: summary[k] for k in ("valid_fraction", "valid_fraction_floor",
                                            "valid_fraction_floor_std")}})


if __name__ == "__main__":
  _common.run(main)
