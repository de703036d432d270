"""Does synthetic data help? One reproducible experiment: config → bundle → synthetic → segmenter.

An experiment is a JSON config (see ``experiments/`` and docs/experiments.md)::

    {"name": "gowt1", "data": "../../shared/data/ctc_Fluo-N2DH-GOWT1",
     "train": ["t01", "t21"], "test": ["t31", "t39"],
     "bundle": null, "learn": {"minutes": null, "mask_steps": 1400, "texture_steps": 1400},
     "synthetic": {"n": 16, "size": [512, 512], "seed": 0},
     "training": {"epochs": 200, "nimg_per_epoch": 8, "seed": 0, "backend": "cellpose3"},
     "curation": {"score_with": "real"},
     "rows": [{"name": "real"}, {"name": "synthetic", "real": [], "synthetic": 16},
              {"name": "both p_real=0.6", "synthetic": 16, "p_real": 0.6}]}

:func:`run_experiment` learns a generator bundle on the training frames only (or uses the one
named), synthesizes the synthetic pairs once (seeds ``seed, seed+1, …``; one set per ``rho`` in
3D), trains one segmenter per row from scratch with the same budget (``epochs`` ×
``nimg_per_epoch`` training crops for every row, so rows differ only in what is drawn), and
scores every model on the test frames that no model and no bundle saw (SEG, AP50, bPQ).
Curated rows keep the best synthetic pairs by the quality score of paper 003 (the ``score_with``
row's model segments each synthetic image; SEG against its own mask).

Everything lands in the output folder: ``config.json`` (the resolved config), ``bundle/``,
``synthetic*/``, ``models/``, ``rows/NAME.json`` (one file per finished row, with its key, the
command, the machine and the timings) and ``results.json`` / ``results.md`` assembled from them.
A row whose key (a hash of everything that determines it) is already there is not trained
again, so an interrupted experiment resumes and several processes can share rows
(``only=``). The bundle and synthesis stage is serialised with a file lock.

The modules: :mod:`~cellsynth.experiment.config` (reading and checking a config; its sections
are the settings dataclasses' fields, with their defaults), :mod:`~cellsynth.experiment.keys`
(row keys), :mod:`~cellsynth.experiment.runner` (the stages and the rows),
:mod:`~cellsynth.experiment.parallel` (rows side by side on several devices) and
:mod:`~cellsynth.experiment.results` (``results.json``/``.md``, paired bootstrap intervals).
"""

from cellsynth.experiment.config import (
    ExperimentConfig,
    Row,
    config_from_dict,
    load_config,
    read_config_dict,
    section_defaults,
)
from cellsynth.experiment.keys import RowKeys
from cellsynth.experiment.parallel import row_devices, run_rows_in_parallel
from cellsynth.experiment.results import (
    bootstrap_mean,
    cell_jaccards,
    paired_difference,
    results_markdown,
)
from cellsynth.experiment.runner import (
    Experiment,
    ExperimentProgress,
    machine_info,
    run_experiment,
)

__all__ = [
    "Experiment",
    "ExperimentConfig",
    "ExperimentProgress",
    "Row",
    "RowKeys",
    "bootstrap_mean",
    "cell_jaccards",
    "config_from_dict",
    "load_config",
    "machine_info",
    "paired_difference",
    "read_config_dict",
    "results_markdown",
    "row_devices",
    "run_experiment",
    "run_rows_in_parallel",
    "section_defaults",
]
