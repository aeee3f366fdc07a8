"""A MODE folder is untrusted input (`lib.core.mode_folder`): every tool that loads one refuses, in one line and before
anything is built or written, a folder whose config does not describe its weights or whose files lie elsewhere."""

import hashlib
import json
import shutil

import datasets
import pytest
from helpers import ZEROSHOT, fails, random_images, save_mode
from safetensors.torch import load_file, save_file

from modeling_mode.lib.core.mode_folder import check_mode_folder
from modeling_mode.lib.growth.command_line import grow_main, shrink_main
from modeling_mode.lib.publish.command_line import main as push_main


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """A tiny MODE (3 experts, 9 fine clusters), which each test copies before changing it, and labelled images."""
    root = tmp_path_factory.mktemp("originals")
    features = datasets.Features(image=datasets.Image(), label=datasets.ClassLabel(names=["circle", "square"]))
    labelled = datasets.Dataset.from_dict({"image": random_images(2), "label": [0, 1]}, features=features)
    labelled.save_to_disk(root / "labelled")
    return save_mode(root / "mode"), root / "labelled"


def edit_config(mode, **fields):
    config = json.loads((mode / "config.json").read_text())
    (mode / "config.json").write_text(json.dumps(config | fields))


def edit_weights(mode, edit):
    tensors = load_file(mode / "model.safetensors")
    edit(tensors)
    save_file(tensors, mode / "model.safetensors", metadata={"format": "pt"})


def nan_centre(tensors):
    tensors["fine_centroids"][0, 0] = float("nan")


def link(mode, name, target):
    (mode / name).parent.mkdir(exist_ok=True)
    (mode / name).symlink_to(target)


# How a MODE folder is tampered with (the folder, a file outside it), and what the refusal says.
TAMPERED = {
    "num_experts 5": (lambda mode, _: edit_config(mode, num_experts=5),
                      "config.json says num_experts 5, its weights hold experts 0 to 2 (3 in all)"),
    "num_experts 1e9": (lambda mode, _: edit_config(mode, num_experts=10**9),
                        "config.json says num_experts 1000000000, its weights hold experts 0 to 2"),
    "more fine clusters": (lambda mode, _: edit_config(mode, num_fine_clusters=10),
                           "says num_fine_clusters 10 and maps 9 fine clusters (fine_to_coarse), its weights hold 9"),
    "a layer more": (lambda mode, _: edit_config(mode, expert_config={"text_config": {"num_hidden_layers": 3}}),
                     "expert_config.text_config says num_hidden_layers 3, its weights hold 2"),
    "an expert's tensor missing": (lambda mode, _: edit_weights(mode, lambda t: t.pop("experts.1.logit_scale")),
                                   "its weights lack 1 of the MODE's tensors, e.g. 'experts.1.logit_scale'"),
    "NaN centres": (lambda mode, _: edit_weights(mode, nan_centre), "its fine_centroids hold NaN or infinite values"),
    "a link out": (lambda mode, outside: link(mode, "notes.txt", outside), "'notes.txt' is a link to '"),
    "a linked router tokenizer": (lambda mode, outside: link(mode, "router_tokenizer/tokenizer.json", outside),
                                  "'router_tokenizer/tokenizer.json' is a link to '"),
}  # fmt: skip


def tool_argv(tool: str, mode, labelled, output) -> tuple:
    """(main, argv) of each tool that loads a MODE folder, writing to `output`."""
    return {
        "shrink": (shrink_main, ["--model", mode, "--remove-expert", 0, "--reason", "why", "--output", output]),
        "grow": (grow_main, ["--model", mode, "--dataset", labelled, "--output", output]),
        "zeroshot": (ZEROSHOT.main, ["--model", mode, "--dataset", labelled, "--split", "train", "--output",
                                     output / "results.json", "--no-eval-results"]),
        "push": (push_main, ["--model_dir", mode, "--hub_model_id", "org/mode-clip"]),
    }[tool]  # fmt: skip


def digest(folder) -> dict:
    return {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize("tool", ["shrink", "grow", "zeroshot", "push"])
@pytest.mark.parametrize("case", TAMPERED)
def test_a_tampered_mode_is_refused_in_one_line_before_anything_is_built(
    originals, tool, case, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("HF_TOKEN", "hf_local_test_token")  # the push's token check passes: its input is refused
    mode, labelled = shutil.copytree(originals[0], tmp_path / "mode"), originals[1]
    (tmp_path / "secret.txt").write_text("not the MODE's")
    tamper, message = TAMPERED[case]
    tamper(mode, tmp_path / "secret.txt")
    before = digest(mode)
    main, argv = tool_argv(tool, mode, labelled, tmp_path / "output")
    error = fails(main, argv, capsys)
    assert message in error and len(error) <= 500, error
    assert not (tmp_path / "output").exists() and not list(tmp_path.glob(".*")), "nothing written, not even a scratch"
    assert digest(mode) == before


def test_a_link_that_stays_inside_the_folder_is_followed(originals, tmp_path):
    mode = shutil.copytree(originals[0], tmp_path / "mode")
    (mode / "notes.txt").symlink_to("tokenizer.json")  # relative: it stays inside wherever the folder goes
    assert check_mode_folder(mode).num_experts == 3
