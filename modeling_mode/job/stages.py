"""The job's stage graph, built by dispatching on the type of each of its experiment's model specs (`layout`).

The data are built once; then, for each training seed's replicate, the seed CLIP, each model of the experiment with
the stages it needs first (a clustering, the experts), and the fork-point curve; after training, every model's
evaluations. Each stage carries its phase in the report's wall time. The clustering, training and assembly stages run
the library's entry points, as a user would (clustering and training through the sources' launcher); the data, curve
and evaluation stages run in the job's own process (an evaluation's start-up as a script, ~5 s, cost more than its
evaluating on the default recipe).
"""

import shlex
from functools import partial

from ..lib.assembly.run import AssembleArguments
from ..lib.clustering.run import ClusterArguments
from ..lib.core.entry_points import entry_point_command
from ..lib.evaluation.inputs import RetrievalArguments, ZeroShotArguments
from ..lib.evaluation.run import evaluate_retrieval, evaluate_zero_shot
from ..lib.growth.run import GrowArguments, shrink
from ..lib.training.arguments import ExpertTrainingArguments
from .arguments import Sources, default_encoder
from .data import HeldOutSets, prepare_data, read_sets
from .fork_curve import curve_finished, write_curve
from .layout import (
    CURVE_STAGE,
    DATA_STAGE,
    Clustering,
    DenseRun,
    Ensemble,
    GrownMode,
    JobFolder,
    Model,
    Output,
    Pairs,
    Replicate,
    Role,
    SeedRun,
    ShrunkMode,
    clustering_finished,
    file_finished,
    model_finished,
    training_finished,
)
from .routing_probe import write_routing_probe
from .runner import Phase, Stage

CLUSTERING, TRAINING, ASSEMBLY, GROWTH = (
    "modeling_mode.lib.clustering",
    "modeling_mode.lib.training",
    "modeling_mode.lib.assembly",
    "modeling_mode.lib.growth",
)


class StageGraph:
    """The stages of a job in `folder` of `experiment` (`experiments.Experiment`) on `sources`, clustering with
    `encoder`."""

    def __init__(self, folder: JobFolder, experiment, sources: Sources, encoder: str):
        self.folder, self.experiment, self.sources, self.encoder = folder, experiment, sources, encoder
        self.recipe, self.models = experiment.recipe, experiment.models
        self.pairs = experiment.training_sets(folder, sources)

    def training(self, replicates: list[Replicate] | None = None):
        """Every stage up to the trained models, in order: the data, then each replicate's (the job's, unless
        `replicates` says)."""
        yield Stage(DATA_STAGE, Output(self.folder.sources, file_finished), self.prepare_data, Phase.DATA)
        for replicate in self.folder.replicates(self.recipe) if replicates is None else replicates:
            yield from self.replicate_training(replicate)

    def evaluation(self, replicates: list[Replicate] | None = None):
        """Zero-shot classification on every held-out task and retrieval, of every model of every replicate; and the
        probed ensembles' routing."""
        held_out = read_sets(self.folder).held_out
        for replicate in self.folder.replicates(self.recipe) if replicates is None else replicates:
            for model in self.models:
                yield from self.model_evaluations(replicate, model, held_out)
            for model in self.experiment.probed_models:  # their routing on templates the project did not write
                yield self.routing_stage(replicate, model, held_out)

    def prepare_data(self) -> None:
        prepare_data(self.folder, self.experiment, self.sources)

    # ------------------------------------------------------------------------------------------- one replicate

    def replicate_training(self, replicate: Replicate):
        """The seed runs and the dense runs, the fork-point curve of them (when there is a Dense), then each ensemble
        with what it needs first, and the MODEs that change another."""
        for model in self.models:
            match model:
                case SeedRun():
                    yield self.training_stage(replicate, model.name, self.seed_arguments(replicate, model))
                case DenseRun():
                    yield self.training_stage(replicate, model.name, self.dense_arguments(replicate, model))
        if any(model.role is Role.DENSE for model in self.models):
            yield self.curve_stage(replicate)
        done = set()  # clusterings and experts that an earlier model had made
        for model in self.models:
            match model:
                case Ensemble():
                    stages = [self.clustering_stage(replicate, model.clustering),
                              *self.ensemble_stages(replicate, model)]  # fmt: skip
                    yield from (stage for stage in stages if stage.name not in done)
                    done |= {stage.name for stage in stages}
                case GrownMode():
                    yield self.grow_stage(replicate, model)
                case ShrunkMode():
                    yield self.shrink_stage(replicate, model)

    def seed_arguments(self, replicate: Replicate, model: SeedRun) -> ExpertTrainingArguments:
        """A seed run: its pairs, from `--init` or random weights, stopped at the fork (its schedule goes on)."""
        start = {"init": self.sources.init} if self.sources.init else {"config": str(self.folder.clip_config)}
        return self.expert_arguments(replicate.training_seed, dataset=self.data(model.data),
                                     output=str(replicate.model(model)), stop_at_step=self.recipe.seed_steps,
                                     **start)  # fmt: skip

    def dense_arguments(self, replicate: Replicate, model: DenseRun) -> ExpertTrainingArguments:
        """A dense run on all of its pairs to `model.max_steps`: forked from its seed, or (a wider model) trained as
        the seed was, from random weights, with the seed's training seed."""
        output, dataset = str(replicate.model(model)), self.data(model.data)
        if model.fork_from is not None:
            return self.forked(replicate, replicate.training_seed, model.fork_from, max_steps=model.max_steps,
                               output=output, dataset=dataset)  # fmt: skip
        return self.expert_arguments(replicate.training_seed, dataset=dataset, output=output,
                                     config=str(self.folder.wide_clip_config), max_steps=model.max_steps)  # fmt: skip

    def forked(self, replicate: Replicate, training_seed: int, seed_run: SeedRun, **fields) -> ExpertTrainingArguments:
        """A run forked from the fork checkpoint of `seed_run` (weights, optimizer, schedule position), on the job's
        pairs unless `fields` say otherwise. With the seed's --seed and --max-steps (Dense), it goes on as the seed run
        would have: the same learning rate at each step and the same batches (a step's batch is drawn from seed and
        step)."""
        fork = str(replicate.fork(self.recipe, seed_run))
        return self.expert_arguments(training_seed, **{"dataset": self.data(Pairs.JOB), "init": fork} | fields)

    def clustering_stage(self, replicate: Replicate, clustering: Clustering) -> Stage:
        output = replicate.clusters(clustering)
        arguments = ClusterArguments(
            dataset=self.data(clustering.data), split=self.sources.split, caption_column=self.sources.caption_column,
            fine_clusters=self.recipe.fine_clusters, seed=replicate.training_seed, output=str(output),
            encoder=str(replicate.seed_run) if clustering.seed_text else self.encoder, experts=clustering.experts,
            one_step=clustering.method == "one-step", random=clustering.method == "random",
        )  # fmt: skip
        command = entry_point_command(CLUSTERING, arguments, self.sources.launcher)
        return Stage(replicate.stage(f"cluster-{clustering.name}"), Output(output, clustering_finished), command,
                     Phase.CLUSTERING)  # fmt: skip

    def ensemble_stages(self, replicate: Replicate, model: Ensemble):
        """Train the experts (expert k on cluster k of the model's clustering), then assemble them into the MODE,
        routed by the clustering's encoder or by the seed CLIP's text tower (`model.router`)."""
        experts = []
        for k in range(model.n):
            if model.every_pair:  # Full-n: fork k in its own order (training seed 1000 (s + 1) + k: no other run's)
                training_seed, every_pair = 1000 * (replicate.training_seed + 1) + k, {"out_of_cluster_ratio": 1.0}
            else:
                training_seed, every_pair = replicate.training_seed, {}
            lora = {"lora_rank": model.lora_rank} if model.lora_rank else {}
            arguments = self.forked(replicate, training_seed, model.fork_from,
                                    dataset=str(replicate.labelled_pairs(model.clustering)), cluster=str(k),
                                    output=str(replicate.expert(model, k)), **every_pair, **lora)  # fmt: skip
            experts.append(arguments.output)
            yield self.training_stage(replicate, f"expert-{model.ensemble}-{k}", arguments)
        output = replicate.model(model)
        assembly = AssembleArguments(
            experts=experts, clusters=str(replicate.clusters(model.clustering)),
            router_text_model=str(replicate.model(model.fork_from)), output=str(output),
            router=model.router, router_lambda=self.recipe.router_lambda,
        )  # fmt: skip
        command = entry_point_command(ASSEMBLY, assembly)  # one process, not the launcher's: no distributed work
        yield Stage(replicate.stage(f"assemble-{model.assembly}"), Output(output, model_finished), command,
                    Phase.ASSEMBLY)  # fmt: skip

    def grow_stage(self, replicate: Replicate, model: GrownMode) -> Stage:
        """The MODE `model.parent` grown by its new experts on the arriving pairs, as a user grows one: `growth`'s
        entry point (train/grow.py), its clustering and training through the sources' launcher."""
        output = replicate.model(model)
        arguments = GrowArguments(
            model=str(replicate.model(model.parent)), dataset=self.data(Pairs.ARRIVING), output=str(output),
            new_experts=model.new_experts, caption_column=self.sources.caption_column, seed=replicate.training_seed,
            max_steps=model.max_steps,
            work_dir=str(replicate.grow_work(model)), launcher=shlex.join(self.sources.launcher),
        )  # fmt: skip
        command = entry_point_command(GROWTH, arguments)
        return Stage(replicate.stage(f"grow-{model.name}"), Output(output, model_finished), command, Phase.TRAINING)

    def shrink_stage(self, replicate: Replicate, model: ShrunkMode) -> Stage:
        """The grown MODE `model.parent` without the experts it was grown by, the last first."""
        parent = replicate.model(model.parent)
        remove = list(range(model.parent.n - 1, model.n - 1, -1))
        outputs = [replicate.shrink_step(model, k) for k in remove[:-1]] + [replicate.model(model)]
        reason = "the growth experiment: the arriving source's experts leave"

        def shrink_all():
            for expert, source, output in zip(remove, [parent, *outputs], outputs):
                if not model_finished(output):
                    shrink(str(source), expert, reason, str(output))

        output = Output(replicate.model(model), model_finished)
        return Stage(replicate.stage(f"shrink-{model.name}"), output, shrink_all, Phase.ASSEMBLY)

    def curve_stage(self, replicate: Replicate) -> Stage:
        """Every checkpoint of the seed run and of Dense (the seed's schedule to its end), and the last of each other
        dense run, scored on validation pairs. A curve that lacks one of them is made again."""
        seed, dense = (self.experiment.model(role) for role in (Role.SEED, Role.DENSE))
        others = [model for model in self.models if isinstance(model, DenseRun) and model != dense]
        curve = {seed.name: replicate.model(seed), dense.name: replicate.model(dense)}
        runs = {model.name: replicate.model(model) for model in others}
        write = partial(write_curve, replicate.curve, curve, self.recipe, self.sources.dataset is None, last_of=runs)
        output = Output(replicate.curve, partial(curve_finished, runs=[*curve, *runs]))
        return Stage(replicate.stage(CURVE_STAGE), output, write, Phase.CURVE)

    def training_stage(self, replicate: Replicate, name: str, arguments: ExpertTrainingArguments) -> Stage:
        command = entry_point_command(TRAINING, arguments, self.sources.launcher)
        return Stage(replicate.stage(name), Output(arguments.output, training_finished), command, Phase.TRAINING)

    def data(self, pairs: Pairs) -> str:
        """The dataset of the training pairs `pairs` (the experiment's: `training_sets`)."""
        return self.pairs[pairs].dataset

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

    def model_evaluations(self, replicate: Replicate, model: Model, held_out: HeldOutSets):
        """Each runs its script's own function (`evaluate_zero_shot`, `evaluate_retrieval`) on the arguments the
        script would parse, and prints its table into the stage's log."""
        path = str(replicate.model(model))
        for task, zeroshot in held_out.zeroshot.items():
            output = replicate.zeroshot_results(model, task)
            arguments = ZeroShotArguments(
                model=path, dataset=zeroshot.dataset, split=zeroshot.split, templates=zeroshot.templates,
                classnames=zeroshot.classnames, output=str(output),
            )  # fmt: skip
            yield Stage(replicate.stage(f"zeroshot-{model.name}-{task}"), Output(output, file_finished),
                        partial(show, evaluate_zero_shot, arguments), Phase.EVALUATION)  # fmt: skip
        retrieval, output = held_out.retrieval, replicate.retrieval_results(model)
        arguments = RetrievalArguments(
            model=path, dataset=retrieval.dataset, split=retrieval.split, caption_column=retrieval.caption_column,
            output=str(output),
        )  # fmt: skip
        yield Stage(replicate.stage(f"retrieval-{model.name}"), Output(output, file_finished),
                    partial(show, evaluate_retrieval, arguments), Phase.EVALUATION)  # fmt: skip

    def routing_stage(self, replicate: Replicate, model: Ensemble, held_out: HeldOutSets) -> Stage:
        output = replicate.routing_results(model)
        labelled_pairs = replicate.labelled_pairs(model.clustering)
        probe = partial(write_routing_probe, output, replicate.model(model), labelled_pairs, held_out)
        return Stage(replicate.stage(f"routing-{model.name}"), Output(output, file_finished), probe, Phase.EVALUATION)


def stage_phases(folder: JobFolder, experiments: list, record: dict) -> dict[str, Phase]:
    """{stage: its phase} of every stage the `experiments` make in `folder`, the job that `record` (`recipe.json`)
    records, in each of its replicates (an earlier run's too): the report's wall time, read from `timings.json`."""
    sources, encoder = Sources.from_record(record["sources"]), record.get("encoder") or default_encoder()
    replicates, phases = folder.every_replicate(experiments[0].recipe), {}
    for experiment in experiments:
        graph = StageGraph(folder, experiment, sources, encoder)
        stages = [*graph.training(replicates), *(graph.evaluation(replicates) if experiment.scores_test_sets else [])]
        phases |= {stage.name: stage.phase for stage in stages}
    return phases


def show(evaluate, arguments) -> None:
    """Print (into the stage's log) the table an evaluation script prints."""
    print(evaluate(arguments))
