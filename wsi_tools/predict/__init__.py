"""A trained model applied to whole slides: sliding-window inference, slide scores,
probability heatmaps, and the positive regions as ASAP XML and QuPath GeoJSON.

The package: ``_cohort`` (the ``--manifest`` and slide/patient-level evaluation),
``_config`` (:class:`PredictConfig`), ``_grid`` (the pure window and
map geometry), ``_regions`` (merged polygons from the map) and ``_predict``
(:class:`Predictor`, which reads, scores and writes).
"""

from wsi_tools.predict._cohort import (
    CohortSlide,
    evaluate_cohort,
    metrics_lines,
    patient_scores,
    read_cohort,
    write_patients_table,
)
from wsi_tools.predict._config import PredictConfig
from wsi_tools.predict._grid import ProbabilityMap, SlidingGrid, sliding_grid
from wsi_tools.predict._predict import (
    PixelSettings,
    Predictor,
    SlidePrediction,
    WindowPlan,
    pixel_settings,
    slide_scores,
    write_slides_table,
)
from wsi_tools.predict._regions import Region, positive_regions

__all__ = [
    "CohortSlide",
    "evaluate_cohort",
    "metrics_lines",
    "patient_scores",
    "read_cohort",
    "write_patients_table",
    "PixelSettings",
    "PredictConfig",
    "Predictor",
    "ProbabilityMap",
    "Region",
    "SlidePrediction",
    "SlidingGrid",
    "WindowPlan",
    "pixel_settings",
    "positive_regions",
    "slide_scores",
    "sliding_grid",
    "write_slides_table",
]
