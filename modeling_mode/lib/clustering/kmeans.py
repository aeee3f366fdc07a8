"""MODE's clustering (Ma et al., CVPR 2024, section 3.1): two-level balanced spherical k-means with faiss.

Fine: balanced k-means of L2-normalised caption embeddings into m clusters. Coarse: balanced k-means of the m fine
centres into n clusters, the data experts; each fine cluster then joins its nearest coarse centre (plain nearest, so
experts differ in size). Every pair is finally labelled with its nearest fine centre. The paper's ablations are
here too: one-step clustering straight into n, and a random split.

faiss runs on the GPU when a GPU build of faiss is installed, on the CPU otherwise. Not imported by
`modeling_mode/__init__.py` (faiss is not something Hub remote-code users have):
`import modeling_mode.lib.clustering.kmeans`.
"""

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

try:
    import faiss
except ImportError as error:  # an extra, so that no upgrade swaps a user's GPU build for the CPU one
    raise ImportError(
        "MODE's clustering needs faiss: pip install 'mode-clip[faiss-cpu]', or 'mode-clip[faiss-gpu]' with CUDA 12."
    ) from error
import numpy as np
import torch

from ..core.errors import InputError
from ..core.status import ProgressBar
from ..data.pairs import NO_CLUSTER
from .outputs import Clusters

logger = logging.getLogger(__name__)

METHODS = ("two-level", "one-step", "random")
BALANCE = "capacity-capped greedy"


def faiss_gpus() -> int:
    """How many GPUs faiss runs on here: 0 with the CPU build."""
    return faiss.get_num_gpus()


def imbalance(sizes) -> float:
    """Largest cluster over the mean cluster size: 1.0 is perfectly balanced."""
    sizes = np.asarray(sizes)
    return float(sizes.max() / sizes.mean())


def _index(centroids: np.ndarray):
    index = faiss.IndexFlatIP(centroids.shape[1])
    if faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(centroids)
    return index


def search(x: np.ndarray, centroids: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Inner products [N, k] and ids [N, k] of each row's k most similar centroids, most similar first."""
    # Named locals keep the arrays faiss reads alive for the whole call.
    x, centroids = np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(centroids, dtype=np.float32)
    return _index(centroids).search(x, k)


def nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Id of each row's nearest centroid (largest inner product: both are L2-normalised)."""
    return search(x, centroids, 1)[1][:, 0]


def balanced_assign(x: np.ndarray, centroids: np.ndarray, candidates: int = 8) -> np.ndarray:
    """Assign N points to k centroids so that every cluster gets floor(N/k) or ceil(N/k) points.

    Capacity-capped greedy assignment. First every point asks for its nearest centroid (one faiss search, exactly
    plain k-means' assignment step) and each cluster seats its most similar askers up to its capacity. The points
    turned away then list their `candidates` nearest centroids among the clusters that still have seats and, in
    rounds, propose to them in order, each cluster again seating its most similar proposers; points that run out of
    candidates are searched again among the clusters still open, with twice as many candidates each time (crowds of
    duplicate captions all want the same few clusters). Every cluster first has floor(N/k) seats; the N mod k points
    left then get one extra seat each. Each pass seats at least one point, so the loop ends, with exact sizes and
    nothing to tune.

    Why this and not dual prices (an auction, Sinkhorn): on 1M x 384 embeddings into 1024 clusters, price updates
    took hundreds of rounds to settle or oscillated, while this greedy needs a handful of passes, searches again
    only the overflow of the crowded clusters, and reached nearly the same within-cluster similarity as a tuned
    Sinkhorn in our trials. The released code's auction needs the dense N x k score matrix, so it only runs on
    file-sized chunks.
    """
    n, k = len(x), len(centroids)
    if n < k:
        raise ValueError(f"Cannot split {n} points into {k} non-empty balanced clusters: need at least {k} points.")
    labels = np.full(n, NO_CLUSTER, dtype=np.int64)
    seats = np.full(k, n // k, dtype=np.int64)
    width = candidates
    while (unplaced := np.flatnonzero(labels == NO_CLUSTER)).size:
        if not seats.any():
            seats[:] = 1  # the n % k points left over
        open_clusters = np.flatnonzero(seats)
        if unplaced.size == n:  # the first pass: nearest centroid only, faiss' fastest search
            sims, ids = search(x, centroids, 1)
        else:
            sims, ids = search(x[unplaced], centroids[open_clusters], min(width, open_clusters.size))
            ids = open_clusters[ids]
            width *= 2  # crowds of (near-)duplicates that keep missing out look further each pass
        labels[unplaced] = _fill_seats(sims, ids, seats)
    return labels


def _fill_seats(sims: np.ndarray, ids: np.ndarray, seats: np.ndarray) -> np.ndarray:
    """One greedy pass over preference lists (`sims`/`ids` [N, c], best first); `seats` is decremented in place."""
    labels = np.full(len(ids), NO_CLUSTER, dtype=np.int64)
    waiting, choice = np.arange(len(ids)), np.zeros(len(ids), dtype=np.int64)
    for _ in range(ids.shape[1]):
        wanted, similarity = ids[waiting, choice[waiting]], sims[waiting, choice[waiting]]
        order = np.lexsort((-similarity, wanted))  # by cluster, most similar proposer first
        wanted = wanted[order]
        rank = np.arange(order.size) - np.searchsorted(wanted, wanted)  # place in its cluster's queue
        accepted = rank < seats[wanted]
        labels[waiting[order[accepted]]] = wanted[accepted]
        seats -= np.bincount(wanted[accepted], minlength=seats.size)
        waiting = waiting[order[~accepted]]
        choice[waiting] += 1
        if not waiting.size:
            break
    return labels


def spherical_means(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Each cluster's L2-normalised mean: the spherical k-means update."""
    sums = torch.zeros(k, x.shape[1]).index_add_(0, torch.from_numpy(labels), torch.from_numpy(x))
    return torch.nn.functional.normalize(sums, dim=-1).numpy()


def balanced_kmeans(
    x: np.ndarray, k: int, iterations: int = 20, seed: int = 0, candidates: int = 8, progress: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means whose every assignment step is `balanced_assign`. Returns (centroids [k, d], labels [N]).

    Starts from k distinct random points; the labels returned are the balanced assignment to the final centroids.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) < k:
        raise ValueError(f"Balanced k-means into {k} clusters needs at least {k} points, got {len(x)}.")
    rng = np.random.default_rng(seed)
    centroids = x[np.sort(rng.choice(len(x), size=k, replace=False))]
    start = time.perf_counter()
    steps = ProgressBar(range(iterations), desc=f"balanced k-means, k={k}", disable=not progress, dynamic_ncols=True)
    for _ in steps:
        labels = balanced_assign(x, centroids, candidates)
        centroids = spherical_means(x, labels, k)
    labels = balanced_assign(x, centroids, candidates)
    seconds = time.perf_counter() - start
    logger.info(
        f"balanced k-means: {len(x)} points into {k} clusters, {iterations} iterations in {seconds:.1f} s "
        f"({len(x) * (iterations + 1) / seconds:.0f} point assignments/s)"
    )
    return centroids, labels


def num_fitted_clusters(method: str, num_fine_clusters: int, num_experts: int) -> int:
    """How many clusters a fit of `method` makes from the sample, so how many captioned pairs it needs at least."""
    return num_experts if method == "one-step" else num_fine_clusters


def fit_clusters(
    x: np.ndarray,
    num_fine_clusters: int,
    num_experts: int,
    method: str = "two-level",
    iterations: int = 20,
    seed: int = 0,
    candidates: int = 8,
    progress: bool = True,
) -> Clusters:
    """Fit MODE's clusters on sample embeddings `x` [N, d] (L2-normalised, no empty captions).

    `"two-level"`: the paper's method. `"one-step"`: balanced k-means straight into `num_experts` clusters (then
    m = n and each cluster is its own expert). `"random"`: pairs split at random (`num_fine_clusters` random groups,
    dealt evenly to the experts); the centroids are the groups' means, so routing is close to uniform.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    if num_experts < 1 or num_fine_clusters < num_experts:
        raise ValueError(
            f"Need 1 <= experts <= fine clusters, got {num_experts} experts and {num_fine_clusters} fine clusters."
        )
    clusters_fitted = num_fitted_clusters(method, num_fine_clusters, num_experts)
    if len(x) < clusters_fitted:
        raise InputError(
            f"The fitting sample has {len(x)} captioned pairs, fewer than the {clusters_fitted} clusters asked for: "
            "lower --fine-clusters or raise --fit-sample (pairs without a caption do not count)."
        )
    rng = np.random.default_rng(seed)
    if method == "random":
        labels = rng.permutation(len(x)) % num_fine_clusters
        fine = spherical_means(np.ascontiguousarray(x, dtype=np.float32), labels, num_fine_clusters)
        fine_to_coarse = rng.permutation(num_fine_clusters) % num_experts
        coarse = spherical_means(fine, fine_to_coarse, num_experts)
    elif method == "one-step":
        fine, labels = balanced_kmeans(x, num_experts, iterations, seed, candidates, progress)
        coarse, fine_to_coarse = fine, np.arange(num_experts)
    else:
        fine, labels = balanced_kmeans(x, num_fine_clusters, iterations, seed, candidates, progress)
        coarse, _ = balanced_kmeans(fine, num_experts, iterations, seed, candidates, progress)
        fine_to_coarse = nearest(fine, coarse)  # plain nearest, as in the paper: experts differ in size
    return Clusters(
        fine_centroids=np.asarray(fine, dtype=np.float32),
        coarse_centroids=np.asarray(coarse, dtype=np.float32),
        fine_to_coarse=np.asarray(fine_to_coarse, dtype=np.int64),
        method=method,
        fit_sizes=np.bincount(labels, minlength=len(fine)),
    )


class DistanceHistogram:
    """Squared distances of unit embeddings to their nearest fine centre (in [0, 4]), counted in fixed bins: bounded
    memory whatever the corpus's size, quantiles to within a bin (0.001). How far a MODE's own pairs lie from their
    centres is what a new pair is measured against when the MODE grows."""

    BINS = 4000

    def __init__(self):
        self.counts = np.zeros(self.BINS, dtype=np.int64)

    def add(self, squared_distances: np.ndarray) -> None:
        bins = np.clip((squared_distances / 4.0 * self.BINS).astype(np.int64), 0, self.BINS - 1)
        self.counts += np.bincount(bins, minlength=self.BINS)

    def quantiles(self, levels=(0.5, 0.9, 0.99)) -> dict[str, float] | None:
        """{"0.9": d2, ...}: the upper edge of the bin where each level of the counted distances is reached."""
        total = self.counts.sum()
        if total == 0:
            return None
        cumulative = np.cumsum(self.counts) / total
        edges = {str(level): float((np.searchsorted(cumulative, level) + 1) * 4.0 / self.BINS) for level in levels}
        return {level: round(edge, 4) for level, edge in edges.items()}


@dataclass
class KnownCentres:
    """Another clustering's fine centres (a MODE's) and the squared distance within which its own pairs lay: a new
    pair that close to one of them fits that clustering, and is left out of this one. `fitting` counts them."""

    centroids: np.ndarray
    radius: float
    fitting: int = 0

    def fits(self, x: np.ndarray) -> np.ndarray:
        """Whether each (unit) row lies within `radius` of a known centre."""
        similarity = search(x, self.centroids, 1)[0][:, 0]
        return 2.0 - 2.0 * similarity <= self.radius


def assign_shards(
    shards,
    clusters: Clusters,
    seed: int = 0,
    batch_rows: int = 65536,
    distances: DistanceHistogram | None = None,
    known: KnownCentres | None = None,
) -> Iterator[np.ndarray]:
    """Fine cluster ids (int32, -1 for pairs without a caption) of each embedding shard, in order.

    Streams: one shard is mapped at a time and read in batches, so memory does not grow with the corpus. Pairs go to
    their nearest fine centre; with the random method, to a random fine cluster (seeded per shard). `distances`, if
    given, counts each assigned pair's squared distance to its nearest centre (not with the random method). Pairs
    that fit `known` centres get -1 too, and are counted there.
    """
    if shards.embed_dim != clusters.embed_dim:
        raise InputError(
            f"The embeddings have dimension {shards.embed_dim} but the centroids {clusters.embed_dim}: they come "
            "from different encoders. Cluster with the encoder the centroids were fitted with."
        )
    index = _index(clusters.fine_centroids)
    for shard in range(shards.num_shards):
        embeddings = shards.read(shard)
        ids = np.empty(len(embeddings), dtype=np.int32)
        for start in range(0, len(embeddings), batch_rows):
            batch = np.array(embeddings[start : start + batch_rows], dtype=np.float32)
            captioned = np.any(batch != 0, axis=1)
            if known is not None:
                fitting = captioned & known.fits(batch)
                known.fitting += int(fitting.sum())
                captioned &= ~fitting
            if clusters.method == "random":
                rng = np.random.default_rng([seed, shard, start])
                found = rng.integers(clusters.num_fine_clusters, size=len(batch))
            else:
                similarity, found = (column[:, 0] for column in index.search(batch, 1))
                if distances is not None:  # unit vectors: |x - c|^2 = 2 - 2 x.c
                    distances.add(np.maximum(2.0 - 2.0 * similarity[captioned], 0.0))
            ids[start : start + len(batch)] = np.where(captioned, found, NO_CLUSTER)
        del embeddings  # unmap before the next shard
        yield ids
