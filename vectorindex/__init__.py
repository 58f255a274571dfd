"""FAISS indexes over profile vectors, one per embedding space: a library that knows
nothing of the service (the gallery feeds it from the database)."""
from vectorindex.index import PAD_SCORE, VectorIndex

__all__ = ["PAD_SCORE", "VectorIndex"]
