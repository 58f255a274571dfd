"""Building and inspecting FAISS indexes: what VectorIndex asks of FAISS itself, kept
apart from its bookkeeping of ids, slots and locks."""
from __future__ import annotations

import math

import faiss
import numpy as np

#: efSearch when the factory string gives none (FAISS's default of 16 loses recall@1)
_DEFAULT_EF_SEARCH = 64
#: a trainable index of unknown structure is assumed to hold a 256-entry codebook
_DEFAULT_CODEBOOK_SIZE = 256


def new_index(dim: int, factory: str, search_params: str = ""):
    """A fresh, empty inner-product CPU index for ``factory`` whose add_with_ids takes slot
    labels, with our nprobe/efSearch defaults and then ``search_params`` applied."""
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"cannot build FAISS index {factory!r} (dim {dim}, inner product): "
                         f"{first_line(exc)}") from exc
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = min(ivf.nlist, max(1, round(math.sqrt(ivf.nlist))))
    hnsw = find_hnsw(index)
    if hnsw is not None:
        hnsw.hnsw.efSearch = _DEFAULT_EF_SEARCH
    if search_params:
        try:
            faiss.ParameterSpace().set_index_parameters(index, search_params)
        except RuntimeError as exc:
            raise ValueError(f"search_params {search_params!r} do not apply to {factory!r}: "
                             f"{first_line(exc)}") from exc
    # IVF indexes store ids natively; the others (Flat, HNSW, PQ) need an id map.
    if ivf is None and not isinstance(index, faiss.IndexIDMap):
        index = faiss.IndexIDMap2(index)
    return index


def selector_params(index, selector):
    """Search parameters that filter by ``selector``. Typed parameters replace the index's
    own nprobe/efSearch, so they are carried over."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe, max_codes=ivf.max_codes)
    hnsw = find_hnsw(index)
    if hnsw is not None:
        return faiss.SearchParametersHNSW(sel=selector, efSearch=hnsw.hnsw.efSearch)
    return faiss.SearchParameters(sel=selector)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    # FAISS messages start with "Error in <C++ signature> at <file>:<line>: Error: '<check>' failed"
    return text.splitlines()[0] if text else type(exc).__name__


def find_hnsw(index):
    """The IndexHNSW inside ``index`` (through id maps / pre-transforms), or None."""
    index = faiss.downcast_index(index)
    while isinstance(index, (faiss.IndexIDMap, faiss.IndexPreTransform)):
        index = faiss.downcast_index(index.index)
    return index if isinstance(index, faiss.IndexHNSW) else None


def training_points_needed(index) -> int:
    """Vectors FAISS wants before training ``index`` without complaining (k-means minimum)."""
    index = faiss.downcast_index(index)
    while isinstance(index, (faiss.IndexIDMap, faiss.IndexPreTransform)):
        index = faiss.downcast_index(index.index)
    needs = []
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        needs.append(ivf.cp.min_points_per_centroid * ivf.nlist)
        index = faiss.downcast_index(ivf)
    elif isinstance(index, faiss.IndexHNSW):
        index = faiss.downcast_index(index.storage)
    pq = getattr(index, "pq", None)
    if pq is not None:
        needs.append(pq.cp.min_points_per_centroid * pq.ksub)
    if not needs:  # e.g. scalar quantizers: assume a typical 256-entry codebook
        needs.append(faiss.ClusteringParameters().min_points_per_centroid * _DEFAULT_CODEBOOK_SIZE)
    return max(needs)


def supports_remove(index) -> bool:
    try:
        index.remove_ids(faiss.IDSelectorBatch(np.empty(0, dtype=np.int64)))
    except RuntimeError:
        return False
    return True


def gpu_resources():
    """(StandardGpuResources, None) when FAISS can use a GPU here, else (None, reason)."""
    if not hasattr(faiss, "StandardGpuResources"):
        return None, "this FAISS build has no GPU support"
    try:
        count = faiss.get_num_gpus()
    except RuntimeError as exc:
        return None, f"GPU query failed: {first_line(exc)}"
    if count <= 0:
        return None, "no GPU visible"
    return faiss.StandardGpuResources(), None
