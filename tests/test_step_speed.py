"""The training step's speed-ups (--torch-compile, fused AdamW, SDPA attention) change no value, and each log
interval reports how fast the steps went: samples/s, TFLOP/s, MFU and the share of time spent waiting for data."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from datasets import Dataset, Features, Image, Value
from helpers import reset_accelerate_state
from PIL import Image as PILImage
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import CLIPModel

from modeling_mode.job.arguments import Sources
from modeling_mode.job.experiments import Comparison
from modeling_mode.job.layout import JobFolder
from modeling_mode.job.recipes import SMOKE, load_recipe
from modeling_mode.job.stages import TRAINING, StageGraph
from modeling_mode.lib.core import cli
from modeling_mode.lib.core.errors import InputError
from modeling_mode.lib.training.arguments import ExpertTrainingArguments
from modeling_mode.lib.training.loop import accumulate_gradients, embed, train
from modeling_mode.lib.training.optimization import build_optimizer, set_hyperparameters
from modeling_mode.lib.training.start import Start, load_start, random_clip

# aot_eager, not the default inductor: it captures the model as inductor does (TorchDynamo's graph, AOT autograd's
# joint forward and backward), then runs that graph with eager kernels. Inductor's C++ code generation would add about
# 45 s of cold compilation on 2 CPU cores per test process, and proves nothing about the GPU's Triton kernels.
BACKEND = "aot_eager"
SPEED = ["samples_per_second", "tflops_per_device", "mfu", "data_wait_share"]


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def make_pairs(path: Path, n: int = 16) -> str:
    """Random images and captions of varied lengths (so that padding them to the full length changes the batches)."""
    rng = np.random.default_rng(0)
    images = [PILImage.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)) for _ in range(n)]
    captions = [f"pair {i}" + " and more" * int(rng.integers(0, 3)) for i in range(n)]
    features = Features({"image": Image(), "caption": Value("string")})
    Dataset.from_dict({"image": images, "caption": captions}, features=features).save_to_disk(str(path))
    return str(path)


def train_here(*argv) -> str:
    try:
        return train(cli.parse(ExpertTrainingArguments, "", [str(arg) for arg in argv]))
    finally:
        reset_accelerate_state()


def logged_scalars(run_dir: Path) -> dict[str, list[float]]:
    """Every scalar the run logged to TensorBoard (the hyper-parameters are in subfolders), by tag, in step order."""
    accumulator = EventAccumulator(str(run_dir / "logs" / "mode-expert"))
    accumulator.Reload()
    return {tag: [event.value for event in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def run_args(run_dir: Path) -> dict:
    return json.loads((run_dir / "training_args.json").read_text())


# ---------------------------------------------------------------------------------------------------- --torch-compile


def fixed_step_batches(steps: int = 2, size: int = 3) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(steps):
        input_ids = torch.randint(2, 60, (size, 32), generator=generator)
        input_ids[:, -1] = 1  # the end token, where CLIP pools the text
        pixels = torch.randn(size, 3, 32, 32, generator=generator)
        batches.append({"pixel_values": pixels, "input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)})
    return batches


def one_step(dynamo_backend: str) -> dict:
    """Features, loss and gradients of one optimizer step's two micro-batches (so both the cached forward without
    gradients and the forward with them run), on the tiny seed, compiled or not."""
    torch.manual_seed(0)
    model, _ = random_clip("tiny")
    accelerator = Accelerator(cpu=True, dynamo_backend=dynamo_backend)
    model = accelerator.prepare(model)
    micro_batches = fixed_step_batches()
    with torch.no_grad():
        features = [embed(model, batch) for batch in micro_batches]
    loss = accumulate_gradients(model, micro_batches, accelerator)
    grads = {name: p.grad for name, p in accelerator.unwrap_model(model, keep_torch_compile=False).named_parameters()}
    reset_accelerate_state()
    return {"features": features, "loss": loss, "grads": grads, "compiled": type(model).__name__ == "OptimizedModule"}


@pytest.mark.slow
def test_a_compiled_step_gives_the_features_loss_and_gradients_of_the_eager_one():
    eager, compiled = one_step("no"), one_step(BACKEND)
    assert compiled["compiled"] and not eager["compiled"]
    # The same operations, traced into one graph and differentiated by AOT autograd rather than op by op, run by the
    # same kernels: measured here, no difference at all; 1e-6 leaves room for a few ulps and is far below any change a
    # step makes. (Inductor's fused C++ kernels sum in other orders: up to 4e-6 on gradients of up to 8, measured.)
    for (image, text), (eager_image, eager_text) in zip(compiled["features"], eager["features"]):
        torch.testing.assert_close(image, eager_image, rtol=0, atol=1e-6)
        torch.testing.assert_close(text, eager_text, rtol=0, atol=1e-6)
    torch.testing.assert_close(compiled["loss"], eager["loss"], rtol=0, atol=1e-6)
    assert compiled["grads"].keys() == eager["grads"].keys()
    for name, grad in eager["grads"].items():
        torch.testing.assert_close(compiled["grads"][name], grad, rtol=0, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """A compiled seed (4 steps, checkpoints every 2), the same stopped at step 2 and resumed, and an eager one with
    --peak-tflops; every step logged to TensorBoard."""
    root = tmp_path_factory.mktemp("speed")
    dataset = make_pairs(root / "pairs")
    common = f"--dataset {dataset} --config tiny --max-steps 4 --batch-size 2 --gradient-accumulation-steps 2".split()
    common += "--warmup-steps 1 --num-workers 0 --log-every 1 --checkpoint-every 2".split()
    compiled = [*common, "--torch-compile", "--torch-compile-backend", BACKEND]
    paths = {name: root / name for name in ("compiled", "resumed", "eager")}
    torch._dynamo.reset()  # forgets the code compiled for earlier tests: the first run compiles its own
    compiled_graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    train_here(*compiled, "--output", paths["compiled"])
    paths["graphs"] = torch._dynamo.utils.counters["stats"]["unique_graphs"] - compiled_graphs
    # The next runs' models pass the guards of the code compiled for the first one: TorchDynamo reuses it.
    train_here(*compiled, "--output", paths["resumed"], "--stop-at-step", "2")
    train_here(*compiled, "--output", paths["resumed"], "--resume")
    train_here(*common, "--output", paths["eager"], "--peak-tflops", "0.5")
    return paths


@pytest.mark.slow
def test_a_compiled_run_checkpoints_resumes_and_saves_the_plain_model(runs):
    assert runs["graphs"] >= 2  # TorchDynamo compiled the model: the forward with gradients and the cached one
    step = run_args(runs["compiled"])["run"]["step_setup"]
    assert (step["attention"], step["adamw"], step["torch_compile"]) == ("sdpa", "fused", BACKEND)
    assert run_args(runs["eager"])["run"]["step_setup"]["torch_compile"] == "no"
    # The saved model and the checkpoints hold the CLIPModel's own parameter names, not the compiled wrapper's.
    names = set(CLIPModel.from_pretrained(runs["compiled"]).state_dict())
    assert set(load_file(runs["compiled"] / "model.safetensors")) <= names
    assert set(load_file(runs["compiled"] / "checkpoints/step_2/model.safetensors")) <= names
    # Resumed from step 2's checkpoint: the uninterrupted run's weights. The same computation in the same process
    # and thread count, which could be exact; 1e-6 keeps the test about resuming, not about kernel choice.
    resumed, uninterrupted = (load_file(runs[name] / "model.safetensors") for name in ("resumed", "compiled"))
    assert resumed.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------------- speed logs


@pytest.mark.slow
def test_each_log_interval_reports_samples_flops_mfu_and_data_wait(runs):
    for name in ("compiled", "eager"):
        logged = logged_scalars(runs[name])
        for field in SPEED:
            values = logged[f"train/{field}"]
            assert len(values) == 4 and all(math.isfinite(v) for v in values), (name, field)
        assert all(0 < v <= 1 for v in logged["train/mfu"]), name
        assert all(0 <= v <= 1 for v in logged["train/data_wait_share"]), name
        assert all(v > 0 for v in logged["train/samples_per_second"] + logged["train/tflops_per_device"]), name
        # The MFU is the achieved TFLOP/s over the peak in the record (TensorBoard stores float32 scalars).
        peak = run_args(runs[name])["run"]["step_setup"]["matmul_peak_tflops"]
        mfu = [tflops / peak for tflops in logged["train/tflops_per_device"]]
        assert logged["train/mfu"] == pytest.approx(mfu, rel=1e-6), name
    assert run_args(runs["eager"])["run"]["step_setup"]["matmul_peak_tflops"] == 0.5  # --peak-tflops; the other, timed


def test_speed_flags_are_checked():
    with pytest.raises(InputError, match=r"--peak-tflops must be positive, got 0"):
        ExpertTrainingArguments(dataset="-", output="-", max_steps=1, peak_tflops=0)
    with pytest.raises(InputError, match=r"--torch-compile-backend must be one of \[.*'inductor'.*\], got 'fast'"):
        ExpertTrainingArguments(dataset="-", output="-", max_steps=1, torch_compile_backend="fast")


def test_a_recipe_compiles_every_training_stage(tmp_path):
    recipe = dataclasses.replace(load_recipe("offline-mix")[1], **SMOKE, torch_compile=True)
    graph = StageGraph(JobFolder(tmp_path / "job"), Comparison(recipe), Sources(), "an/encoder")
    commands = [stage.action for stage in graph.training() if not callable(stage.action)]
    trainings = [command[3:] for command in commands if command[1:3] == ["-m", TRAINING]]
    assert trainings and all("--torch-compile" in command for command in trainings)
    assert all(cli.parse(ExpertTrainingArguments, "", list(map(str, c))).torch_compile for c in trainings)


# ---------------------------------------------------------------------------------------------------- AdamW, SDPA


def test_fused_adamw_updates_as_torchs_default_kernel_and_comes_back_after_a_load():
    args = ExpertTrainingArguments(dataset="-", output="-", max_steps=10)
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(random_clip("tiny")[0])
    fused, default = (build_optimizer(model, args) for model in models)
    assert all(group["fused"] for group in fused.param_groups)  # the CPU has torch's fused AdamW kernel
    for group in default.param_groups:
        group["fused"] = False  # torch's default kernel: for-each on the CPU
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=generator) for p in models[0].parameters()]
        for model, optimizer in zip(models, (fused, default)):
            for parameter, grad in zip(model.parameters(), grads):
                parameter.grad = grad.clone()
            optimizer.step()
    # Other kernels, the same arithmetic in another order: float32 rounding of updates of about 5e-4 (lr).
    for (name, parameter), reference in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(parameter, reference, rtol=0, atol=1e-7, msg=name)

    # A state saved by the default kernel (a seed trained elsewhere) brings back its `fused: False`; the run's own
    # hyper-parameters put the fused kernel back.
    fused.load_state_dict(default.state_dict())
    assert not any(group["fused"] for group in fused.param_groups)
    set_hyperparameters(fused, args)
    assert all(group["fused"] for group in fused.param_groups)
    assert all(state["step"].dtype == torch.float32 and state["step"] == 3 for state in fused.state.values())
    fused.step()


def test_training_loads_clip_with_sdpa_attention(tmp_path):
    model, processor = random_clip("tiny")
    assert model.config._attn_implementation == "sdpa"
    model.save_pretrained(tmp_path / "clip")
    processor.save_pretrained(tmp_path / "clip")
    loaded, _ = load_start(Start("weights", str(tmp_path / "clip")))
    assert loaded.config._attn_implementation == loaded.text_model.config._attn_implementation == "sdpa"
