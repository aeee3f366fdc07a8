"""The main job: the offline corpus, the whole pipeline in smoke mode, resumed, and on Hub ids."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_image_processor, make_tokenizer, tiny_clip_config
from hub_server import LocalHub
from huggingface_hub import HfApi
from transformers import CLIPModel

from hub_cards import model_card
from modeling_mode.lib import cli
from modeling_mode.lib.corpus import SOURCES, caption_pairs, classification_set, retrieval_set
from modeling_mode.lib.errors import InputError
from modeling_mode.lib.job import (
    SMOKE,
    Job,
    Sources,
    check_sources,
    clip_config,
    latest_progress_bar,
    load_recipe,
    record_settings,
    run,
    training_stages,
)
from modeling_mode.lib.training import is_finished, latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]

# A recipe for a pretrained seed (no `model`): the schedule only, each stage seconds.
TINY_RECIPE = dict(fine_clusters=6, experts=[2], batch_size=16, seed_steps=4, expert_steps=2, warmup_steps=1,
                   learning_rate=1e-3)  # fmt: skip


def test_corpus_captions_come_from_labels_with_the_stated_noise():
    sources = [load(split="train", count=400, seed=0) for load in SOURCES.values()]
    pairs = caption_pairs(sources, noise=0.25, seed=0)
    assert len(pairs) == 1200 and set(pairs["source"]) == set(SOURCES)
    clean = pairs.filter(lambda row: not row["noisy"])
    assert all(label in caption for label, caption in zip(clean["label"], clean["caption"]))
    assert 0.15 < sum(pairs["noisy"]) / len(pairs) < 0.3  # 25% swapped, a few onto an identical caption
    held_out = classification_set(SOURCES["easy_vqa"](split="test", count=50, seed=0))
    assert held_out.features["label"].names[0] == "black circle" and len(held_out) == 50


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """The smoke job, killed in its seed's training right after the step-4 checkpoint, then run again to the end."""
    output = tmp_path_factory.mktemp("job") / "offline-mix"
    command = [sys.executable, str(ROOT / "train" / "job.py"), "--output", str(output), "--smoke"]
    killer = f"{sys.executable} {ROOT / 'tests' / 'killing_launcher.py'} 4"
    killed = subprocess.run(command + ["--launcher", killer], capture_output=True, text=True, timeout=900)
    assert killed.returncode != 0 and "stage seed failed" in killed.stderr, killed.stderr[-3000:]
    assert not is_finished(output / "seed") and latest_checkpoint(output / "seed").endswith("step_4")
    first = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "seed: train: 100%|" in first.stderr  # the job's bar shows each stage's own
    timings = json.loads((output / "timings.json").read_text())
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    return output, timings, again.stdout + again.stderr


def test_smoke_run_trains_evaluates_and_reports(smoke_run):
    output, timings, _ = smoke_run
    report = (output / "report.md").read_text()
    for row in ("mode-minilm-2 routed (paper)", "mode-minilm-2 uniform", "mode-minilm-2 best expert", "dense-2"):
        assert f"| {row} |" in report
    assert "| mode-random-2 routed (paper) |" in report and "| mode-seedtext-2 routed (paper) |" in report
    for plot in ("cluster_sizes.png", "routing_weights.png", "accuracy.png"):
        assert (output / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    weights = json.loads((output / "results" / "mode-minilm-2" / "zeroshot-mnist.json").read_text())["routing_weights"]
    assert sum(weights["MODE paper"]) == pytest.approx(1.0)
    assert {"data", "seed", "cluster-minilm-2", "expert-minilm-2-1", "dense-2", "retrieval-seed"} <= timings.keys()
    card = model_card(output / "models" / "mode-minilm-2", "org/mode-minilm-2")  # with the run's own numbers
    rows = json.loads((output / "models" / "mode-minilm-2" / "eval_results.json").read_text())
    routed = next(
        r for r in rows if Path(r["dataset"]).name == "mnist" and (r["model"], r["metric"]) == ("MODE paper", "top1")
    )
    assert f"| mnist | test | top1 | MODE paper | {routed['value']} |" in card.text


def test_a_killed_training_stage_resumes_from_its_last_checkpoint(smoke_run):
    output, _, _ = smoke_run
    seed = json.loads((output / "seed" / "training_args.json").read_text())["run"]
    assert seed["resumed_from"] == [str(output / "seed" / "checkpoints" / "step_4")]
    assert seed["final_step"] == SMOKE["seed_steps"]


def test_a_rerun_resumes_from_the_stages_outputs(smoke_run):
    output, timings, log = smoke_run
    assert json.loads((output / "timings.json").read_text()) == timings  # nothing ran again
    assert log.count("done before, skipped") == len(timings)


def upload_dataset(api: HfApi, repo_id: str, splits: dict, folder: Path) -> None:
    """A Hub dataset repo as users publish one: a parquet file per split under data/."""
    for split, dataset in splits.items():
        dataset.to_parquet(folder / repo_id / "data" / f"{split}-00000-of-00001.parquet")
    api.create_repo(repo_id, repo_type="dataset")
    api.upload_folder(folder_path=folder / repo_id, repo_id=repo_id, repo_type="dataset")


@pytest.fixture(scope="module")
def hub_run(tmp_path_factory):
    """The job on Hub ids: a user's pairs (in their own column names), held-out sets and a pretrained CLIP."""
    folder = tmp_path_factory.mktemp("online")
    shapes = SOURCES["easy_vqa"]
    pairs = caption_pairs([shapes(split="train", count=120, seed=0)], noise=0.1, seed=0)
    held_out = retrieval_set([shapes(split="test", count=12, seed=1)], seed=0)
    (folder / "tiny.json").write_text(json.dumps(TINY_RECIPE))
    (folder / "templates.json").write_text(json.dumps(["a {c}."]))
    with pytest.MonkeyPatch.context() as patch, LocalHub() as hub:
        patch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # a Hub on 127.0.0.1, and nowhere else
        api = HfApi(endpoint=hub.url, token="hf_test")
        upload_dataset(api, "org/pairs", {"train": pairs.rename_columns({"image": "jpg", "caption": "txt"})}, folder)
        upload_dataset(api, "org/shapes", {"test": classification_set(shapes(split="test", count=40, seed=0))}, folder)
        upload_dataset(api, "org/shapes-captions", {"test": held_out.rename_column("caption", "txt")}, folder)
        for part in (CLIPModel(tiny_clip_config()), make_tokenizer(), make_image_processor()):
            part.save_pretrained(folder / "tiny-clip")
        api.create_repo("org/tiny-clip")
        api.upload_folder(folder_path=folder / "tiny-clip", repo_id="org/tiny-clip")
        output = folder / "job"
        command = [
            sys.executable, str(ROOT / "train" / "job.py"), "--recipe", str(folder / "tiny.json"),
            "--output", str(output), "--dataset", "org/pairs", "--image-column", "jpg", "--caption-column", "txt",
            "--init", "org/tiny-clip", "--zeroshot-dataset", "shapes=org/shapes",
            "--templates", f"shapes={folder / 'templates.json'}",
            "--retrieval-dataset", "org/shapes-captions:test",
        ]  # fmt: skip
        run = subprocess.run(command, env=hub.client_env(folder / "hf_home"), capture_output=True, text=True)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        yield output, list(hub.requests)


def test_hub_ids_run_the_same_stages_on_the_users_data_and_seed(hub_run):
    output, requests = hub_run
    downloads = [r for r in requests if r.startswith("GET") and "/resolve/" in r]
    assert any(r.startswith("GET /datasets/org/pairs/resolve/") and r.endswith(".parquet") for r in downloads)
    assert any(r.startswith("GET /org/tiny-clip/resolve/") and r.endswith("model.safetensors") for r in downloads)
    assert not (output / "data" / "pairs").exists() and not (output / "data" / "eval").exists()  # nothing offline

    seed = json.loads((output / "seed" / "training_args.json").read_text())["run"]
    assert (seed["start"], seed["base_model"]) == ("weights", "org/tiny-clip")
    expert = json.loads((output / "models" / "mode-minilm-2" / "config.json").read_text())["expert_config"]
    assert expert["text_config"]["vocab_size"] == tiny_clip_config().text_config.vocab_size  # the Hub CLIP's
    results = json.loads((output / "results" / "mode-minilm-2" / "zeroshot-shapes.json").read_text())
    assert (results["num_images"], results["num_classes"], results["dataset"]) == (40, 24, "org/shapes")
    assert results["num_templates"] == 1  # the task's own templates
    retrieval = json.loads((output / "results" / "dense-2" / "retrieval.json").read_text())
    assert (retrieval["num_images"], retrieval["dataset"], retrieval["split"]) == (12, "org/shapes-captions", "test")

    report = (output / "report.md").read_text()
    assert "| mode-minilm-2 routed (paper) | " in report and "| dense-2 | " in report
    assert "Training pairs: `org/pairs` (train); the seed started from org/tiny-clip." in report
    recorded = json.loads((output / "recipe.json").read_text())
    assert recorded["sources"]["zeroshot"] == {"shapes": ["org/shapes", "test"]}


def test_bad_recipes_and_sources_are_named(tmp_path):
    with pytest.raises(InputError, match="unknown recipe 'web'"):
        load_recipe("web")
    (tmp_path / "short.json").write_text(json.dumps({"fine_clusters": 8}))
    with pytest.raises(InputError, match="short.json is not a recipe .*experts"):
        load_recipe(str(tmp_path / "short.json"))
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_RECIPE))
    name, recipe = load_recipe(str(tmp_path / "tiny.json"))
    assert (name, recipe.experts, recipe.caption_noise) == ("tiny", (2,), 0.1)
    with pytest.raises(InputError, match="no `model` to train from random weights"):
        clip_config(recipe)
    command = [sys.executable, str(ROOT / "train" / "job.py"), "--output", str(tmp_path / "job")]
    bad = subprocess.run(command + ["--zeroshot-dataset", "cifar10"], capture_output=True, text=True)
    expected = "error: --zeroshot-dataset 'cifar10': expected TASK=DATASET[:SPLIT], e.g. cifar10=uoft-cs/cifar10.\n"
    assert (bad.returncode, bad.stderr) == (2, expected)
    bad = subprocess.run(command + ["--templates", "cifar10"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--templates 'cifar10': expected TASK=FILE|SET" in bad.stderr
    sources = Sources(dataset="org/pairs", zeroshot={"cifar10": ("x", "test")}, retrieval=("y", "test"))
    with pytest.raises(InputError, match=r"--templates for \['cifar100'\]: the zero-shot tasks are \['cifar10'\]"):
        check_sources(dataclasses.replace(sources, templates={"cifar100": "cifar100"}), "an/encoder")
    with pytest.raises(InputError, match="--init './seed' does not exist"):
        check_sources(dataclasses.replace(sources, init="./seed"), "an/encoder")


SMOKE_MODEL = dict(width=32, layers=1, heads=2, image_size=32, patch_size=8)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"experts": [0]}, r"experts must list MODE sizes n with 1 <= n <= fine_clusters \(6\)"),
        ({"experts": [2, 8]}, r"got experts=\[2, 8\]"),
        ({"fine_clusters": 1000}, r"the training pairs are 30: fewer than the recipe's fine_clusters \(1000\)"),
        ({"seed_steps": -5}, r"seed_steps must be an integer >= 1, got -5"),
        ({"learning_rate": 0}, r"learning_rate must be > 0"),
        ({"model": dict(SMOKE_MODEL, depth=2)}, r"is not a model size: .*'depth'"),
    ],
)
def test_recipe_errors_are_found_before_any_work(tmp_path, fields, message):
    recipe = tmp_path / "bad.json"
    recipe.write_text(json.dumps({**TINY_RECIPE, "model": SMOKE_MODEL, "train_per_source": 10, **fields}))
    with pytest.raises(InputError, match=message):
        run(str(recipe), tmp_path / "job")
    assert not (tmp_path / "job").exists()  # refused before the job wrote anything


def test_prompts_and_outputs_are_checked_before_any_work(tmp_path):
    (tmp_path / "templates.json").write_text(json.dumps(["a photo of a thing."]))
    templates = Sources(templates={"mnist": str(tmp_path / "templates.json")})
    with pytest.raises(InputError, match=r"prompt template 'a photo of a thing.' has no \{c\}"):
        run("offline-mix", tmp_path / "job", templates, smoke=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="--output .* is inside .*file'?, which is a file"):
        run("offline-mix", tmp_path / "file" / "job", smoke=True)
    assert not (tmp_path / "job").exists()


def test_a_job_resumes_only_with_the_settings_it_started_with(tmp_path):
    recorded = tmp_path / "recipe.json"
    record_settings(recorded, {"name": "offline-mix", "seed_steps": 600}, Sources(launcher=("python",)))
    record_settings(recorded, {"name": "offline-mix", "seed_steps": 600}, Sources(launcher=("accelerate", "launch")))
    with pytest.raises(InputError, match=r"other settings \(seed_steps, sources.dataset\): resume it with those"):
        record_settings(recorded, {"name": "offline-mix", "seed_steps": 900}, Sources(dataset="org/pairs"))


def test_the_jobs_progress_shows_the_running_stages_own_bar():
    output = "loading\ntrain:  10%|#  | 1/10 [00:01<00:09]\rtrain:  20%|## | 2/10 [00:02<00:08]\rtrain:  3"
    assert latest_progress_bar(output) == "train:  20%|## | 2/10 [00:02<00:08]"
    assert latest_progress_bar("no bar yet\n") is None


def test_every_stage_command_is_its_scripts_arguments_and_parses_back(tmp_path):
    from modeling_mode.lib.assembly import AssembleArguments
    from modeling_mode.lib.cli import parse
    from modeling_mode.lib.cluster_run import ClusterArguments
    from modeling_mode.lib.training import ExpertTrainingArguments

    job = Job(tmp_path / "job", dataclasses.replace(load_recipe("offline-mix")[1], **SMOKE), Sources())
    stages = {name: action for name, _, action in training_stages(job, "an/encoder")}
    scripts = {"expert.py": ExpertTrainingArguments, "cluster.py": ClusterArguments, "assemble.py": AssembleArguments}
    for name, action in stages.items():
        if callable(action):  # the data stage runs in the job's own process
            continue
        arguments = parse(scripts[Path(action[1]).name], "", [str(part) for part in action[2:]])
        assert cli.command_line(arguments) == [str(part) for part in action[2:]], name
    seed = parse(ExpertTrainingArguments, "", [str(part) for part in stages["seed"][2:]])
    assert (seed.resume, seed.stop_at_step, seed.max_steps) == (True, SMOKE["seed_steps"], 9)
    expert = parse(ExpertTrainingArguments, "", [str(part) for part in stages["expert-minilm-2-1"][2:]])
    assert (expert.cluster, expert.init) == ("1", str(job.output / "seed" / "checkpoints" / "step_6"))
    assert parse(ClusterArguments, "", [str(part) for part in stages["cluster-random-2"][2:]]).random
