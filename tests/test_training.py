"""Expert training and assembly: real Accelerate processes, real CLIPModels, real `datasets` data, no mocks."""

import io
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from logging.handlers import BufferingHandler
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from datasets import Dataset, Features, Image, Value
from helpers import (
    EXPERT,
    EXPERTS,
    FINE_CLUSTERS,
    QUIET,
    assert_same_weights,
    expert_command,
    launch_two_cpu_processes,
    make_pairs,
    reset_accelerate_state,
    tiny_clip_config,
    train_here,
)
from PIL import Image as PILImage
from safetensors.torch import load_file, save_file
from training_probe import gradients
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoProcessor,
    AutoTokenizer,
    BertConfig,
    BertModel,
    CLIPModel,
    CLIPProcessor,
    CLIPVisionModel,
    pipeline,
)

from modeling_mode.families import FAMILIES
from modeling_mode.lib.assembly.run import assemble
from modeling_mode.lib.clustering.embedding import CaptionEncoder, EmbeddingShards, shard_captions
from modeling_mode.lib.core import cli
from modeling_mode.lib.core.errors import InputError
from modeling_mode.lib.data.pairs import (
    GlobalBatchSampler,
    PairDataset,
    PairTransform,
    StreamingPairs,
    caption_mask,
    load_pairs,
    pick_caption,
    read_image,
)
from modeling_mode.lib.training.arguments import ExpertTrainingArguments
from modeling_mode.lib.training.batches import TrainingData
from modeling_mode.lib.training.loop import train
from modeling_mode.lib.training.loss import contrastive_loss, sigmoid_loss
from modeling_mode.lib.training.optimization import build_optimizer, learning_rate_at
from modeling_mode.lib.training.outputs import ADAPTER, is_finished, read_adapters
from modeling_mode.lib.training.processors import pil_image_processor
from modeling_mode.lib.training.start import random_clip, random_expert

REPO = Path(__file__).resolve().parents[1]
ASSEMBLE, PROBE = REPO / "train/assemble.py", REPO / "tests/training_probe.py"


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def caption_cluster(caption: str) -> int:
    return int(caption.split("cluster ")[1].split()[0])


def python(*args, env=None, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, *map(str, args)], capture_output=True, text=True, cwd=REPO, env=env, timeout=600
    )
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def launch_two_processes(*args) -> subprocess.CompletedProcess:
    result = launch_two_cpu_processes(*args)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def run_args(run_dir) -> dict:
    return json.loads((Path(run_dir) / "training_args.json").read_text())


@contextmanager
def training_log() -> Iterator[list[logging.LogRecord]]:
    """What the training logs in this process, for a module-scoped fixture (pytest's caplog is per test)."""
    logger, handler = logging.getLogger("modeling_mode.lib.training"), BufferingHandler(capacity=10_000)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler.buffer
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# ---------------------------------------------------------------------------------------------------- loss, optimizer


def test_contrastive_loss_is_clips_loss_on_one_process():
    torch.manual_seed(0)
    model = CLIPModel(tiny_clip_config())
    with torch.no_grad():
        model.logit_scale.fill_(2.0)
    input_ids = torch.randint(2, 500, (5, 9))
    input_ids[:, -1] = 1  # the end token, where CLIP pools the text
    outputs = model(input_ids=input_ids, pixel_values=torch.randn(5, 3, 30, 30), return_loss=True)
    loss = contrastive_loss(outputs.image_embeds, outputs.text_embeds, model.logit_scale)
    torch.testing.assert_close(loss, outputs.loss)


def test_schedule_warms_up_then_decays_to_zero_and_decay_skips_gains_biases_temperature():
    args = ExpertTrainingArguments(dataset="-", output="-", max_steps=100, warmup_steps=10, learning_rate=1e-3)
    assert learning_rate_at(0, args) == pytest.approx(1e-4)
    assert learning_rate_at(9, args) == pytest.approx(1e-3)
    assert learning_rate_at(55, args) == pytest.approx(5e-4)  # half-way through the cosine
    assert learning_rate_at(99, args) < 1e-6
    model = CLIPModel(tiny_clip_config())
    optimizer = build_optimizer(model, args)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)]: g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decay["logit_scale"] == decay["text_model.final_layer_norm.weight"] == 0
    assert decay["vision_model.embeddings.class_embedding"] == decay["text_model.encoder.layers.0.mlp.fc1.bias"] == 0
    assert decay["text_model.encoder.layers.0.mlp.fc1.weight"] == decay["visual_projection.weight"] == 0.2
    assert optimizer.defaults["lr"] == 1e-3 and optimizer.param_groups[0]["betas"] == (0.9, 0.98)
    assert optimizer.param_groups[0]["eps"] == 1e-6


# ---------------------------------------------------------------------------------------------------- data


def global_batches(coarse_ids, processes, accumulation, micro, steps, cluster=None, ratio=0.0):
    """The rows of each step's global batch, read through every simulated process's sampler."""
    per_process = [
        list(GlobalBatchSampler(coarse_ids, cluster, ratio, 0, micro, accumulation, p, processes, 0, steps))
        for p in range(processes)
    ]
    step_batches = [[] for _ in range(steps)]
    for batches in per_process:
        for i, batch in enumerate(batches):
            step_batches[i // accumulation] += [row for row, _ in batch]
    return step_batches


def test_global_batch_is_the_same_for_any_number_of_processes_and_micro_batches():
    coarse_ids = np.repeat([0, 1, -1], [14, 15, 6])  # the seed trains on the 29 captioned pairs: 3 steps an epoch
    one = global_batches(coarse_ids, processes=1, accumulation=1, micro=8, steps=9)
    assert all(len(set(rows)) == 8 for rows in one) and max(max(rows) for rows in one) < 29
    for processes, accumulation, micro in [(2, 1, 4), (2, 2, 2), (4, 2, 1)]:
        other = global_batches(coarse_ids, processes, accumulation, micro, steps=9)
        assert [sorted(rows) for rows in other] == [sorted(rows) for rows in one]
    assert one[:3] != one[3:6]  # each epoch is reshuffled


def test_pairs_without_a_usable_caption_are_never_read(tmp_path):
    text = ["a dog", "", "  ", None, "a cat"]
    images = [PILImage.new("RGB", (8, 8))] * len(text)
    Dataset.from_dict({"image": images, "caption": text}).save_to_disk(tmp_path / "text")
    assert caption_mask(load_pairs(str(tmp_path / "text")), "caption").tolist() == [1, 0, 0, 0, 1]
    saved = make_pairs(tmp_path / "lists", n=48)
    dataset, captioned = load_pairs(saved), (np.asarray(load_pairs(saved)["coarse_id"]) >= 0)
    assert (caption_mask(dataset, "caption") == captioned).all()
    rng = random.Random(0)
    assert {pick_caption([" ", "a dog", ""], rng) for _ in range(20)} == {"a dog"}  # blank entries are not drawn

    # The seed streams every captioned pair, and no other (random access drops them in `TrainingData`).
    transform = PairTransform(pil_image_processor(30), "image", "caption")
    stream = StreamingPairs(load_pairs(saved, streaming=True), transform, None, "coarse_id", 0.0, 0, 8, 0, 1)
    assert len([caption for _, caption in stream]) == captioned.sum()


def test_an_expert_sees_only_its_cluster_plus_the_asked_share(tmp_path):
    dataset = load_pairs(make_pairs(tmp_path / "pairs", n=64))
    coarse_ids = np.asarray(dataset["coarse_id"])
    inside, others = (coarse_ids == 1).sum(), ((coarse_ids >= 0) & (coarse_ids != 1)).sum()
    pairs = PairDataset(dataset, PairTransform(pil_image_processor(30), "image", "caption"), seed=0)

    paper = GlobalBatchSampler(coarse_ids, 1, 0.0, 0, 2, 1, 0, 1, 0, 30)
    keys = [key for batch in paper for key in batch]
    assert {caption_cluster(pairs[key][1]) for key in keys} == {1}  # through the real read, crop and caption draw
    assert paper.rows_per_epoch == inside

    released = GlobalBatchSampler(coarse_ids, 1, 0.5, 0, 2, 1, 0, 1, 0, 0)
    for epoch in range(3):
        rows = released.shuffled_rows(epoch)
        assert len(rows) == len(set(rows)) == inside + int(0.5 * others)
        assert (coarse_ids[rows] == 1).sum() == inside and (coarse_ids[rows] >= 0).all()
    assert set(released.shuffled_rows(0)) != set(released.shuffled_rows(1))  # redrawn every epoch
    pixels, caption = pairs[(int(rows[0]), 2)]
    assert pixels.shape == (3, 30, 30) and caption in dataset[int(rows[0])]["caption"]


def test_streaming_applies_the_cluster_filter_while_streaming(tmp_path):
    saved = make_pairs(tmp_path / "pairs", n=48)
    stream = load_pairs(saved, streaming=True)  # shards of a save_to_disk directory, read as a stream
    transform = PairTransform(pil_image_processor(30), "image", "caption")
    seen = [
        [caption for _, caption in StreamingPairs(stream, transform, 0, "coarse_id", 0.0, 0, 8, process, 2)]
        for process in range(2)
    ]
    assert {caption_cluster(c) for part in seen for c in part} == {0}
    assert len(seen[0]) + len(seen[1]) == (np.asarray(load_pairs(saved)["coarse_id"]) == 0).sum()
    assert not set(seen[0]) & set(seen[1])  # each process streams its own shards


@pytest.mark.slow
def test_a_streamed_expert_trains_and_resumes_to_the_same_weights(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="modeling_mode.lib.training")
    dataset, weights = make_pairs(tmp_path / "pairs", n=48), tmp_path / "weights"
    for part in random_clip("tiny"):  # pretrained weights, saved with their CLIPProcessor as a finished run is
        part.save_pretrained(weights)

    def run(output, on_checkpoint=None, **flags):
        args = dict(dataset=dataset, output=str(tmp_path / output), streaming=True, shuffle_buffer=8, cluster="0")
        args.update(init=str(weights), batch_size=2, max_steps=14, warmup_steps=2, checkpoint_every=5, num_workers=0)
        train(ExpertTrainingArguments(**args, report_to="none", **flags), on_checkpoint)
        return load_file(tmp_path / output / "model.safetensors")

    reference = run("uninterrupted")  # the cluster's pairs make about 10 batches: 14 steps start a second epoch
    run("interrupted", stop_at_step=5)
    assert is_finished(tmp_path / "interrupted")
    # --resume takes a run stopped early further; until its own final save, the directory is not a finished run.
    finished_at_checkpoints = []
    resumed = run(
        "interrupted", lambda *_: finished_at_checkpoints.append(is_finished(tmp_path / "interrupted")), resume=True
    )
    assert finished_at_checkpoints == [False, False] and is_finished(tmp_path / "interrupted")  # steps 10 and 14
    assert f"[RANK 0] Starting from the pretrained weights of {weights}." in caplog.messages
    assert run_args(tmp_path / "uninterrupted")["run"]["start"] == "weights"
    step_5 = tmp_path / "interrupted" / "checkpoints" / "step_5"
    assert [message.removeprefix("[RANK 0] ") for message in caplog.messages[-4:]] == [
        f"Resuming from the checkpoint {step_5}, at step 5.",
        f"Streaming cluster 0's pairs of --dataset {dataset}, split train, skipping those without a usable caption.",
        "Global batch of 2 pairs: --batch-size 2 x --gradient-accumulation-steps 1 x 1 processes; steps 5 to 14 "
        "of a 14-step schedule.",
        f"Saved the model and its CLIPProcessor to {tmp_path / 'interrupted'}, finished at step 14.",
    ]
    for name, tensor in reference.items():
        # The same computation in the same process and thread count, which could be exact; 1e-6 (far below one
        # step's change) keeps the test about resuming, not about the summation order of the kernels torch picks.
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)
    state = json.loads((tmp_path / "interrupted/checkpoints/step_5/trainer_state.json").read_text())
    assert state["stream_positions"] == [[0, 5]]
    state = json.loads((tmp_path / "interrupted/checkpoints/step_14/trainer_state.json").read_text())
    assert state["stream_positions"][0][0] == 1  # in the second epoch


# ---------------------------------------------------------------------------------------------------- distributed


def one_process_step(root, family: str = "clip"):
    """Loss and gradients of one process on the global batch of 8 pairs: in one micro-batch, and in four."""
    dataset = make_pairs(root / "pairs")
    accelerator = Accelerator(cpu=True)
    for batch_size, accumulation in [(8, 1), (2, 4)]:
        gradients(dataset, str(root), batch_size, accumulation, accelerator, family=family)
    reset_accelerate_state()
    return dataset, torch.load(root / "8x1.pt"), torch.load(root / "2x4.pt")


@pytest.fixture(scope="module")
def one_process_gradients(tmp_path_factory):
    return one_process_step(tmp_path_factory.mktemp("gradients"))


def assert_same_step(result, reference):
    """The same loss and gradients, to 1e-5: the two computations sum the same terms in another order (other
    micro-batches, other processes with one thread each), so float32 rounding differs (measured: about 4e-7)."""
    torch.testing.assert_close(result["loss"], reference["loss"], rtol=0, atol=1e-5)
    assert result["grads"].keys() == reference["grads"].keys()
    for name, grad in reference["grads"].items():
        torch.testing.assert_close(result["grads"][name], grad, rtol=0, atol=1e-5, msg=name)


def test_accumulated_micro_batches_give_the_large_batch_gradient(one_process_gradients):
    _, reference, accumulated = one_process_gradients
    assert_same_step(accumulated, reference)


@pytest.mark.slow
def test_two_processes_give_the_loss_and_gradients_of_one(one_process_gradients, tmp_path):
    dataset, reference, _ = one_process_gradients
    launch_two_processes(PROBE, "gradients", dataset, tmp_path, "4x1", "2x2")  # one launch, both splits
    for shape in ("4x1", "2x2"):
        assert_same_step(torch.load(tmp_path / f"{shape}.pt"), reference)


# ---------------------------------------------------------------------------------------------------- resume


@pytest.mark.slow
def test_a_run_killed_in_its_final_save_is_unfinished_and_resumes_to_the_uninterrupted_weights(tmp_path):
    dataset = make_pairs(tmp_path / "pairs")
    # An expert with out-of-cluster pairs and accumulation, over an epoch boundary (6 steps an epoch).
    flags = f"--dataset {dataset} --config tiny --cluster 1 --out-of-cluster-ratio 0.5 --batch-size 2".split()
    flags += ["--gradient-accumulation-steps", "2", "--max-steps", "8", "--checkpoint-every", "3", *QUIET]
    killed, uninterrupted, stopped = tmp_path / "killed", tmp_path / "uninterrupted", tmp_path / "stopped"
    # SIGKILLed in the final save, once 3 of the model's files are in --output.
    kill = [sys.executable, PROBE, "killed-in-final-save", *flags, "--output", killed, "--kill-after", "3"]
    probe = subprocess.Popen(kill, cwd=REPO)
    train_here(*flags, "--output", uninterrupted, "--resume")  # meanwhile; with no checkpoint yet, --resume starts
    assert probe.wait(timeout=600) == -signal.SIGKILL and not is_finished(killed)
    final_files = set(os.listdir(uninterrupted)) - {"training_args.json", "checkpoints"}
    assert len(final_files & set(os.listdir(killed))) == 3

    train_here(*flags, "--output", killed, "--resume")  # from the checkpoint of step 8: the final save again
    assert is_finished(killed) and set(os.listdir(killed)) == set(os.listdir(uninterrupted))  # no scratch left
    assert isinstance(CLIPModel.from_pretrained(killed), CLIPModel)
    assert run_args(killed)["run"]["resumed_from"] == [str(killed / "checkpoints" / "step_8")]
    # Not bit for bit: another process trained it, and nothing promises it the same thread count (so the same
    # float32 summation order); 1e-6 is far below what one step changes (learning rate 5e-4).
    assert_same_weights(killed, uninterrupted, atol=1e-6)

    # --resume of a finished run is a no-op: nothing in the directory is written again.
    before = {path.name: path.stat().st_mtime_ns for path in killed.iterdir()}
    train_here(*flags, "--output", killed, "--resume")
    assert {path.name: path.stat().st_mtime_ns for path in killed.iterdir()} == before and is_finished(killed)

    # Resumed mid-way from the checkpoint of step 3, across the epoch boundary: the same weights. Same process and
    # thread count, so this could be exact; the tolerance keeps the test about resuming, not about kernel choice.
    train_here(*flags, "--output", stopped, "--stop-at-step", "3")
    train_here(*flags, "--output", stopped, "--resume")
    record = run_args(stopped)["run"]
    assert record["resumed_from"] == [str(stopped / "checkpoints" / "step_3")] and record["final_step"] == 8
    assert record["start"] == "config"
    assert_same_weights(stopped, uninterrupted, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    """Good and bad inputs, by name."""
    root = tmp_path_factory.mktemp("inputs")
    features = Features({"image": Image(), "caption": Value("string")})
    Dataset.from_dict({"image": [], "caption": []}, features=features).save_to_disk(root / "empty")
    blank = {"image": [PILImage.new("RGB", (8, 8))] * 4, "caption": ["", " ", None, "\t"]}
    Dataset.from_dict(blank, features=features).save_to_disk(root / "blank")
    truncated = root / "truncated-clip"
    CLIPModel(tiny_clip_config()).save_pretrained(truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (root / "checkpointed" / "checkpoints" / "step_3").mkdir(parents=True)
    (root / "checkpointed" / "checkpoints" / "step_3" / "trainer_state.json").write_text('{"step": 3}')
    (root / "empty-dir").mkdir()
    (root / "file").write_text("not a directory")
    paths = {name: str(root / name) for name in ("empty", "blank", "checkpointed", "empty-dir", "file")}
    paths.update(truncated=str(truncated), missing=str(root / "missing"))
    return paths | {
        "clustered": make_pairs(root / "clustered"),
        "unclustered": make_pairs(root / "unclustered", clustered=False),
    }


def test_transformers_names_of_the_same_flags_are_taken():
    args = cli.parse(ExpertTrainingArguments, "", "--dataset d --output o --max-steps 9 --bf16".split())
    assert args.mixed_precision == "bf16" and not args.bf16  # recorded once, as --mixed-precision
    args = cli.parse(ExpertTrainingArguments, "", "--dataset d --output o --max-steps 9 --fp16 true".split())
    assert args.mixed_precision == "fp16"
    flags = "--dataset_name d --output_dir o --max_steps 9 --model_name_or_path openai/clip-vit-base-patch32"
    args = cli.parse(ExpertTrainingArguments, "", flags.split())
    assert (args.dataset, args.output, args.init) == ("d", "o", "openai/clip-vit-base-patch32")


def test_flags_may_come_in_one_json_file_and_an_unknown_key_is_refused(inputs, tmp_path, monkeypatch, capsys):
    """`train/expert.py args.json`, as transformers' example scripts take their arguments."""
    flags = {"dataset": inputs["clustered"], "config": "tiny", "max_steps": 2, "warmup_steps": 1}
    flags["output"] = str(tmp_path / "run")
    (tmp_path / "args.json").write_text(json.dumps(flags | {"num_train_epochs": 3}))
    status, stderr = expert_command(monkeypatch, capsys, tmp_path / "args.json")
    assert status == 2 and stderr == [f"error: {tmp_path / 'args.json'}: Some keys are not used by the "
                                      "HfArgumentParser: ['num_train_epochs']"]  # fmt: skip
    assert not (tmp_path / "run").exists()
    (tmp_path / "args.json").write_text(json.dumps(flags))
    args = cli.parse(ExpertTrainingArguments, "", [str(tmp_path / "args.json")])
    assert (args.dataset, args.config, args.max_steps, args.warmup_steps, args.output) == tuple(flags.values())


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"--dataset": "{missing}"}, r"--dataset '.*missing' does not exist"),
        # datasets 5.2 cannot load back a saved dataset of 0 rows: load_pairs names it as a source it cannot load.
        ({"--dataset": "{empty}"}, r"--dataset '.*empty' split 'train' has no rows"),
        ({"--dataset": "{blank}"}, r"no pair has a usable caption .* in column 'caption'"),
        (
            {"--caption-column": "coarse_id"},
            r"Column 'coarse_id' \(--caption-column\) holds Value\('int32'\), not captions",
        ),
        (
            {"--image-column": "caption"},
            r"Column 'caption' \(--image-column\) holds List\(Value\('string'\)\), not images",
        ),
        (
            {"--cluster": "5"},
            r"--cluster 5: --dataset '.*clustered''s column 'coarse_id' has 2 clusters \(ids 0 to 1\)",
        ),
        (
            {"--cluster": "1", "--dataset": "{unclustered}"},
            r"no column 'coarse_id' \(--cluster-column\).*clustering step",
        ),
        ({"--cluster": "one"}, r"--cluster must be a coarse cluster id"),
        ({"--num_train_epochs": "3"}, r"unrecognized arguments: --num_train_epochs 3 \(--help lists"),
        ({"--bf16": "true", "--fp16": "true"}, r"--bf16 and --fp16 name different precisions: give one"),
        ({"--bf16": "true", "--mixed-precision": "fp16"}, r"--bf16 and --mixed-precision fp16 name different"),
        ({"--config": None, "--init": "{missing}"}, r"--init '.*missing' does not exist"),
        ({"--config": None, "--init": "{empty-dir}"}, r"Unknown --init .*neither a checkpoint"),
        ({"--config": None, "--init": "{truncated}"}, r"--init '.*truncated-clip': the directory could not be loaded"),
        ({"--config": None, "--init": "nobody/no-clip"}, r"--init 'nobody/no-clip': the Hub repo could not be loaded"),
        ({"--config": "huge"}, r"Unknown --config 'huge'"),
        ({"--init": "{truncated}"}, r"Pass either --init .* or --config .*, not both"),
        ({"--output": "{file}"}, r"--output '.*file' is a file"),
        ({"--output": "{file}/run"}, r"--output '.*file/run.*' is inside '.*file', which is a file"),
        ({"--output": "{checkpointed}"}, r"holds checkpoints of an earlier run: pass --resume"),
        ({"--output": "{checkpointed}", "--resume": "true"}, r"checkpointed at step 3, past this run's last step 2"),
        ({"--max-steps": "0"}, r"--max-steps must be at least 1, got 0"),
        ({"--max-steps": "-2"}, r"--max-steps must be at least 1, got -2"),
        ({"--batch-size": "0"}, r"--batch-size must be at least 1, got 0"),
        ({"--batch-size": "64"}, r"fewer than one global batch of 64"),
        ({"--warmup-steps": "-1"}, r"--warmup-steps must be at least 0, got -1"),
        ({"--warmup-steps": "2000"}, r"--warmup-steps 2000 is more than --max-steps 2: the schedule would end before"),
        ({"--learning-rate": "0"}, r"--learning-rate must be positive, got 0.0"),
        ({"--learning-rate": "nan"}, r"--learning-rate must be positive, got nan"),
        ({"--stop-at-step": "0"}, r"--stop-at-step must be in \[1, --max-steps=2\], got 0"),
        ({"--stop-at-step": "3"}, r"--stop-at-step must be in \[1, --max-steps=2\], got 3"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2_before_anything_is_written(
    inputs, tmp_path, monkeypatch, capsys, flags, message
):
    output = tmp_path / "run"
    argv = {"--dataset": inputs["clustered"], "--config": "tiny", "--max-steps": "2", "--warmup-steps": "1"}
    argv |= {"--output": output, **flags}
    argv = [str(part).format(**inputs) for flag, value in argv.items() if value is not None for part in (flag, value)]
    status, stderr = expert_command(monkeypatch, capsys, *argv, "--num-workers", "0", "--report-to", "none")
    assert status == 2 and len(stderr) == 1, stderr
    assert re.fullmatch(f"error: .*{message}.*", stderr[0]), stderr[0]
    assert not output.exists()  # refused before the first write


def test_transformers_flag_names_are_aliases_of_the_scripts_own():
    def parse(flags: str) -> ExpertTrainingArguments:
        return cli.parse(ExpertTrainingArguments, "", f"--dataset pairs --max-steps 9 {flags}".split())

    ours = parse("--output run --batch-size 8 --num-workers 2 --checkpoint-every 3 --log-every 5 --keep-checkpoints 2")
    theirs = parse(
        "--output_dir run --per_device_train_batch_size 8 --dataloader_num_workers 2 --save_steps 3 "
        "--logging_steps 5 --save_total_limit 2"
    )
    assert ours == theirs and (ours.batch_size, ours.keep_checkpoints) == (8, 2)
    assert parse("--output run --resume_from_checkpoint").resume and not parse("--output run").resume
    with pytest.raises(SystemExit):  # the Trainer's takes a path; ours continues --output's own last checkpoint
        parse("--output run --resume_from_checkpoint runs/seed/checkpoints/step_4")


def test_an_unreadable_image_stops_the_run_with_one_line_naming_its_row(tmp_path, monkeypatch, capsys):
    png = io.BytesIO()
    PILImage.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(png, format="PNG")
    images = [{"bytes": png.getvalue(), "path": None}] * 4
    images[2] = {"bytes": b"not an image", "path": None}
    pairs = {"image": images, "caption": [f"pair {i}" for i in range(4)]}
    Dataset.from_dict(pairs, features=Features({"image": Image(), "caption": Value("string")})).save_to_disk(
        tmp_path / "pairs"
    )
    output = tmp_path / "run"
    # In DataLoader workers, whose errors the loader re-raises with the worker's traceback in the message.
    argv = (
        f"--dataset {tmp_path / 'pairs'} --config tiny --max-steps 1 --warmup-steps 0 --batch-size 4 --num-workers 2"
    )
    argv += f" --output {output}"
    status, stderr = expert_command(monkeypatch, capsys, *argv.split(), "--report-to", "none")
    assert (
        status == 2 and stderr[-1] == "error: --dataset row 2: column 'image' holds bytes PIL cannot read as an image."
    )
    assert not any("Traceback" in line or "worker" in line for line in stderr) and not is_finished(output)
    truncated = {"bytes": png.getvalue()[: len(png.getvalue()) // 2], "path": None}
    with pytest.raises(InputError, match=r"^--dataset row 7: column 'image' holds an unreadable image \(.*truncated"):
        read_image(truncated, "image", "row 7")


# ---------------------------------------------------------------------------------------------------- end to end


def write_clusters(root: Path, dataset_dir: str, encoder: str, centroids: torch.Tensor) -> Path:
    """The clustering step's outputs, as that step writes them."""
    root.mkdir(parents=True, exist_ok=True)
    fine_to_coarse = torch.arange(FINE_CLUSTERS) // (FINE_CLUSTERS // EXPERTS)
    # Which caption of each list the clustering embedded: its shards' layout and caption seed.
    embeddings = dict(num_rows=len(load_pairs(dataset_dir)), shard_rows=16, embed_dim=centroids.shape[1])
    settings = {"embeddings": embeddings | {"caption_seed": 0}}
    save_file(
        {
            "fine_centroids": centroids,
            "coarse_centroids": torch.nn.functional.normalize(torch.randn(EXPERTS, centroids.shape[1]), dim=-1),
            "fine_to_coarse": fine_to_coarse,
        },
        str(root / "clusters.safetensors"),
        metadata={"settings": json.dumps(settings, sort_keys=True)},
    )
    metadata = dict(
        encoder=encoder,
        pooling="mean",
        embed_dim=centroids.shape[1],
        num_fine_clusters=FINE_CLUSTERS,
        num_experts=EXPERTS,
        method="test",
        seed=0,
        caption_column="caption",
        settings=settings,  # those in clusters.safetensors' metadata: the two files are of one finished run
    )
    (root / "clusters.json").write_text(json.dumps(metadata))
    if not (root / "dataset").exists():
        os.symlink(dataset_dir, root / "dataset")
    return root


@pytest.fixture(scope="module")
def pipeline_runs(tmp_path_factory):
    """The issue's commands on a tiny config: a seed on two processes (stopped part-way through its schedule, as the
    paper forks at epoch 27 of 32), two experts forked from it, and their assembly."""
    root = tmp_path_factory.mktemp("mode")
    dataset = make_pairs(root / "pairs", n=48)
    # The clustering embedded captions with another encoder (8-d): assembly must re-express the centroids.
    centroids = torch.nn.functional.normalize(torch.randn(FINE_CLUSTERS, 8), dim=-1)
    clusters = write_clusters(root / "clusters", dataset, "sentence-transformers/all-MiniLM-L6-v2", centroids)
    report_to = "tensorboard" if _tensorboard_installed() else "none"
    common = f"--dataset {clusters / 'dataset'} --max-steps 6 --checkpoint-every 2 --log-every 1".split()
    common += "--batch-size 4 --warmup-steps 2 --num-workers 0".split()
    seed = root / "seed"
    seed_flags = f"--cluster all --config tiny --batch-size 2 --stop-at-step 4 --report-to {report_to}".split()
    seed_log = launch_two_processes(EXPERT, *common, *seed_flags, "--output", seed).stderr
    experts = [root / "expert-0", root / "expert-1"]
    extra = ["", "--mixed-precision bf16 --gradient-checkpointing --max-grad-norm 1.0 --out-of-cluster-ratio 0.02"]
    with training_log() as expert_log:
        for k, expert in enumerate(experts):  # independent jobs; here, one after the other in this process
            train_here(*common, *f"--cluster {k} --init {seed} --output {expert} --report-to none {extra[k]}".split())
    mode = root / "mode"
    python(
        ASSEMBLE,
        "--experts",
        experts[1],
        experts[0],
        *f"--clusters {clusters} --router-text-model {seed} --router seed-text".split(),
        "--output",
        mode,
    )
    return dict(
        dataset=dataset,
        clusters=clusters,
        seed=seed,
        seed_log=seed_log,
        experts=experts,
        expert_log=[record.getMessage().removeprefix("[RANK 0] ") for record in expert_log],
        mode=mode,
        report_to=report_to,
    )


def _tensorboard_installed() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
def test_seed_and_experts_fork_weights_optimizer_and_schedule(pipeline_runs):
    seed, experts = pipeline_runs["seed"], pipeline_runs["experts"]
    record = run_args(seed)["run"]
    assert record["num_processes"] == 2 and record["global_batch_size"] == 4 and record["final_step"] == 4
    # The seed trains on the clustering's output, less its pairs without a caption (cluster -1): skipped, counted.
    assert record["data"]["pairs_without_caption"] == 6 and record["data"]["cluster_pairs"] == 42
    # The log says how the run started, on the main process only, and where the model went.
    dataset = pipeline_runs["clusters"] / "dataset"
    for line in [
        "Starting from random weights (--config tiny).",
        f"Training on 42 pairs, of the 48 pairs of --dataset {dataset}, split train (6 without a usable caption are "
        "skipped): 10 steps an epoch.",
        "Global batch of 4 pairs: --batch-size 2 x --gradient-accumulation-steps 1 x 2 processes; steps 0 to 4 of a "
        "6-step schedule.",
        f"Saved the model and its CLIPProcessor to {seed}, finished at step 4.",
    ]:
        assert pipeline_runs["seed_log"].count(f" - INFO - modeling_mode.lib.training.loop - [RANK 0] {line}\n") == 1
    assert sorted(p.name for p in (seed / "checkpoints").iterdir()) == ["step_2", "step_4"]
    assert isinstance(CLIPModel.from_pretrained(seed), CLIPModel)  # the seed is a standalone CLIPModel directory
    others = ["", " and --out-of-cluster-ratio 0.02 of the other clusters' (0 pairs an epoch)"]  # 2% of 18 pairs
    for k, expert in enumerate(experts):
        record = run_args(expert)["run"]
        assert (record["cluster"], record["start"], record["start_step"], record["final_step"]) == (k, "fork", 4, 6)
        assert record["start_checkpoint"] == str(seed / "checkpoints" / "step_4")
        # AdamW's step counts went on from the seed's 4: its optimizer state was forked, not restarted.
        optimizer = torch.load(expert / "checkpoints" / "step_6" / "optimizer.bin", weights_only=False)
        assert {int(state["step"]) for state in optimizer["state"].values()} == {6}
        data = record["data"]
        assert pipeline_runs["expert_log"][k * 4 : k * 4 + 2] == [
            f"Forking the seed checkpoint {record['start_checkpoint']} at step 4: its weights, optimizer state and "
            "schedule position.",
            f"Training on cluster {k}'s {data['cluster_pairs']} pairs{others[k]}, of the 48 pairs of --dataset "
            f"{dataset}, split train (6 without a usable caption are skipped): {data['steps_per_epoch']} steps an "
            "epoch.",
        ]
    assert run_args(experts[1])["run"]["mixed_precision"] == "bf16"
    assert run_args(experts[1])["run"]["data_variant"].startswith("released code")
    assert run_args(experts[0])["run"]["data_variant"].startswith("paper")
    if pipeline_runs["report_to"] == "tensorboard":
        assert list((seed / "logs").rglob("events.out.tfevents.*"))


@pytest.mark.slow
def test_every_run_and_checkpoint_carries_its_clip_processor(pipeline_runs):
    """AutoProcessor gives the CLIPProcessor saved with a run (and with each checkpoint), whose inputs the CLIPModel
    beside it takes; its tokenizer and image processor also load alone, as assembly and evaluation load them."""
    image = PILImage.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    expert = pipeline_runs["experts"][0]
    for folder in (pipeline_runs["seed"], expert, expert / "checkpoints" / "step_6"):
        processor = AutoProcessor.from_pretrained(folder)
        assert isinstance(processor, CLIPProcessor)
        text = ["cluster 0 pair 1", "a cat"]
        inputs = processor(text=text, images=[image], padding=True, truncation=True, return_tensors="pt")
        assert inputs["pixel_values"].shape == (1, 3, 32, 32)  # the tiny config's image size
        assert CLIPModel.from_pretrained(folder)(**inputs).logits_per_image.shape == (1, 2)
        assert AutoTokenizer.from_pretrained(folder).get_vocab() == processor.tokenizer.get_vocab()
        assert AutoImageProcessor.from_pretrained(folder).to_dict() == processor.image_processor.to_dict()


@pytest.mark.slow
def test_assembled_mode_loads_from_the_hub_format_and_classifies(pipeline_runs, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # remote code is cached there
    mode_dir, experts = pipeline_runs["mode"], pipeline_runs["experts"]
    mode = AutoModel.from_pretrained(mode_dir, trust_remote_code=True)
    assert type(mode).__name__ == "ModeCLIPModel" and mode.config.num_experts == 2
    for k, expert in enumerate(experts):  # expert k is the one trained on cluster k, whatever the order given
        weights = load_file(expert / "model.safetensors")
        for name, tensor in mode.experts[k].state_dict().items():
            torch.testing.assert_close(tensor, weights[name], rtol=0, atol=0, msg=name)

    # The clustering used another encoder: each centroid is the mean router embedding of its cluster's captions.
    assert mode.config.centroids_reexpressed and mode.config.clustering_encoder.endswith("all-MiniLM-L6-v2")
    seed = pipeline_runs["seed"]
    router, dataset = CaptionEncoder(str(seed), device="cpu"), load_pairs(pipeline_runs["dataset"])
    layout = json.loads((pipeline_runs["clusters"] / "clusters.json").read_text())["settings"]["embeddings"]
    shards = EmbeddingShards(pipeline_runs["clusters"] / "embeddings", layout)
    # The caption of each pair that the clustering embedded (a seeded choice from its list), as assembly reads it.
    chosen = [c for s in range(shards.num_shards) for c in shard_captions(dataset, "caption", shards, s, 0)]
    expected = []
    for fine in range(FINE_CLUSTERS):
        captions = [c for c, f in zip(chosen, dataset["fine_id"]) if f == fine]
        expected.append(torch.from_numpy(router.encode(captions)).mean(0))
    torch.testing.assert_close(mode.fine_centroids, torch.nn.functional.normalize(torch.stack(expected), dim=-1))
    provenance = json.loads((mode_dir / "assembly.json").read_text())
    assert provenance["experts"] == [str(e) for e in experts] and provenance["centroids_reexpressed"]

    classify = pipeline("zero-shot-image-classification", model=str(mode_dir), trust_remote_code=True)
    image = PILImage.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    scores = classify(image, candidate_labels=["cluster 0", "cluster 1", "a cat"])
    assert len(scores) == 3 and sum(s["score"] for s in scores) == pytest.approx(1.0, abs=1e-4)


def experts_on(clusters: Path, experts: list, tmp_path: Path) -> list[str]:
    """The pipeline's experts as if trained on `clusters` (a clustering written here with other centroids): copies
    whose records name its labelled pairs, as the assembly requires."""
    copies = []
    for expert in experts:
        copy = tmp_path / f"on-{Path(expert).name}"
        shutil.copytree(expert, copy)
        record = json.loads((copy / "training_args.json").read_text())
        record["args"]["dataset"] = str(clusters / "dataset")
        (copy / "training_args.json").write_text(json.dumps(record))
        copies.append(str(copy))
    return copies


@pytest.mark.slow
def test_assembly_keeps_centroids_already_in_the_routers_space(pipeline_runs, tmp_path):
    seed = pipeline_runs["seed"]
    router_dim = CaptionEncoder(str(seed), device="cpu").embed_dim
    centroids = torch.nn.functional.normalize(torch.randn(FINE_CLUSTERS, router_dim))
    clusters = write_clusters(tmp_path / "clusters", pipeline_runs["dataset"], str(seed), centroids)
    experts = experts_on(clusters, pipeline_runs["experts"], tmp_path)
    mode = assemble(experts, str(clusters), str(seed), str(tmp_path / "mode"), router_space="seed-text")
    assert not mode.config.centroids_reexpressed
    torch.testing.assert_close(mode.fine_centroids, centroids)


@pytest.mark.slow
def test_assembly_drops_fine_clusters_that_no_pair_was_labelled_with(pipeline_runs, tmp_path):
    """Pairs take their nearest fine centre, which can leave a centre with no pair: it has no router-space mean."""
    pairs = load_pairs(str(pipeline_runs["dataset"])).filter(lambda row: row["fine_id"] != 0)
    pairs.save_to_disk(tmp_path / "pairs")
    centroids = torch.nn.functional.normalize(torch.randn(FINE_CLUSTERS, 8), dim=-1)
    clusters = write_clusters(tmp_path / "clusters", str(tmp_path / "pairs"), "another/encoder", centroids)
    seed, experts = pipeline_runs["seed"], experts_on(clusters, pipeline_runs["experts"], tmp_path)
    mode = assemble(experts, str(clusters), str(seed), str(tmp_path / "mode"), router_space="seed-text")
    expected_map = (torch.arange(FINE_CLUSTERS) // (FINE_CLUSTERS // EXPERTS))[1:].tolist()
    assert mode.config.dropped_empty_fine_clusters == [0] and mode.config.fine_to_coarse == expected_map
    assert mode.fine_centroids.shape == (FINE_CLUSTERS - 1, mode.config.router_embed_dim)


@pytest.mark.slow
def test_assembly_rejects_missing_duplicate_and_mismatched_experts(pipeline_runs, tmp_path):
    experts = [str(e) for e in pipeline_runs["experts"]]
    clusters, seed = pipeline_runs["clusters"], pipeline_runs["seed"]

    def assemble_from(expert_dirs, clusters_dir=clusters):
        assemble(expert_dirs, str(clusters_dir), str(seed), str(tmp_path / "mode"), router_space="seed-text")

    with pytest.raises(InputError, match="does not exist"):
        assemble_from([experts[0], str(tmp_path / "expert-9")])
    with pytest.raises(InputError, match="both trained on cluster 0"):
        assemble_from([experts[0], experts[0]])
    with pytest.raises(InputError, match=r"missing clusters \[1\]"):
        assemble_from([experts[0]])
    with pytest.raises(InputError, match="trained on all pairs"):
        assemble_from([experts[0], str(seed)])
    with pytest.raises(InputError, match="holds no finished clustering run"):
        assemble_from(experts, tmp_path)
    other = tmp_path / "other-architecture"  # an expert of cluster 1 trained from another seed's config
    CLIPModel(tiny_clip_config()).save_pretrained(other)
    (other / "training_args.json").write_text((Path(experts[1]) / "training_args.json").read_text())
    with pytest.raises(InputError, match="another architecture"):
        assemble_from([experts[0], str(other)])


# ---------------------------------------------------------------------------------------------------- families


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_trains_from_random_weights_from_its_weights_and_from_a_fork(family, tmp_path):
    """A tiny run of each family (accumulated micro-batches: cached features, the family's loss and its FLOPs), then
    one from its saved weights and a fork of its checkpoint: all load back with the Auto classes."""
    dataset = make_pairs(tmp_path / "pairs")
    flags = ["--dataset", dataset, "--batch-size", "4", "--gradient-accumulation-steps", "2", "--log-every", "1"]
    flags += [*QUIET, "--max-steps", "3", "--checkpoint-every", "2"]
    seed = train_here(*flags, "--config", "tiny", "--model-family", family, "--output", tmp_path / "seed")
    weights = shutil.copytree(seed, tmp_path / "weights", ignore=shutil.ignore_patterns("checkpoints", "logs"))
    train_here(*flags, "--init", weights, "--output", tmp_path / "pretrained")
    train_here(*flags, "--cluster", "1", "--init", f"{seed}/checkpoints/step_2", "--output", tmp_path / "fork")
    for run in ("seed", "pretrained", "fork"):
        model, processor = AutoModel.from_pretrained(tmp_path / run), AutoProcessor.from_pretrained(tmp_path / run)
        assert model.config.model_type == family and run_args(tmp_path / run)["run"]["family"] == family
        text = processor(text=["a dog"], padding=FAMILIES[family].padding, return_tensors="pt")
        if FAMILIES[family].loss == "sigmoid":  # padded to the context, which the zero-shot pipeline's 64 fits
            assert text["input_ids"].shape[1] == model.config.text_config.max_position_embeddings >= 64
    assert [run_args(tmp_path / run)["run"]["start"] for run in ("pretrained", "fork")] == ["weights", "fork"]


def test_a_family_batch_carries_what_its_model_takes(tmp_path):
    """SigLIP's texts are padded to the context; SigLIP 2's crops become the patch sequences its image processor
    would give for a square image of the crop's size."""
    dataset = make_pairs(tmp_path / "pairs")
    args = ExpertTrainingArguments(dataset=dataset, output=str(tmp_path / "run"), max_steps=1, batch_size=3)
    args.num_workers = 0
    data = TrainingData(args, Accelerator(cpu=True))
    for family in ("siglip", "siglip2"):
        model, processor = random_expert("tiny", family)
        batches = data.micro_batches(processor, 64, 0, family=FAMILIES[family])
        crops = next(batches)
        batch = data.to_device(dict(crops))
        assert batch["input_ids"].shape == (3, 64)
        assert model(**batch).image_embeds.shape == (3, model.config.text_config.projection_size)
    image = PILImage.fromarray(crops["pixel_values"][0].permute(1, 2, 0).numpy())
    expected = processor.image_processor([image], return_tensors="pt")
    for name in ("pixel_values", "pixel_attention_mask", "spatial_shapes"):
        torch.testing.assert_close(batch[name][:1], expected[name], atol=1e-6, rtol=0, msg=name)


def test_sigmoid_loss_is_siglips_loss_on_one_process():
    torch.manual_seed(0)
    model, _ = random_expert("tiny", "siglip")
    with torch.no_grad():
        model.logit_scale.fill_(1.5)
        model.logit_bias.fill_(-3.0)
    input_ids = torch.randint(2, 500, (5, 64))
    outputs = model(input_ids=input_ids, pixel_values=torch.randn(5, 3, 32, 32), return_loss=True)
    loss = sigmoid_loss(outputs.image_embeds, outputs.text_embeds, model.logit_scale, model.logit_bias)
    torch.testing.assert_close(loss, outputs.loss)
    ours = torch.autograd.grad(loss, [model.logit_scale, model.logit_bias], retain_graph=True)
    theirs = torch.autograd.grad(outputs.loss, [model.logit_scale, model.logit_bias])
    torch.testing.assert_close(ours, theirs)


@pytest.fixture(scope="module")
def one_process_sigmoid_gradients(tmp_path_factory):
    """As `one_process_gradients`, for a tiny SigLIP."""
    return one_process_step(tmp_path_factory.mktemp("sigmoid-gradients"), family="siglip")


def test_accumulated_micro_batches_give_the_large_batch_sigmoid_gradient(one_process_sigmoid_gradients):
    _, reference, accumulated = one_process_sigmoid_gradients
    assert reference["grads"]["logit_bias"].abs() > 1e-3 and reference["grads"]["logit_scale"].abs() > 1e-3
    assert_same_step(accumulated, reference)


@pytest.mark.slow
def test_two_processes_give_the_sigmoid_loss_and_gradients_of_one(one_process_sigmoid_gradients, tmp_path):
    dataset, reference, _ = one_process_sigmoid_gradients
    launch_two_processes(PROBE, "gradients", dataset, tmp_path, "--family", "siglip", "4x1", "2x2")
    for shape in ("4x1", "2x2"):
        assert_same_step(torch.load(tmp_path / f"{shape}.pt"), reference)


@pytest.fixture(scope="module")
def other_models(tmp_path_factory) -> dict[str, str]:
    """Folders of models that are no MODE family, and a SigLIP config file."""
    root = tmp_path_factory.mktemp("other-models")
    bert = BertConfig(vocab_size=99, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    BertModel(bert).save_pretrained(root / "bert")
    CLIPVisionModel(tiny_clip_config().vision_config).save_pretrained(root / "clip-vision")
    random_expert("tiny", "siglip")[0].config.to_json_file(root / "siglip-config")
    return {name: str(root / name) for name in ("bert", "clip-vision", "siglip-config")}


# ---------------------------------------------------------------------------------------------------- LoRA experts


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory) -> dict:
    """A tiny seed stopped at step 2 of 6, and LoRA experts forked from it (rank 4, alpha 8: a scale of 2) with two
    micro-batches a step: one run to the end, one stopped at step 4 (each test resumes its own copy)."""
    root = tmp_path_factory.mktemp("lora")
    dataset = make_pairs(root / "pairs")
    common = f"--dataset {dataset} --batch-size 2 --max-steps 6 --checkpoint-every 2 --log-every 1".split()
    train_here(*common, *QUIET, "--config", "tiny", "--stop-at-step", "2", "--output", root / "seed")
    fork = [*common, *QUIET, "--gradient-accumulation-steps", "2", "--cluster", "1", "--lora-rank", "4"]
    fork += ["--lora-alpha", "8", "--init", root / "seed" / "checkpoints" / "step_2"]
    with training_log() as log:
        train_here(*fork, "--output", root / "expert")
    train_here(*fork, "--stop-at-step", "4", "--output", root / "stopped")
    runs = dict(seed=root / "seed", expert=root / "expert", stopped=root / "stopped")
    return runs | dict(common=common, fork=fork, log=log)


@pytest.mark.slow  # with `lora_runs`: three tiny runs
def test_a_lora_fork_trains_only_its_adapters_and_saves_them_merged_and_alone(lora_runs):
    seed, expert = lora_runs["seed"], lora_runs["expert"]
    fork_weights = load_file(seed / "checkpoints" / "step_2" / "model.safetensors")
    merged = load_file(expert / "model.safetensors")  # a plain CLIPModel folder, adapters merged
    settings, adapters = read_adapters(expert)
    assert settings == {
        "rank": 4,
        "alpha": 8,
        "target_modules": sorted("q_proj k_proj v_proj out_proj fc1 fc2".split()),
    }
    # Every attention and MLP Linear of both towers' encoder layers (tiny: 2 layers each), and no other.
    assert len(adapters) == 2 * 2 * 6 and "text_model.encoder.layers.0.self_attn.q_proj" in adapters
    assert merged.keys() == fork_weights.keys()
    for name, weight in fork_weights.items():
        layer = name.removesuffix(".weight")
        if layer in adapters:
            lora_a, lora_b = adapters[layer]
            assert lora_a.shape == (4, weight.shape[1]) and lora_b.shape == (weight.shape[0], 4)
            assert lora_b.abs().max() > 0  # trained away from its zero start
            torch.testing.assert_close(merged[name] - weight, 2.0 * lora_b @ lora_a, rtol=0, atol=1e-5, msg=name)
        else:  # biases, norms, embeddings, projections, the temperature: the seed's
            assert torch.equal(merged[name], weight), name
    assert isinstance(CLIPModel.from_pretrained(expert), CLIPModel)

    record = run_args(expert)["run"]
    assert record["lora"] == {
        "rank": 4,
        "alpha": 8.0,
        "target_modules": "q_proj k_proj v_proj out_proj fc1 fc2".split(),
    }
    trained = sum(a.numel() + b.numel() for a, b in adapters.values())
    assert record["step_setup"]["trained_parameters"] == trained
    assert (record["start"], record["start_step"], record["final_step"]) == ("fork", 2, 6)
    assert run_args(seed)["run"]["lora"] is None
    assert [m.getMessage().removeprefix("[RANK 0] ") for m in lora_runs["log"]][0] == (
        f"Forking the seed checkpoint {record['start_checkpoint']} at step 2: its weights and schedule position, not "
        "its optimizer state (the new LoRA adapters, which alone train, have none)."
    )
    # AdamW's step counts began at the fork (2 steps by step 4), and it holds the adapters alone.
    optimizer = torch.load(expert / "checkpoints" / "step_4" / "optimizer.bin", weights_only=False)
    assert {int(state["step"]) for state in optimizer["state"].values()} == {2}
    assert len(optimizer["state"]) == 2 * len(adapters)


@pytest.mark.slow  # with `lora_runs`: three tiny runs
def test_lora_adapters_are_read_back_in_peft_format_and_give_the_merged_weights(lora_runs):
    from peft import PeftModel

    seed, expert = lora_runs["seed"], lora_runs["expert"]
    config = json.loads((expert / ADAPTER / "adapter_config.json").read_text())
    assert (config["lora_dropout"], config["bias"], config["use_rslora"], config["r"]) == (0.0, "none", False, 4)
    assert sorted(os.listdir(expert / ADAPTER)) == ["adapter_config.json", "adapter_model.safetensors"]
    # PEFT loads the adapters onto the fork's weights, and merging them gives the final folder's weights.
    base = CLIPModel.from_pretrained(seed / "checkpoints" / "step_2")
    peft_merged = PeftModel.from_pretrained(base, expert / ADAPTER).merge_and_unload().state_dict()
    for name, tensor in load_file(expert / "model.safetensors").items():
        torch.testing.assert_close(peft_merged[name], tensor, rtol=0, atol=1e-6, msg=name)
    # read_adapters: the same matrices as PEFT's own file, under the model's module names.
    _, adapters = read_adapters(expert)
    saved = load_file(expert / ADAPTER / "adapter_model.safetensors")
    for name, (lora_a, lora_b) in adapters.items():
        assert torch.equal(saved[f"base_model.model.{name}.lora_A.weight"], lora_a)
        assert torch.equal(saved[f"base_model.model.{name}.lora_B.weight"], lora_b)
    assert len(saved) == 2 * len(adapters) and read_adapters(seed) is None


@pytest.mark.slow  # with `lora_runs`: three tiny runs
def test_a_resumed_lora_run_gives_the_uninterrupted_weights(lora_runs, tmp_path, monkeypatch, capsys):
    stopped = tmp_path / "stopped"
    shutil.copytree(lora_runs["stopped"], stopped)
    assert run_args(stopped)["run"]["final_step"] == 4
    # Resumed with other LoRA settings: refused, nothing written.
    before = {path: path.stat().st_mtime_ns for path in stopped.rglob("*")}
    status, stderr = expert_command(monkeypatch, capsys, *lora_runs["fork"], "--lora-rank", "2", "--output", stopped,
                                    "--resume")  # fmt: skip
    assert status == 2 and len(stderr) == 1 and "was checkpointed with LoRA settings" in stderr[0], stderr
    assert {path: path.stat().st_mtime_ns for path in stopped.rglob("*")} == before
    train_here(*lora_runs["fork"], "--output", stopped, "--resume")
    record = run_args(stopped)["run"]
    assert record["resumed_from"] == [str(stopped / "checkpoints" / "step_4")] and record["final_step"] == 6
    assert_same_weights(stopped, lora_runs["expert"], atol=1e-6)
    resumed, uninterrupted = read_adapters(stopped), read_adapters(lora_runs["expert"])
    assert resumed[0] == uninterrupted[0]
    for name, matrices in uninterrupted[1].items():
        for resumed_matrix, matrix in zip(resumed[1][name], matrices):
            torch.testing.assert_close(resumed_matrix, matrix, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"--init": "{bert}"}, r"--init '.*bert': 'bert' models are not a MODE expert family: the supported "),
        ({"--init": "{clip-vision}"}, r"'clip_vision_model' models are not a MODE expert family: .* \(siglip2\)\."),
        ({"--config": "{siglip-config}", "--model-family": "clip"}, r"--model-family clip names another family than"),
        ({"--init": "{clip-vision}", "--model-family": "siglip"}, r"'clip_vision_model' models are not a MODE"),
        ({"--config": "tiny", "--model-family": "bert"}, r"--model-family must be one of \['clip', 'metaclip_2'"),
    ],
)
def test_a_start_of_another_family_is_refused_in_one_line_before_anything_is_written(
    other_models, inputs, tmp_path, monkeypatch, capsys, flags, message
):
    output = tmp_path / "run"
    argv = {"--dataset": inputs["clustered"], "--max-steps": "2", "--warmup-steps": "1", "--output": output, **flags}
    argv = [str(part).format(**other_models) for flag, value in argv.items() for part in (flag, value)]
    status, stderr = expert_command(monkeypatch, capsys, *argv, "--num-workers", "0", "--report-to", "none")
    assert status == 2 and len(stderr) == 1, stderr
    assert re.fullmatch(f"error: .*{message}.*", stderr[0]), stderr[0]
    assert not output.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"--lora-rank": "0"}, r"--lora-rank must be at least 1, got 0"),
        ({"--lora-rank": "-4"}, r"--lora-rank must be at least 1, got -4"),
        ({"--lora-rank": "4", "--lora-alpha": "0"}, r"--lora-alpha must be positive, got 0.0"),
        # --config tiny: width 32, MLP 64; the narrowest targeted layer is named.
        (
            {"--lora-rank": "33"},
            r"--lora-rank 33 is above the width of the targeted layer text_model\.encoder\.layers\.0\.self_attn\."
            r"q_proj \(32: the smaller of its 32 input and 32 output features\): give a rank of at most 32\.",
        ),
        (
            {"--lora-rank": "33", "--lora-target-modules": "fc2"},
            r"--lora-rank 33 is above the width of the targeted layer text_model\.encoder\.layers\.0\.mlp\.fc2 \(32",
        ),
        (
            {"--lora-rank": "4", "--lora-target-modules": "q_proj,query,visual_projection"},
            r"--lora-target-modules query,visual_projection: the model has no such Linear module in its encoder "
            r"layers; it has fc1, fc2, k_proj, out_proj, q_proj, v_proj\.",
        ),
        ({"--lora-rank": "4", "--lora-target-modules": " ,"}, r"--lora-target-modules names no module"),
        ({"--lora-alpha": "8"}, r"--lora-alpha set LoRA adapters: give --lora-rank too"),
        ({"--lora-alpha": "8", "--lora-target-modules": "fc1"}, r"--lora-alpha and --lora-target-modules set LoRA"),
    ],
)
def test_bad_lora_input_is_one_line_and_exit_status_2_before_anything_is_written(
    inputs, tmp_path, monkeypatch, capsys, flags, message
):
    output = tmp_path / "run"
    argv = {"--dataset": inputs["clustered"], "--config": "tiny", "--max-steps": "2", "--warmup-steps": "1"}
    argv = [str(part) for flag, value in (argv | {"--output": output, **flags}).items() for part in (flag, value)]
    status, stderr = expert_command(monkeypatch, capsys, *argv, "--num-workers", "0", "--report-to", "none")
    assert status == 2 and len(stderr) == 1, stderr
    assert re.fullmatch(f"error: {message}.*", stderr[0]), stderr[0]
    assert not output.exists()  # refused before the first write


@pytest.mark.slow  # with `lora_runs`: three tiny runs
def test_a_lora_runs_checkpoint_is_no_seed_to_fork(lora_runs, tmp_path, monkeypatch, capsys):
    checkpoint = lora_runs["expert"] / "checkpoints" / "step_4"
    for lora in ([], ["--lora-rank", "4"]):  # neither full fine-tuning nor new adapters on its split weights
        argv = [*lora_runs["common"], *QUIET, *lora, "--init", checkpoint, "--output", tmp_path / "run"]
        status, stderr = expert_command(monkeypatch, capsys, *argv)
        assert status == 2 and len(stderr) == 1, stderr
        assert stderr[0] == (
            f"error: --init '{checkpoint}': {checkpoint} is a checkpoint of a LoRA run, whose weights are its seed's "
            "and its adapters apart: fork from the seed's checkpoint instead."
        )
        assert not (tmp_path / "run").exists()


@pytest.mark.slow  # two launched processes
def test_a_lora_fork_on_two_processes_gives_the_weights_of_one(lora_runs, tmp_path):
    """The same global batch of 4 (2 processes x 2 pairs, against 1 x 2 micro-batches of 2): DDP over the PeftModel
    all-reduces the adapters' gradients, and the merged weights agree up to float32 summation order."""
    argv = list(lora_runs["fork"])
    at = argv.index("--gradient-accumulation-steps")
    del argv[at : at + 2]
    launch_two_processes(EXPERT, *argv, "--output", tmp_path / "two")
    assert run_args(tmp_path / "two")["run"]["num_processes"] == 2
    assert_same_weights(tmp_path / "two", lora_runs["expert"], atol=1e-5)
