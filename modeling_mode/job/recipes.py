"""What the main job trains and how long: the `Recipe`, the built-in recipes, and the checks made before any work.

A built-in recipe is the default `Recipe` plus a few overrides, as nanoGPT's config files are; a user's recipe is a
JSON file of `Recipe` fields (e.g. a longer schedule and bigger batches for a GPU run from a pretrained seed).
"""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..families import FAMILIES
from ..lib.core.errors import InputError
from ..lib.core.files import read_json


@dataclass(frozen=True)
class Recipe:
    """What the job trains and how long. Step counts are optimizer steps of `batch_size` pairs per process."""

    fine_clusters: int
    experts: tuple[int, ...]  # MODE sizes n
    batch_size: int
    seed_steps: int  # the seed trains on all pairs this long, then the experts fork (the paper: epoch 27 of 32)
    expert_steps: int  # each expert then trains this long on its cluster
    warmup_steps: int
    learning_rate: float
    random_experts: int = 2  # the Random-n ablation's n (0: no Random-n)
    num_workers: int = 0  # data loader workers per training process
    checkpoint_every: int = 100  # a killed training stage resumes from its last checkpoint
    torch_compile: bool = False  # the training stages' --torch-compile (a GPU recipe's choice)
    seed: int = 0  # the first training seed, and the offline corpus's draws' (a recipe.json field, name kept)
    # A seed trained from random weights (no `--init`): width, layers, heads, image and patch size; and its family
    # (`modeling_mode.families`: clip, metaclip_2, siglip, siglip2). With --init, the checkpoint's family is the job's.
    model: dict | None = None
    family: str = "clip"
    # LoRA experts: adapters of this rank on the seed (train/expert.py --lora-rank, its default layers). Without
    # `lora_experts`, every ensemble's experts are LoRA experts; with it, only LoRA-n's. Dense runs train every weight.
    lora_rank: int | None = None
    lora_experts: tuple[int, ...] = ()  # LoRA-n: MODE-n's clustering and router, its experts LoRA; n in `experts`
    # The offline corpus, for the sets that `Sources` does not name:
    train_per_source: int = 8000  # training pairs drawn from each source's train split
    test_per_source: int = 1000  # held-out images per source for zero-shot classification
    retrieval_per_source: int = 200  # held-out images per source for retrieval
    validation_per_source: int = 200  # images per source held out of the train splits: the fork curve's
    caption_noise: float = 0.1  # share of pairs whose caption is another pair's (web noise)
    caption_attributes: bool = False  # captions add words measured from each image's pixels (`corpus.caption_pairs`)
    # The paper's baselines and ablations beside MODE-n and Random-n (each list may be empty):
    full_experts: tuple[int, ...] = (2,)  # Full-n: n forks of the seed, each on all pairs, averaged; n in `experts`
    onestep_experts: tuple[int, ...] = (2,)  # OneStep-n: balanced k-means straight into n clusters
    seedtext_experts: tuple[int, ...] = (2,)  # SeedText-n: MODE-n clustered in the seed CLIP's text space
    # The routing probe (`routing_probe`) of every routed ensemble, or (False) of MODE-n alone, n the least of
    # `experts`: the probe encodes every class in 80 templates, the costliest evaluation of a small job.
    probe_every_ensemble: bool = True
    seeds: int = 1  # how many training seeds: the whole experiment for seed, seed + 1, ..., seed + seeds - 1
    # The paper's routing's kernel width. The paper's 0.2 suits SimCSE's space; in all-MiniLM-L6-v2's, class prompts
    # sit farther from the caption centres and 0.2 routes them nearly uniformly. 2.0 was chosen from 0.2, 0.5, 1 and
    # 2 on the routing mass of the project's own templates (docs/model.md, routing), then checked on templates it
    # never saw.
    router_lambda: float = 2.0
    # The growth experiment: this source's pairs arrive after MODE-n was trained on the others' (issue "a MODE that
    # grows"); the comparison becomes `layout.growth_comparison`: MODE-n grown by `new_experts` experts on them.
    arriving_source: str | None = None
    new_experts: int = 1

    @property
    def total_steps(self) -> int:
        return self.seed_steps + self.expert_steps

    @property
    def training_seeds(self) -> range:
        """The job's training seeds: each runs the whole experiment in its own folder (`layout.Replicate`)."""
        return range(self.seed, self.seed + self.seeds)


SIZE_LISTS = (
    "experts",
    "full_experts",
    "onestep_experts",
    "seedtext_experts",
    "lora_experts",
)  # lists of ensemble sizes n
# Fields added after jobs were recorded without them, each with the value that those jobs ran with: such a job
# resumes with that value, and is refused with another (`main.record_settings`).
ADDED_LATER = {"validation_per_source": 200, "router_lambda": 0.2, "arriving_source": None, "new_experts": 1,
               "seedtext_experts": [2], "probe_every_ensemble": True, "family": "clip", "lora_rank": None,
               "lora_experts": []}  # fmt: skip

OFFLINE_MIX = Recipe(
    fine_clusters=64,
    experts=(2, 4),
    random_experts=2,
    model=dict(width=128, layers=3, heads=4, image_size=32, patch_size=4),
    batch_size=128,
    seed_steps=600,
    expert_steps=100,
    warmup_steps=50,
    learning_rate=1e-3,
    train_per_source=8000,
    test_per_source=1000,
    retrieval_per_source=200,
    caption_noise=0.1,
)
# The paper's regime at small scale: a model small enough that capacity binds, on few enough pairs (4,500) that the
# seed converges: 32 epochs, the experts forking at epoch 27 (step 950) for 5 more epochs' steps (175), as the paper's
# MODE forks MetaCLIP. Chosen on validation pairs only (`--validation-only`, docs/results.md).
CONVERGED = dict(
    train_per_source=1500,
    model=dict(width=64, layers=2, heads=2, image_size=32, patch_size=8),
    seed_steps=950,
    expert_steps=175,
    validation_per_source=1000,
)
# The built-in recipes: each the default one with its overrides.
RECIPES = {
    "offline-mix": {},
    "offline-mix-attributes": dict(caption_attributes=True),
    "offline-mix-converged": dict(CONVERGED, seeds=8),
    # LoRA experts against full ones in the paper's regime: MODE-2 and MODE-4 each beside LoRA-2 and LoRA-4, from
    # the same seed and clustering, on 4 training seeds; the other ablations left out.
    "offline-mix-converged-lora": dict(
        CONVERGED,
        seeds=4,
        lora_rank=4,
        lora_experts=(2, 4),
        full_experts=(),
        onestep_experts=(),
        seedtext_experts=(),
        random_experts=0,
        probe_every_ensemble=False,
    ),
    # MODE-2 on Fashion-MNIST and MNIST, grown by one expert when easy-VQA's pairs arrive, in the converged regime.
    "offline-grow": dict(
        CONVERGED,
        experts=(2,),
        full_experts=(),
        onestep_experts=(),
        arriving_source="easy_vqa",
        new_experts=1,
        seeds=3,
    ),
}
# The same stages, on a few hundred pairs and one size of each ensemble: minutes, mostly process start-up.
SMOKE = dict(
    train_per_source=150,
    test_per_source=30,
    retrieval_per_source=10,
    fine_clusters=8,
    experts=(2,),
    full_experts=(2,),
    onestep_experts=(2,),
    probe_every_ensemble=False,
    model=dict(width=32, layers=1, heads=2, image_size=32, patch_size=8),
    batch_size=16,
    seed_steps=6,
    expert_steps=3,
    warmup_steps=2,
    checkpoint_every=2,
)


def load_recipe(name_or_file: str) -> tuple[str, Recipe]:
    """A built-in recipe by name, or a JSON file of `Recipe` fields named by its file's stem."""
    if name_or_file in RECIPES:
        return name_or_file, dataclasses.replace(OFFLINE_MIX, **RECIPES[name_or_file])
    if not Path(name_or_file).is_file():
        raise InputError(
            f"unknown recipe {name_or_file!r}: name one of {sorted(RECIPES)}, or a JSON file of its fields."
        )
    try:
        return Path(name_or_file).stem, recipe_from_json(read_json(name_or_file))
    except TypeError as error:
        raise InputError(
            f"{name_or_file} is not a recipe ({error}); its fields are those of {Recipe.__name__}."
        ) from None


def recipe_from_json(fields: dict) -> Recipe:
    """A `Recipe` from its JSON fields (a recipe file, or the job's `recipe.json`, whose other keys are left out);
    TypeError for a missing or unknown field of a recipe file."""
    if "sources" in fields:  # the job's record: the recipe's fields, the recipe's name and the sources
        fields = {spec.name: fields[spec.name] for spec in dataclasses.fields(Recipe) if spec.name in fields}
    recipe = Recipe(**fields)
    lists = {name: tuple(value) for name in SIZE_LISTS if isinstance(value := getattr(recipe, name), list)}
    return dataclasses.replace(recipe, **lists)  # JSON lists as the tuples a Recipe holds


def check_recipe(recipe: Recipe, num_pairs: int | None) -> None:
    """Refuse, before any work, a recipe that some stage would fail on (or, worse, run on) hours into the job."""
    at_least = {"fine_clusters": 1, "batch_size": 1, "seed_steps": 1, "expert_steps": 1, "checkpoint_every": 1,
                "warmup_steps": 0, "num_workers": 0, "random_experts": 0, "train_per_source": 1,
                "test_per_source": 1, "retrieval_per_source": 1, "validation_per_source": 1, "seed": 0,
                "seeds": 1}  # fmt: skip
    for name, least in at_least.items():
        if not (isinstance(getattr(recipe, name), int) and getattr(recipe, name) >= least):
            raise InputError(f"recipe field {name} must be an integer >= {least}, got {getattr(recipe, name)!r}.")
    if not recipe.learning_rate > 0 or not recipe.router_lambda > 0 or not 0 <= recipe.caption_noise <= 1:
        raise InputError(
            f"recipe fields learning_rate and router_lambda must be > 0 and caption_noise in [0, 1], got "
            f"{recipe.learning_rate}, {recipe.router_lambda} and {recipe.caption_noise}."
        )
    if recipe.family not in FAMILIES:
        raise InputError(f"recipe field family: {recipe.family!r} is not a MODE expert family: use one of "
                         f"{', '.join(FAMILIES)}.")  # fmt: skip
    if recipe.lora_rank is not None and not (isinstance(recipe.lora_rank, int) and recipe.lora_rank >= 1):
        raise InputError(f"recipe field lora_rank must be null or an integer >= 1, got {recipe.lora_rank!r}.")
    for name in ("caption_attributes", "probe_every_ensemble"):
        if not isinstance(getattr(recipe, name), bool):
            raise InputError(f"recipe field {name} must be true or false, got {getattr(recipe, name)!r}.")
    check_ensemble_sizes(recipe)
    if recipe.arriving_source is not None:
        check_growth(recipe)
    if num_pairs is not None and num_pairs < max(recipe.fine_clusters, recipe.batch_size):
        raise InputError(
            f"the training pairs are {num_pairs}: fewer than the recipe's fine_clusters ({recipe.fine_clusters}) or "
            f"batch_size ({recipe.batch_size})."
        )


def check_ensemble_sizes(recipe: Recipe) -> None:
    """Every clustering splits the pairs into n experts with 1 <= n <= fine_clusters: MODE-n, OneStep-n, SeedText-n
    and Random-n (random_experts 0: none). Full-n's forks train on MODE-n's clustering (`layout.comparison`)."""
    lists = {name: getattr(recipe, name) for name in SIZE_LISTS}
    random = [recipe.random_experts] if recipe.random_experts != 0 else []
    fits = all(isinstance(values, tuple) for values in lists.values()) and all(
        isinstance(n, int) and 1 <= n <= recipe.fine_clusters for n in [*sum(lists.values(), ()), *random]
    )
    if not recipe.experts or not fits:
        given = ", ".join(f"{name}={list(v) if isinstance(v, tuple) else v!r}" for name, v in lists.items())
        raise InputError(
            f"recipe fields {', '.join(SIZE_LISTS)} must list sizes n with 1 <= n <= fine_clusters "
            f"({recipe.fine_clusters}), as must random_experts unless it is 0 (experts at least one); "
            f"got {given}, random_experts={recipe.random_experts}."
        )
    for name, control in (("full_experts", "Full-n"), ("lora_experts", "LoRA-n")):
        if unknown := sorted(set(getattr(recipe, name)) - set(recipe.experts)):
            raise InputError(
                f"recipe field {name} lists {unknown}, not MODE sizes (experts={list(recipe.experts)}): {control} is "
                "MODE-n's control, its experts trained on MODE-n's clustering."
            )
    if recipe.lora_experts and recipe.lora_rank is None:
        raise InputError("recipe field lora_experts needs lora_rank, the rank of LoRA-n's adapters.")


def check_growth(recipe: Recipe) -> None:
    """The growth experiment holds one of the offline corpus's sources back and grows the first MODE size by it."""
    from ..lib.data.offline_corpus import SOURCES

    if recipe.arriving_source not in SOURCES or len(SOURCES) < 2:
        raise InputError(
            f"recipe field arriving_source must name one of the offline corpus's sources {sorted(SOURCES)}, got "
            f"{recipe.arriving_source!r}."
        )
    n = recipe.experts[0]
    if not (isinstance(recipe.new_experts, int) and 1 <= recipe.new_experts <= recipe.fine_clusters - n):
        raise InputError(
            f"recipe field new_experts must be an integer from 1 to fine_clusters - experts[0] "
            f"({recipe.fine_clusters - n}), got {recipe.new_experts!r}."
        )


def random_expert_config(recipe: Recipe, width_factor: int = 1) -> dict:
    """The config (as a dict, its model_type the recipe's family) of the experts trained from scratch, sized for the
    character-level tokenizer; `width_factor` times as wide (width and heads: the same head size) for the wide dense
    control."""
    from ..lib.training.processors import char_level_config

    if recipe.model is None:
        raise InputError("the recipe has no `model` to train from random weights: add one, or start from --init.")
    model = dict(recipe.model)
    for name in ("width", "heads"):
        if name in model:
            model[name] *= width_factor
    try:
        return {"model_type": recipe.family, **char_level_config(recipe.family, **model)}
    except TypeError as error:
        raise InputError(f"the recipe's model {recipe.model} is not a model size: {error}.") from None
