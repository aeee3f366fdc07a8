"""Bad input to eval/zeroshot.py and eval/retrieval.py: one line naming the problem and exit status 2, found before
the model loads wherever it can be; and no code from a model repo runs without --trust-remote-code."""

import json
import os
import re
import subprocess
import sys

import datasets
import pytest
from helpers import RETRIEVAL, ROOT, ZEROSHOT, fails, random_images, save_mode
from transformers import BertConfig

CLASSES = ["circle", "square", "sneaker"]
# The cases that must fail before the model loads name a --model that does not exist: were the model loaded first,
# its error would come instead of the one the case expects.
UNLOADED = "/no/such/model"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Paths of the inputs the cases combine: a saved MODE, labelled images, captioned images, JSON lists."""
    root = tmp_path_factory.mktemp("inputs")
    labelled = datasets.Dataset.from_dict(
        {"image": random_images(4), "label": [0, 1, 2, 2]},
        features=datasets.Features(image=datasets.Image(), label=datasets.ClassLabel(names=CLASSES)),
    )
    # num_shards: datasets cannot load back an empty split saved without a shard.
    datasets.DatasetDict(test=labelled, empty=labelled.select([])).save_to_disk(
        root / "labelled", num_shards={"test": 1, "empty": 1}
    )
    datasets.Dataset.from_dict(
        {"image": random_images(2), "caption": [["a circle"], ["a square", "a box"]]}
    ).save_to_disk(root / "captioned")
    files = {
        "two_names.json": ["circle", "square"],  # the labels go up to 2
        "blank_name.json": ["circle", " ", "sneaker"],
        "twice.json": ["circle", "square", "circle "],
        "empty.json": [],
        "dict.json": {"not": "a list"},
        "positional.json": ["a photo of a {}."],
        "no_field.json": ["a photo."],
    }
    for name, content in files.items():
        (root / name).write_text(json.dumps(content))
    (root / "broken.json").write_text("[not json")
    (root / "a_file").write_text("")
    (root / "a_dir").mkdir()
    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(
        root / "bert"
    )
    save_mode(root / "mode")
    return root


def zeroshot_argv(root, **flags):
    flags = {"model": UNLOADED, "dataset": root / "labelled", "output": root / "out" / "results.json", **flags}
    return [part for flag, value in flags.items() for part in (f"--{flag.replace('_', '-')}", str(value))]


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"dataset": "ROOT/missing"}, r"--dataset '.*missing' does not exist"),
        ({"split": "empty"}, r"split 'empty' has no rows"),
        ({"split": "validation"}, r"has no split 'validation'; it has \['test', 'empty'\]"),
        ({"classnames": "ROOT/two_names.json"}, r"row 2 has label 2, which is not a class id: there are 2 class"),
        ({"classnames": "ROOT/empty.json"}, r"empty.json holds an empty list"),
        ({"classnames": "ROOT/blank_name.json"}, r"class names \[1\] \(by label id\) are empty: give every class"),
        ({"classnames": "ROOT/twice.json"}, r"class names appear more than once: 'circle' \(label ids \[0, 2\]\)"),
        ({"classnames": "ROOT/dict.json"}, r"dict.json must hold a JSON list of strings \(classnames\)"),
        ({"classnames": "ROOT/broken.json"}, r"broken.json is not JSON"),
        ({"classnames": "ROOT/missing.json"}, r"missing.json' \(classnames\) cannot be read: No such file"),
        ({"classnames": "no-such-set"}, r"clip-benchmark has no classnames for 'no-such-set'; it has: "),
        ({"templates": "ROOT/empty.json"}, r"empty.json holds an empty list"),
        ({"templates": "ROOT/positional.json"}, r"template 'a photo of a \{\}.' has a field other than \{c\}"),
        ({"templates": "ROOT/no_field.json"}, r"template 'a photo.' has no \{c\}"),
        ({"output": "ROOT/a_dir"}, r"--output '.*a_dir' is a directory"),
        ({"output": "ROOT/a_file/results.json"}, r"--output '.*results.json' is inside '.*a_file', which is a file"),
        ({"batch_size": 0}, r"--batch-size must be at least 1, got 0"),
        ({"limit": -1}, r"--limit must be at least 1, got -1"),
        ({"device": "gpu"}, r"--device 'gpu' is not a device \(Expected one of cpu, cuda"),
        ({"label_column": "class"}, r"--label-column 'class' is not a column of the dataset; it has \['image'"),
        ({"image_column": "picture"}, r"--image-column 'picture' is not a column"),
        ({"image_column": "label"}, r"--image-column 'label' holds ClassLabel.*not Image features"),
        ({"model": "ROOT/missing-model"}, r"--model '.*missing-model' does not exist"),
        ({"model": "ROOT/bert"}, r"is not a dual encoder of a MODE family or a MODE: its .* model_type is .bert."),
    ],
)
def test_zero_shot_bad_input_is_one_line_before_the_model_loads(inputs, capsys, flags, message):
    flags = {flag: str(value).replace("ROOT", str(inputs)) for flag, value in flags.items()}
    error = fails(ZEROSHOT.main, zeroshot_argv(inputs, **flags), capsys)
    assert re.search(message, error), error
    assert not (inputs / "out").exists()


def test_the_output_may_not_be_the_models_eval_results(inputs, capsys):
    argv = zeroshot_argv(inputs, model=inputs / "mode", output=inputs / "mode" / "eval_results.json")
    error = fails(ZEROSHOT.main, argv, capsys)
    assert error.endswith("eval_results.json' is the model's eval_results.json: name another file.")
    assert not (inputs / "mode" / "eval_results.json").exists()


def test_a_truncated_weight_file_is_named(inputs, tmp_path, capsys):
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for file in (inputs / "mode").iterdir():
        data = file.read_bytes()
        (truncated / file.name).write_bytes(data[: len(data) // 2] if file.name == "model.safetensors" else data)
    error = fails(ZEROSHOT.main, zeroshot_argv(inputs, model=truncated), capsys)
    assert "model.safetensors cannot be read" in error and "truncated" in error


def test_a_corrupt_image_is_named_by_its_row(inputs, tmp_path, capsys):
    images = [*random_images(2), {"bytes": b"GIF89a, then nothing", "path": None}]
    datasets.Dataset.from_dict(
        {"image": images, "label": [0, 1, 2]},
        features=datasets.Features(image=datasets.Image(), label=datasets.ClassLabel(names=CLASSES)),
    ).save_to_disk(tmp_path / "corrupt")
    argv = zeroshot_argv(inputs, model=inputs / "mode", dataset=tmp_path / "corrupt", split="train", batch_size=2)
    error = fails(ZEROSHOT.main, argv, capsys)
    assert "row 2 of --image-column 'image' is not an image that can be decoded" in error


@pytest.mark.parametrize(
    "captions",
    [[["a circle"], [], ["a box"]], [["a circle"], None, ["a box"]], ["a circle", "", "a box"], [["a"], ["b", ""]]],
)
def test_retrieval_refuses_a_row_without_captions(inputs, tmp_path, capsys, captions):
    images = random_images(len(captions))
    datasets.Dataset.from_dict({"image": images, "caption": captions}).save_to_disk(tmp_path / "pairs")
    argv = ["--model", UNLOADED, "--dataset", str(tmp_path / "pairs"), "--split", "train"]
    argv += ["--output", str(tmp_path / "results.json")]
    error = fails(RETRIEVAL.main, argv, capsys)
    assert f"row 1 of --caption-column 'caption' holds {captions[1]!r}: every image needs a caption" in error


def test_retrieval_names_a_missing_caption_column(inputs, tmp_path, capsys):
    argv = [
        "--model",
        UNLOADED,
        "--dataset",
        str(inputs / "captioned"),
        "--split",
        "train",
        "--caption-column",
        "text",
    ]
    error = fails(RETRIEVAL.main, [*argv, "--output", str(tmp_path / "results.json")], capsys)
    assert "--caption-column 'text' is not a column of the dataset; it has ['image', 'caption']" in error


# ------------------------------------------------------------------ scripts in their own process: exit status, code


def script(name, *args, **env):
    return subprocess.run(
        [sys.executable, str(ROOT / "eval" / name), *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


EVIL_CODE = """
from pathlib import Path
Path({sentinel!r}).write_text("the repo's code ran")
from transformers import PretrainedConfig
class EvilConfig(PretrainedConfig):
    model_type = "evil_clip"
"""


@pytest.mark.slow
@pytest.mark.parametrize("trusted", [False, True])
def test_a_model_repos_code_runs_only_with_trust_remote_code(inputs, tmp_path, trusted):
    """A repo whose config maps the Auto classes to its own Python file, which leaves a sentinel file when run."""
    evil, sentinel = tmp_path / "evil-model", tmp_path / "sentinel"
    evil.mkdir()
    (evil / "evil.py").write_text(EVIL_CODE.format(sentinel=str(sentinel)))
    auto_map = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    (evil / "config.json").write_text(json.dumps({"model_type": "evil_clip", "auto_map": auto_map}))

    flags = ["--trust-remote-code"] if trusted else []
    # A fresh HF_HOME: the modules cache, where transformers copies a repo's code to import it, is this test's own.
    result = script("zeroshot.py", *zeroshot_argv(inputs, model=evil), *flags, HF_HOME=str(tmp_path / "hf_home"))

    if trusted:  # the sentinel works (loading fails after it, on a repo that holds no model): so does the refusal
        assert sentinel.exists()
        return
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --model '{evil}' (model_type 'evil_clip') loads with Python code of its own (its config's "
        "auto_map): pass --trust-remote-code if you trust that code."
    ]
    assert not sentinel.exists()
    assert not list((tmp_path / "hf_home").rglob("evil.py"))  # not even copied into the modules cache
