"""Hard negative mining: false positives, embeddings, exact kNN, the mined list."""

from wsi_tools.mining.knn import KnnResult, knn_search

__all__ = ["KnnResult", "knn_search"]
