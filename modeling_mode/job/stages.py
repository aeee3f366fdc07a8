"""The job's stage graph, built by iterating over the comparison's `Model` specs (`layout.comparison`).

The data are built once; then, for each training seed, the seed CLIP, each model of the comparison with the stages it
needs first (a clustering, the experts), and the fork-point curve; after training, every model's evaluations. The
clustering, training and assembly stages run the library's entry points, as a user would (clustering and training
through the sources' launcher); the data, curve and evaluation stages run in the job's own process (an evaluation's
start-up as a script, ~5 s, cost more than its evaluating on the default recipe).
"""

import shlex
from functools import partial

from ..lib.assembly.run import AssembleArguments
from ..lib.clustering.run import ClusterArguments
from ..lib.core.files import read_json
from ..lib.evaluation.inputs import RetrievalArguments, ZeroShotArguments
from ..lib.evaluation.run import evaluate_retrieval, evaluate_zero_shot
from ..lib.growth.run import GrowArguments, shrink
from ..lib.training.arguments import ExpertTrainingArguments
from .arguments import Sources
from .data import prepare_data, training_pairs
from .fork_curve import curve_finished, write_curve
from .layout import (
    CURVE_STAGE,
    DATA_STAGE,
    PAPER_ROW,
    Clustering,
    JobFolder,
    Model,
    Output,
    SeedFolder,
    clustering_finished,
    comparison,
    file_finished,
    model_finished,
    training_finished,
    validation_models,
)
from .recipes import Recipe
from .routing_probe import write_routing_probe
from .runner import Stage, module_command

CLUSTERING, TRAINING, ASSEMBLY, GROWTH = (
    "modeling_mode.lib.clustering",
    "modeling_mode.lib.training",
    "modeling_mode.lib.assembly",
    "modeling_mode.lib.growth",
)


class StageGraph:
    """The stages of a job in `folder` for `recipe` on `sources`, clustering with `encoder`."""

    def __init__(
        self, folder: JobFolder, recipe: Recipe, sources: Sources, encoder: str, validation_only: bool = False
    ):
        """`validation_only`: train only the models that place the recipe on validation pairs
        (`layout.validation_models`), and score no held-out test set."""
        self.folder, self.recipe, self.sources, self.encoder = folder, recipe, sources, encoder
        self.models = validation_models(recipe, wide=sources.init is None) if validation_only else comparison(recipe)

    def training(self):
        """Every stage up to the trained models, in order: the data, then each training seed's."""
        yield Stage(DATA_STAGE, Output(self.folder.sources, file_finished), self.prepare_data)
        for seed in self.folder.seeds(self.recipe):
            yield from self.seed_training(seed)

    def evaluation(self):
        """Zero-shot classification on every held-out task and retrieval, of every model of every training seed."""
        sets = read_json(self.folder.sources)
        for seed in self.folder.seeds(self.recipe):
            for model in self.models:
                yield from self.model_evaluations(seed, model, sets)
            if self.recipe.arriving_source is not None:
                continue  # the growth report reads no routing probe
            for model in self.probed_models():  # their routing on templates the project did not write
                yield self.routing_stage(seed, model, sets)

    def probed_models(self) -> list[Model]:
        """The routed ensembles whose routing the probe measures: every one, or MODE-n alone (the first)."""
        routed = [model for model in self.models if model.kind == "ensemble" and model.main_row == PAPER_ROW]
        return routed if self.recipe.probe_every_ensemble else routed[:1]

    def prepare_data(self) -> None:
        prepare_data(self.folder, self.recipe, self.sources)

    # ------------------------------------------------------------------------------------------- one training seed

    def seed_training(self, seed: SeedFolder):
        """The seed runs and the dense runs, the fork-point curve of them (when there is a Dense), then each ensemble
        with what it needs first, and the MODEs that change another."""
        for model in self.models:
            if model.kind == "seed":
                yield self.training_stage(seed, model.name, self.seed_arguments(seed, model))
            elif model.kind == "dense":
                yield self.training_stage(seed, model.name, self.dense_arguments(seed, model))
        if any(model.name == "dense" for model in self.models):
            yield self.curve_stage(seed)
        done = set()  # clusterings and experts that an earlier model had made
        for model in self.models:
            if model.kind == "ensemble":
                stages = [self.clustering_stage(seed, model.clustering), *self.ensemble_stages(seed, model)]
                yield from (stage for stage in stages if stage.name not in done)
                done |= {stage.name for stage in stages}
            elif model.kind == "grow":
                yield self.grow_stage(seed, model)
            elif model.kind == "shrink":
                yield self.shrink_stage(seed, model)

    def seed_arguments(self, seed: SeedFolder, model: Model) -> ExpertTrainingArguments:
        """A seed run: its pairs, from `--init` or random weights, stopped at the fork (its schedule goes on)."""
        start = {"init": self.sources.init} if self.sources.init else {"config": str(self.folder.clip_config)}
        return self.expert_arguments(seed.seed, dataset=self.data(model.data), output=str(seed.model(model)),
                                     stop_at_step=self.recipe.seed_steps, **start)  # fmt: skip

    def dense_arguments(self, seed: SeedFolder, model: Model) -> ExpertTrainingArguments:
        """A dense run on all pairs to `model.max_steps`: forked from the seed, or (a wider model) trained as the seed
        was, from random weights, with the seed's training seed."""
        if model.width_factor == 1:
            return self.forked(seed, seed.seed, model.fork_from, max_steps=model.max_steps,
                               output=str(seed.model(model)), dataset=self.data(model.data))  # fmt: skip
        return self.expert_arguments(seed.seed, dataset=self.data(model.data), output=str(seed.model(model)),
                                     config=str(self.folder.wide_clip_config), max_steps=model.max_steps)  # fmt: skip

    def forked(self, seed: SeedFolder, training_seed: int, seed_run: str, **fields) -> ExpertTrainingArguments:
        """A run forked from the fork checkpoint of the seed run `seed_run` (weights, optimizer, schedule position), on
        the job's pairs unless `fields` say otherwise. With the seed's --seed and --max-steps (Dense), it goes on as
        the seed run would have: the same learning rate at each step and the same batches (a step's batch is drawn
        from seed and step)."""
        return self.expert_arguments(
            training_seed, **{"dataset": self.pairs, "init": str(seed.fork(self.recipe, seed_run))} | fields
        )

    def clustering_stage(self, seed: SeedFolder, clustering: Clustering) -> Stage:
        output = seed.clusters(clustering)
        arguments = ClusterArguments(
            dataset=self.data(clustering.data), split=self.sources.split, caption_column=self.sources.caption_column,
            fine_clusters=self.recipe.fine_clusters, seed=seed.seed, output=str(output),
            encoder=str(seed.seed_run) if clustering.seed_text else self.encoder, experts=clustering.experts,
            one_step=clustering.method == "one-step", random=clustering.method == "random",
        )  # fmt: skip
        command = module_command(CLUSTERING, arguments, self.sources.launcher)
        return Stage(seed.stage(f"cluster-{clustering.name}"), Output(output, clustering_finished), command)

    def ensemble_stages(self, seed: SeedFolder, model: Model):
        """Train the experts (expert k on cluster k of the model's clustering), then assemble them into the MODE,
        routed by the clustering's encoder or by the seed CLIP's text tower (`model.router`)."""
        clusters, experts = seed.clusters(model.clustering), []
        for k in range(model.clustering.experts):
            if model.every_pair:  # Full-n: fork k in its own order (training seed 1000 (s + 1) + k: no other run's)
                training_seed, every_pair = 1000 * (seed.seed + 1) + k, {"out_of_cluster_ratio": 1.0}
            else:
                training_seed, every_pair = seed.seed, {}
            arguments = self.forked(seed, training_seed, model.fork_from, dataset=str(clusters / "dataset"),
                                    cluster=str(k), output=str(seed.expert(model, k)), **every_pair)  # fmt: skip
            experts.append(arguments.output)
            yield self.training_stage(seed, f"expert-{model.ensemble}-{k}", arguments)
        output = seed.model(model)
        assembly = AssembleArguments(
            experts=experts, clusters=str(clusters), router_text_model=str(seed.run(model.fork_from)),
            output=str(output),
            router=model.router, router_lambda=self.recipe.router_lambda,
        )  # fmt: skip
        command = module_command(ASSEMBLY, assembly)  # one process, not the launcher's: no distributed work
        yield Stage(seed.stage(f"assemble-{model.assembly}"), Output(output, model_finished), command)

    def grow_stage(self, seed: SeedFolder, model: Model) -> Stage:
        """The MODE `model.parent` grown by the recipe's new experts on the arriving pairs, as a user grows one:
        `growth`'s entry point (train/grow.py), its clustering and training through the sources' launcher."""
        arguments = GrowArguments(
            model=str(seed.run(model.parent)), dataset=self.data("arriving"), output=str(seed.model(model)),
            new_experts=self.recipe.new_experts, caption_column=self.sources.caption_column, seed=seed.seed,
            max_steps=model.max_steps,
            work_dir=str(seed.grow_work(model)), launcher=shlex.join(self.sources.launcher),
        )  # fmt: skip
        command = module_command(GROWTH, arguments)
        return Stage(seed.stage(f"grow-{model.name}"), Output(seed.model(model), model_finished), command)

    def shrink_stage(self, seed: SeedFolder, model: Model) -> Stage:
        """The grown MODE `model.parent` without the experts it was grown by, the last first."""
        parent, steps = seed.run(model.parent), seed.grow_work(model)
        remove = list(range(model.n + self.recipe.new_experts - 1, model.n - 1, -1))
        outputs = [steps / f"without-{k}" for k in remove[:-1]] + [seed.model(model)]
        reason = "the growth experiment: the arriving source's experts leave"

        def shrink_all():
            for expert, source, output in zip(remove, [parent, *outputs], outputs):
                if not model_finished(output):
                    shrink(str(source), expert, reason, str(output))

        return Stage(seed.stage(f"shrink-{model.name}"), Output(seed.model(model), model_finished), shrink_all)

    def curve_stage(self, seed: SeedFolder) -> Stage:
        """Every checkpoint of the seed run and of Dense (the seed's schedule to its end), and the last of each other
        dense run, scored on validation pairs. A curve that lacks one of them is made again."""
        dense = [model for model in self.models if model.kind == "dense"]
        runs = {model.name: seed.model(model) for model in dense if model.name != "dense"}
        curve = {"seed": seed.seed_run, "dense": seed.model(next(model for model in dense if model.name == "dense"))}
        write = partial(write_curve, seed.curve, curve, self.recipe, self.sources.dataset is None, last_of=runs)
        output = Output(seed.curve, partial(curve_finished, runs=[*curve, *runs]))
        return Stage(seed.stage(CURVE_STAGE), output, write)

    def training_stage(self, seed: SeedFolder, name: str, arguments: ExpertTrainingArguments) -> Stage:
        command = module_command(TRAINING, arguments, self.sources.launcher)
        return Stage(seed.stage(name), Output(arguments.output, training_finished), command)

    @property
    def pairs(self) -> str:
        return training_pairs(self.folder, self.sources)

    def data(self, name: str) -> str:
        """The training pairs called `name` (`layout.DATA`): the job's, or the growth experiment's others."""
        return {"pairs": self.pairs, "arriving": str(self.folder.offline_arriving_pairs),
                "all": str(self.folder.offline_all_pairs)}[name]  # fmt: skip

    def expert_arguments(self, training_seed: int, **fields) -> ExpertTrainingArguments:
        """A training stage's arguments: the recipe's schedule and the sources' columns, and `fields`.

        --resume: a stage killed mid-way goes on from its last checkpoint (or starts, when it has none yet)."""
        r, s = self.recipe, self.sources
        return ExpertTrainingArguments(
            image_column=s.image_column,
            caption_column=s.caption_column,
            batch_size=r.batch_size,
            learning_rate=r.learning_rate,
            warmup_steps=r.warmup_steps,
            num_workers=r.num_workers,
            checkpoint_every=r.checkpoint_every,
            torch_compile=r.torch_compile,
            resume=True,
            report_to="tensorboard",
            **{"seed": training_seed, "max_steps": r.total_steps, "split": s.split, **fields},
        )

    # ------------------------------------------------------------------------------------------- the evaluations

    def model_evaluations(self, seed: SeedFolder, model: Model, sets: dict):
        """Each runs its script's own function (`evaluate_zero_shot`, `evaluate_retrieval`) on the arguments the
        script would parse, and prints its table into the stage's log."""
        path = str(seed.model(model))
        for task, held_out in sets["zeroshot"].items():
            output = seed.zeroshot_results(model, task)
            arguments = ZeroShotArguments(
                model=path, dataset=held_out["dataset"], split=held_out["split"],
                templates=held_out.get("templates"), classnames=held_out.get("classnames"), output=str(output),
            )  # fmt: skip
            yield Stage(seed.stage(f"zeroshot-{model.name}-{task}"), Output(output, file_finished),
                        partial(show, evaluate_zero_shot, arguments))  # fmt: skip
        held_out, output = sets["retrieval"], seed.retrieval_results(model)
        arguments = RetrievalArguments(
            model=path, dataset=held_out["dataset"], split=held_out["split"],
            caption_column=held_out["caption_column"], output=str(output),
        )  # fmt: skip
        yield Stage(seed.stage(f"retrieval-{model.name}"), Output(output, file_finished),
                    partial(show, evaluate_retrieval, arguments))  # fmt: skip

    def routing_stage(self, seed: SeedFolder, model: Model, sets: dict) -> Stage:
        output = seed.routing_results(model)
        probe = partial(write_routing_probe, output, seed.model(model), seed.clusters(model.clustering), sets)
        return Stage(seed.stage(f"routing-{model.name}"), Output(output, file_finished), probe)


def show(evaluate, arguments) -> None:
    """Print (into the stage's log) the table an evaluation script prints."""
    print(evaluate(arguments))
