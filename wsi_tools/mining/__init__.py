"""Hard negative mining: false positives, embeddings, exact kNN, the mined list.

``knn_search`` (``knn.py``) is the exact streamed search; ``run_mining``
(``mine.py``) is steps 2-3 of the method for a trained weak model.
"""

from wsi_tools.mining.knn import KnnResult, knn_search
from wsi_tools.mining.mine import (
    FalsePositives,
    MinedPatch,
    MiningConfig,
    MiningResult,
    find_false_positives,
    nearest_weak_patches,
    run_mining,
)

__all__ = [
    "FalsePositives",
    "KnnResult",
    "MinedPatch",
    "MiningConfig",
    "MiningResult",
    "find_false_positives",
    "knn_search",
    "nearest_weak_patches",
    "run_mining",
]
