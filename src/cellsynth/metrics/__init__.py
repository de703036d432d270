"""Stage 8: segmentation and realism metrics, one definition each (see docs/metrics.md).

* :mod:`~cellsynth.metrics.segmentation` — CTC SEG, AP at IoU thresholds (Cellpose), binary
  panoptic quality; evaluation of a predicted data set against a reference one.
* :mod:`~cellsynth.metrics.morphology` — from label images alone: cell layout (touching cells,
  nearest neighbours, density) and the W1/KS distances between per-cell feature distributions
  of two sets (synthetic-to-real next to real-to-real).
* :mod:`~cellsynth.metrics.texture` — from the pixels: per-cell texture, seams between cells,
  background noise and illumination, adjacent-slice correlation in 3D.
* :mod:`~cellsynth.metrics.learned` — learned features: Cellpose style vectors, Fréchet
  distance, a classifier two-sample test.
"""

from cellsynth.metrics.learned import (
    TwoSampleTest,
    classifier_two_sample_test,
    frechet_distance,
    image_tiles,
    relative_image,
    style_vectors,
)
from cellsynth.metrics.morphology import (
    TOUCH_DISTANCE,
    border_labels,
    layout_summary,
    layout_table,
    realism_distances,
    touching_pairs,
)
from cellsynth.metrics.segmentation import (
    AP_THRESHOLDS,
    Evaluation,
    FrameComparison,
    Overlap,
    average_precision,
    compare_frames,
    evaluate_datasets,
    match_pairs,
    overlap,
    panoptic_quality,
    seg,
    seg_jaccards,
)
from cellsynth.metrics.texture import (
    BACKGROUND_FEATURES,
    TEXTURE_FEATURES,
    background_stats,
    background_summary,
    shared_boundaries,
    slice_correlation,
    texture_table,
)

__all__ = [
    "AP_THRESHOLDS",
    "BACKGROUND_FEATURES",
    "TEXTURE_FEATURES",
    "TOUCH_DISTANCE",
    "Evaluation",
    "FrameComparison",
    "Overlap",
    "TwoSampleTest",
    "average_precision",
    "background_stats",
    "background_summary",
    "border_labels",
    "classifier_two_sample_test",
    "compare_frames",
    "evaluate_datasets",
    "frechet_distance",
    "image_tiles",
    "layout_summary",
    "layout_table",
    "match_pairs",
    "overlap",
    "panoptic_quality",
    "realism_distances",
    "relative_image",
    "seg",
    "seg_jaccards",
    "shared_boundaries",
    "slice_correlation",
    "style_vectors",
    "texture_table",
    "touching_pairs",
]
