"""Assembly takes only finished inputs, names the one at fault, writes its output whole or not at all, saves the
seed's CLIPProcessor with the model, and re-expresses centroids from the captions the clustering embedded."""

import hashlib
import http.server
import io
import json
import re
import shutil
import sys
import tarfile
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from datasets import Dataset, load_from_disk
from helpers import (
    CLUSTER_FLAGS,
    EXPERTS,
    PER_FILE,
    ROOT,
    caption_lists,
    cluster_tar_corpus,
    fails,
    make_image_processor,
    make_tokenizer,
    run_script,
    write_clustering,
    write_expert,
    write_run,
    write_tar_corpus,
)
from PIL import Image as PILImage
from transformers import AutoModel, AutoProcessor, CLIPProcessor

from modeling_mode import ModeCLIPModel
from modeling_mode.lib.assembly.command_line import main as assemble_main
from modeling_mode.lib.assembly.outputs import ASSEMBLY
from modeling_mode.lib.assembly.run import assemble
from modeling_mode.lib.clustering.embedding import CaptionEncoder
from modeling_mode.lib.clustering.outputs import CLUSTERS_FILE, CLUSTERS_JSON
from modeling_mode.lib.clustering.run import ClusterArguments, cluster
from modeling_mode.lib.core.errors import InputError
from modeling_mode.lib.core.files import write_json
from modeling_mode.lib.data.data_files import read_samples, write_tar_sample
from modeling_mode.lib.training.outputs import TRAINING_ARGS

REMOTE_CODE = ("configuration_mode_clip.py", "modeling_mode_clip.py", "routing.py")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("run"))


def assemble_run(inputs, output, experts=None, clusters=None, router=None, **router_settings):
    """`assemble` of `inputs`' run, or of experts forked from its seed onto `clusters` (another clustering)."""
    if experts is None and clusters is not None:
        folder = Path(output).parent / f"experts-of-{Path(clusters).name}"
        experts = [write_expert(folder / f"expert-{k}", k, inputs["seed"], Path(clusters)) for k in range(EXPERTS)]
    experts = [str(path) for path in experts or inputs["experts"]]
    clusters, router = str(clusters or inputs["clusters"]), str(router or inputs["seed"])
    return assemble(experts, clusters, router, str(output), router_space="seed-text", **router_settings)


def digest(folder: Path) -> dict:
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")}


class Killed(Exception):
    """The process dying at this point."""


def test_a_crash_while_saving_leaves_the_previous_output_or_none(inputs, tmp_path, monkeypatch):
    output, save_pretrained = tmp_path / "mode", ModeCLIPModel.save_pretrained

    def save_then_die(self, *args, **kwargs):  # config.json, weights and remote code are written, then the crash
        save_pretrained(self, *args, **kwargs)
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(ModeCLIPModel, "save_pretrained", save_then_die)
        with pytest.raises(Killed):
            assemble_run(inputs, output)
    assert not output.exists()  # no config.json (the pipeline's done marker) without the rest

    assemble_run(inputs, output)
    assert {*REMOTE_CODE, "model.safetensors", "tokenizer.json", "processor_config.json", ASSEMBLY} <= {
        p.name for p in output.iterdir()
    }
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # the remote code is cached there
    mode = AutoModel.from_pretrained(output, trust_remote_code=True)
    assert mode.config.num_experts == EXPERTS and mode.config.centroids_reexpressed
    assert not list(tmp_path.glob(".mode.*"))  # the scratch of the crashed try was cleared

    before = digest(output)
    with monkeypatch.context() as patch:
        patch.setattr(ModeCLIPModel, "save_pretrained", save_then_die)
        with pytest.raises(Killed):
            assemble_run(inputs, output, routing="released", overwrite_output_dir=True)
    assert digest(output) == before  # the previous assembly, whole


def unfinished(expert: Path, copy: Path) -> Path:
    """A copy of `expert` as a run killed before its final save leaves it: training_args.json without final_step."""
    shutil.copytree(expert, copy)
    record = json.loads((copy / TRAINING_ARGS).read_text())
    del record["run"]["final_step"]
    write_json(copy / TRAINING_ARGS, record)
    return copy


def test_an_unfinished_expert_is_refused_by_name(inputs, tmp_path):
    expert = unfinished(inputs["experts"][1], tmp_path / "expert-1")
    with pytest.raises(InputError, match=re.escape(f"Expert {str(expert)!r} is not finished: resume it")):
        assemble_run(inputs, tmp_path / "mode", experts=[inputs["experts"][0], expert])
    assert not (tmp_path / "mode").exists()


def test_experts_of_another_clustering_are_refused(inputs, tmp_path):
    """An expert whose record names another clustering's labelled pairs trained on that clustering's ids."""
    other = write_clustering(tmp_path / "other", encoder="another/encoder", seed=1)
    expert = write_expert(tmp_path / "expert-of-other", 1, inputs["seed"], other)
    with pytest.raises(InputError, match=rf"Expert '.*expert-of-other' trained on the clustering '{other}', not on"):
        assemble_run(inputs, tmp_path / "mode", experts=[inputs["experts"][0], expert])
    assert not (tmp_path / "mode").exists()


def test_an_unfinished_clustering_is_refused(inputs, tmp_path):
    clusters = tmp_path / "clusters"
    shutil.copytree(inputs["clusters"], clusters)
    # A re-clustering with other settings killed after its new centroids, before its clusters.json.
    write_clustering(tmp_path / "refit", encoder="another/encoder", seed=1)
    shutil.copy(tmp_path / "refit" / CLUSTERS_FILE, clusters / CLUSTERS_FILE)
    with pytest.raises(InputError, match="come from different clustering runs"):
        assemble_run(inputs, tmp_path / "mode", clusters=clusters)
    (clusters / CLUSTERS_JSON).unlink()  # killed before it ever wrote one
    with pytest.raises(InputError, match="holds no finished clustering run"):
        assemble_run(inputs, tmp_path / "mode", clusters=clusters)
    assert not (tmp_path / "mode").exists()


def truncated(folder: Path, copy: Path) -> Path:
    shutil.copytree(folder, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return copy


def test_an_expert_or_router_that_does_not_load_is_named(inputs, tmp_path):
    expert = truncated(inputs["experts"][1], tmp_path / "expert-1")
    with pytest.raises(InputError, match=re.escape(f"Expert {str(expert)!r}: the directory could not be loaded")):
        assemble_run(inputs, tmp_path / "mode", experts=[inputs["experts"][0], expert])
    router = truncated(inputs["seed"], tmp_path / "seed")
    with pytest.raises(InputError, match=re.escape(f"--router-text-model {str(router)!r}: the directory could not")):
        assemble_run(inputs, tmp_path / "mode", router=router)
    with pytest.raises(InputError, match=re.escape(f"{str(tmp_path / 'no-seed')!r} does not exist")):
        assemble_run(inputs, tmp_path / "mode", router=tmp_path / "no-seed")
    assert not (tmp_path / "mode").exists()


def test_an_output_that_could_not_be_replaced_whole_is_refused_before_any_work(inputs, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(InputError, match="is a file"):
        assemble_run(inputs, tmp_path / "file")
    with pytest.raises(InputError, match="which is a file"):
        assemble_run(inputs, tmp_path / "file" / "mode")
    runs = tmp_path / "runs"  # a folder of runs: assembling into it would replace it whole
    shutil.copytree(inputs["experts"][0], runs / "expert-0")
    with pytest.raises(InputError, match="holds other files and no assembled MODE"):
        assemble_run(inputs, runs)
    assert (runs / "expert-0" / "model.safetensors").is_file()


def test_an_assembled_mode_is_replaced_only_when_asked(inputs, tmp_path, capsys):
    flags = ["--clusters", inputs["clusters"], "--router-text-model", inputs["seed"], "--router", "seed-text"]
    flags += ["--output", tmp_path / "mode", "--experts", *inputs["experts"]]
    assemble_main([str(flag) for flag in flags])
    before = digest(tmp_path / "mode")
    error = fails(assemble_main, [*flags, "--routing", "released"], capsys)
    assert "holds an assembled MODE already: give a new or empty folder, or pass --overwrite_output_dir" in error
    assert digest(tmp_path / "mode") == before
    assemble_main([str(flag) for flag in [*flags, "--routing", "released", "--overwrite_output_dir"]])
    assert json.loads((tmp_path / "mode" / "config.json").read_text())["routing"] == "released"


def test_a_seed_linking_to_a_file_elsewhere_is_refused_before_any_work(tmp_path):
    run = write_run(tmp_path / "run")  # its experts forked from the seed's checkpoint step_4
    checkpoint = run["seed"] / "checkpoints" / "step_4"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text('{"step": 4}')
    (tmp_path / "private.bin").write_bytes(b"not the seed's")
    (checkpoint / "optimizer.bin").symlink_to(tmp_path / "private.bin")
    with pytest.raises(InputError, match=r"checkpoint '.*step_4': 'optimizer.bin' is a link to '.*private.bin', out"):
        assemble([str(e) for e in run["experts"]], str(run["clusters"]), str(run["seed"]), str(tmp_path / "mode"))
    assert not (tmp_path / "mode").exists() and not list(tmp_path.glob(".mode*"))


def test_bad_input_is_one_line_and_exit_status_2(inputs, tmp_path, capsys, monkeypatch):
    flags = ["--clusters", str(inputs["clusters"]), "--router-text-model", str(inputs["seed"])]
    flags += ["--router", "seed-text", "--output", str(tmp_path / "mode"), "--experts", str(inputs["experts"][0])]
    expert = unfinished(inputs["experts"][1], tmp_path / "expert-1")
    for extra, message in [
        ([str(expert)], f"Expert {str(expert)!r} is not finished: resume it"),
        ([str(inputs["experts"][1]), "--routing", "best"], "routing must be one of"),
        ([str(inputs["experts"][1]), "--router-top-k", "3"], "router_top_k must be None or in [1, num_experts=2]"),
        ([str(inputs["experts"][1]), "--push_to_hub", "--hub_model_id", "not a repo"], "--hub_model_id 'not a repo'"),
        ([str(inputs["experts"][1]), "--push_to_hub"], "--push_to_hub needs --hub_model_id"),
    ]:
        assert run_script(ROOT / "train" / "assemble.py", *flags, *extra, monkeypatch=monkeypatch) == 2
        stderr = capsys.readouterr().err
        assert stderr.startswith("error: ") and message in stderr and stderr.count("\n") == 1, stderr
    assert not (tmp_path / "mode").exists()


def test_the_assembled_mode_carries_a_clip_processor(inputs, tmp_path, monkeypatch):
    """AutoProcessor gives the seed's tokenizer and image processor as one CLIPProcessor, whose output the model
    takes as it is."""
    assemble_run(inputs, tmp_path / "mode")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # the remote code is cached there
    processor = AutoProcessor.from_pretrained(tmp_path / "mode", trust_remote_code=True)
    model = AutoModel.from_pretrained(tmp_path / "mode", trust_remote_code=True).eval()
    assert isinstance(processor, CLIPProcessor)

    texts = ["a photo of a dog", "a red car", "cat"]
    rng = np.random.default_rng(0)
    images = [PILImage.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(40, 48), (36, 30)]]
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
    seed_tokens = make_tokenizer()(texts, padding=True, return_tensors="pt")
    assert torch.equal(inputs["input_ids"], seed_tokens["input_ids"])  # ids: exact
    seed_pixels = make_image_processor()(images, return_tensors="pt").pixel_values
    assert torch.equal(inputs["pixel_values"], seed_pixels)  # the same resize and crop of the same pixels: exact
    with torch.no_grad():
        logits = model(**inputs).logits_per_image
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


def list_captioned_pairs(path: Path, n: int = 30) -> Path:
    """Pairs with two different captions each (every seventh has none): which caption is embedded matters."""
    captions = [[f"a photo of thing {i} in group {i % 4}", f"group {i % 4}, a close-up, number {i}"] for i in range(n)]
    for i in range(0, n, 7):
        captions[i] = []
    Dataset.from_dict({"caption": captions, "row": list(range(n))}).save_to_disk(str(path))
    return path


def cluster_means(embeddings: np.ndarray, fine_ids: np.ndarray, num_fine_clusters: int) -> torch.Tensor:
    sums = torch.zeros(num_fine_clusters, embeddings.shape[1])
    sums.index_add_(0, torch.from_numpy(fine_ids).long(), torch.from_numpy(embeddings))
    return torch.nn.functional.normalize(sums, dim=-1)


@pytest.mark.slow
def test_reexpressed_centroids_come_from_the_captions_the_clustering_embedded(inputs, tmp_path):
    """A real clustering embeds one seeded caption of each list, shard by shard; the assembly re-expresses each fine
    centroid from the same captions, so with the router as the clustering's encoder it gets the normalised mean of
    the clustering's own embedding rows."""
    seed, clusters, fine_clusters = str(inputs["seed"]), tmp_path / "clusters", 4
    pairs = list_captioned_pairs(tmp_path / "pairs")
    flags = dict(fine_clusters=fine_clusters, experts=EXPERTS, seed=3, shard_rows=7)  # 5 shards, 5 seeded choices
    cluster(ClusterArguments(dataset=str(pairs), encoder=seed, output=str(clusters), **flags), Accelerator())
    experts = [str(write_expert(tmp_path / f"expert-{k}", k, inputs["seed"], clusters)) for k in range(EXPERTS)]
    mode = assemble(
        experts, str(clusters), seed, str(tmp_path / "mode"), recompute_centroids=True, router_space="seed-text"
    )
    assert mode.config.centroids_reexpressed and mode.config.dropped_empty_fine_clusters == []

    labelled = load_from_disk(clusters / "dataset")
    fine = np.array(labelled["fine_id"])
    captioned = np.flatnonzero(fine >= 0)
    embedded = np.concatenate([np.load(path) for path in sorted((clusters / "embeddings").glob("shard-*.npy"))])
    expected = cluster_means(embedded[captioned], fine[captioned], fine_clusters)
    # The same captions through the same float32 text tower, batched (and so padded) otherwise: rounding only.
    torch.testing.assert_close(mode.fine_centroids, expected, rtol=0, atol=1e-5)
    # The first caption of each list gives other centroids: the caption choice is what this test checks.
    first_captions = CaptionEncoder(seed, device="cpu").encode([labelled["caption"][i][0] for i in captioned])
    assert (cluster_means(first_captions, fine[captioned], fine_clusters) - expected).abs().max() > 1e-2


@pytest.fixture(scope="module")
def streamed(inputs, tmp_path_factory) -> Path:
    """The same pairs clustered twice with the router as the encoder: `streamed/`, with --streaming from tar shards
    (labels table, no labelled copy), and `in-memory/`, from a saved Dataset of the same captions in shards of one
    data file's pairs (so that each shard embeds the same seeded choice from each caption list)."""
    root, encoder = tmp_path_factory.mktemp("streamed"), str(inputs["seed"])
    cluster_tar_corpus(write_tar_corpus(root / "corpus"), encoder, root / "streamed")
    Dataset.from_dict({"caption": caption_lists()}).save_to_disk(root / "pairs")
    flags = dict(dataset=str(root / "pairs"), shard_rows=PER_FILE, encoder=encoder, output=str(root / "in-memory"))
    cluster(ClusterArguments(**flags, **CLUSTER_FLAGS), Accelerator())
    assert not (root / "streamed" / "dataset").exists() and (root / "in-memory" / "dataset").is_dir()
    return root


@pytest.mark.slow
def test_a_streaming_clustering_reexpresses_centroids_from_its_data_files(inputs, streamed, tmp_path):
    """With no labelled copy, the captions come from the tar shards, chosen as the streaming clustering chose them
    and joined by key with its labels table: the same centroids as from the in-memory clustering of those pairs."""
    corpus = str(streamed / "corpus")
    modes = {
        name: assemble_run(inputs, tmp_path / name, clusters=streamed / name, recompute_centroids=True, dataset=corpus)
        for name in ("streamed", "in-memory")
    }
    configs = [modes[name].config for name in modes]
    assert all(config.centroids_reexpressed for config in configs)
    assert configs[0].fine_to_coarse == configs[1].fine_to_coarse
    assert configs[0].dropped_empty_fine_clusters == configs[1].dropped_empty_fine_clusters
    # The same captions through the same float32 text tower in the same process: rounding at most.
    torch.testing.assert_close(modes["streamed"].fine_centroids, modes["in-memory"].fine_centroids, rtol=0, atol=1e-5)


@contextmanager
def changed(file: Path, data: bytes | None):
    """`file` holding `data` (None: deleted) for the duration, then its own bytes again."""
    original = file.read_bytes()
    file.unlink()
    if data is not None:
        file.write_bytes(data)
    try:
        yield
    finally:
        file.write_bytes(original)


def reordered(file: Path) -> bytes:
    """The tar shard's samples, first two swapped: the same bytes in all, other keys at its first rows."""
    samples = list(read_samples(str(file)))
    with io.BytesIO() as buffer:
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for sample in [samples[1], samples[0], *samples[2:]]:
                write_tar_sample(tar, sample)
        return buffer.getvalue()


@pytest.mark.slow
def test_a_data_file_changed_since_the_streaming_clustering_is_refused_by_name(inputs, streamed, tmp_path):
    """A data file of the corpus reordered (same size), cut or deleted since the clustering: refused with its name
    before anything is written."""
    shard = streamed / "corpus" / "shard-03.tar"
    same_size = reordered(shard)
    assert len(same_size) == shard.stat().st_size  # only its content tells
    for data, error in [
        (same_size, r"data file '.*shard-03\.tar' is not the one the labels table .* was made from: as many bytes, "
                    r"other content"),
        (shard.read_bytes()[:-2048], r"data file '.*shard-03\.tar' has \d+ bytes but had \d+ when .* was made"),
        (None, r"the labels table .* labels other data files too \(\['shard-03.tar'\]"),
    ]:  # fmt: skip
        with changed(shard, data), pytest.raises(InputError, match=error) as refused:
            assemble_run(
                inputs, tmp_path / "mode", clusters=streamed / "streamed", recompute_centroids=True,
                dataset=str(streamed / "corpus"),
            )  # fmt: skip
        assert not (tmp_path / "mode").exists() and len(str(refused.value)) <= 500  # one readable line


class CountingServer(http.server.ThreadingHTTPServer):
    """An HTTP server on 127.0.0.1 that answers every request with a tar shard, and counts them."""

    def __init__(self, body: bytes):
        self.requests, self.body = [], body
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

            do_HEAD = do_GET

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.mark.slow
def test_a_hostile_labels_table_chooses_no_file_and_no_address(inputs, streamed, tmp_path):
    """A labels table travels: one edited to name a tar file outside the corpus (absolute, or climbing out with ..)
    or a URL is refused, naming the entry, before anything is read: the outside file is never opened (an audit hook
    watches every open) and the server never asked. Which files are read is --dataset's to say."""
    outside = tmp_path / "outside" / "evil.tar"
    outside.parent.mkdir()
    shutil.copyfile(streamed / "corpus" / "shard-00.tar", outside)  # a real shard, to be taken for the corpus's
    clusters = shutil.copytree(streamed / "streamed", tmp_path / "clusters")
    opened = []
    sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" and args else None)
    with CountingServer(outside.read_bytes()) as server:
        for name, why in [
            (str(outside), "it is an absolute path"),
            ("../outside/evil.tar", r"it climbs out of the corpus \(\.\.\)"),
            ("../" * 12 + str(outside).lstrip("/"), r"it climbs out of the corpus \(\.\.\)"),
            (f"{server.url}/track.tar", "it is a URL"),
            ("hf://datasets/org/other@main/evil.tar", "it is a URL"),
        ]:
            meta = json.loads((streamed / "streamed" / "labels" / "labels.json").read_text())
            meta["data_files"][0]["path"] = name
            write_json(clusters / "labels" / "labels.json", meta)
            opened.clear()
            with pytest.raises(InputError, match=f"data file 0 is named '.*', and {why}: a labels table names"):
                assemble_run(
                    inputs, tmp_path / "mode", clusters=clusters, recompute_centroids=True,
                    dataset=str(streamed / "corpus"),
                )  # fmt: skip
            assert not any("evil.tar" in path for path in opened), name
        assert server.requests == []
    assert not (tmp_path / "mode").exists()


@pytest.mark.slow
def test_re_expressing_a_streaming_clustering_needs_its_corpus_as_a_flag(inputs, streamed, tmp_path):
    """The corpus a streaming clustering read is given, never taken from its records; a copy of it anywhere will do
    (the table names files relative to the corpus root)."""
    with pytest.raises(InputError, match=r"is a streaming clustering of --dataset '.*corpus': reading its captions"):
        assemble_run(inputs, tmp_path / "mode", clusters=streamed / "streamed", recompute_centroids=True)
    copy = shutil.copytree(streamed / "corpus", tmp_path / "a" / "copy")
    mode = assemble_run(
        inputs, tmp_path / "mode", clusters=streamed / "streamed", recompute_centroids=True, dataset=str(copy)
    )
    assert mode.config.centroids_reexpressed
