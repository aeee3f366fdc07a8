"""A MODE that shrinks: one expert out, the others byte-identical, the routing over the rest (`lib.growth`)."""

import json
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, make_tokenizer, run_script, save_mode, write_run
from hub_server import LocalHub
from huggingface_hub import HfApi
from transformers import AutoModel

from modeling_mode import ModeCLIPModel
from modeling_mode.lib.assembly import assemble
from modeling_mode.lib.cards import model_card
from modeling_mode.lib.errors import InputError
from modeling_mode.lib.growth import expert_digests, shrink
from modeling_mode.lib.publish import check_mode_dir, push_run

SHRINK = ROOT / "train" / "shrink.py"
REPO_ID = "org/mode-clip"


@pytest.fixture
def mode_dir(tmp_path):
    return save_mode(tmp_path / "mode")  # 3 experts, 9 fine clusters


def test_shrinking_keeps_the_other_experts_byte_identical_and_routes_over_them(mode_dir, tmp_path):
    original = ModeCLIPModel.from_pretrained(mode_dir).eval()
    output = shrink(str(mode_dir), 1, "source withdrawn", str(tmp_path / "shrunk"))
    shrunk = AutoModel.from_pretrained(output, trust_remote_code=True).eval()
    assert shrunk.config.num_experts == 2
    assert expert_digests(output) == [expert_digests(mode_dir)[k] for k in (0, 2)]
    # the removed expert's fine centres leave; the others keep their order, their experts renumbered
    kept = [fine for fine, coarse in enumerate(original.config.fine_to_coarse) if coarse != 1]
    torch.testing.assert_close(shrunk.fine_centroids, original.fine_centroids[kept], rtol=0, atol=0)
    assert shrunk.config.fine_to_coarse == [{0: 0, 2: 1}[original.config.fine_to_coarse[fine]] for fine in kept]
    # routing: the paper's log-weights of the experts left, renormalised (expert 1's centres no longer compete)
    inputs = make_tokenizer()(["a photo of a dog.", "a photo of a car."], padding=True, return_tensors="pt")
    weights = shrunk.route(**inputs)
    assert weights.shape == (2,) and weights.sum().item() == pytest.approx(1.0, abs=1e-6)
    pixels = torch.rand(2, 3, 30, 30)
    with torch.no_grad():
        ours = shrunk(**inputs, pixel_values=pixels, expert_weights=torch.tensor([0.0, 1.0])).logits_per_image
        theirs = original(**inputs, pixel_values=pixels, expert_weights=torch.tensor([0.0, 0.0, 1.0])).logits_per_image
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)  # the same expert, the same logits
    (change,) = shrunk.config.changelog
    assert (change["change"], change["expert"], change["reason"], change["experts_after"]) == (
        "removed expert", 1, "source withdrawn", 2)  # fmt: skip
    check_mode_dir(output)  # with its tokenizer and image processor: loadable and publishable as it is
    card = str(model_card(output, "org/mode-clip"))
    assert "## Changes" in card and "| removed expert | 1 |" in card and "| source withdrawn | 2 |" in card


def test_shrinking_twice_keeps_the_whole_changelog(mode_dir, tmp_path):
    once = shrink(str(mode_dir), 0, "licence", str(tmp_path / "once"))
    twice = shrink(str(once), 1, "bad crawl", str(tmp_path / "twice"))
    config = json.loads((twice / "config.json").read_text())
    assert [change["reason"] for change in config["changelog"]] == ["licence", "bad crawl"]
    assert expert_digests(twice) == [expert_digests(mode_dir)[1]]  # of 0, 1, 2: 0 left, then 2 (index 1 by then)
    with pytest.raises(InputError, match="it is the MODE's only expert"):
        shrink(str(twice), 0, "last", str(tmp_path / "none"))
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--remove-expert", "3"], "--remove-expert 3: this MODE's experts are 0 to 2."),
        (["--remove-expert", "-1"], "--remove-expert -1: this MODE's experts are 0 to 2."),
        (["--remove-expert", "0", "--reason", " "], "--reason is empty"),
        (["--remove-expert", "0", "--revision", "v1"], "names a Hub revision, but --model"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(mode_dir, tmp_path, flags, message, capsys, monkeypatch):
    output = tmp_path / "shrunk"
    argv = ["--model", str(mode_dir), "--reason", "why", "--output", str(output), *flags]
    assert run_script(SHRINK, *argv, monkeypatch=monkeypatch) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and error.count("\n") == 1, error
    assert not output.exists()


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # a Hub on 127.0.0.1, nowhere else
    with LocalHub() as hub:
        yield hub


@pytest.mark.slow
def test_a_published_mode_shrinks_into_a_new_commit_and_its_old_revision_still_loads(hub, mode_dir, tmp_path):
    api = HfApi(endpoint=hub.url, token="hf_local_test_token")
    (first,) = push_run(mode_dir, REPO_ID, api=api)
    env = hub.client_env(tmp_path / "hf-home")
    command = [sys.executable, str(SHRINK), "--model", REPO_ID, "--remove-expert", "2", "--reason", "takedown",
               "--output", str(tmp_path / "shrunk"), "--push_to_hub", "--hub_model_id", REPO_ID]  # fmt: skip
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert hub.commits(REPO_ID) == 2  # the shrunk MODE is the repo's next commit
    assert "| removed expert | 2 |" in hub.files(REPO_ID)["README.md"].decode()
    load = (
        "import sys; from transformers import AutoModel; "
        "model = AutoModel.from_pretrained(sys.argv[1], revision=sys.argv[2], trust_remote_code=True); "
        "print(model.config.num_experts)"
    )
    for revision, experts in [("main", 2), (first.oid, 3)]:  # the revision before the change still loads, whole
        loaded = subprocess.run([sys.executable, "-c", load, REPO_ID, revision], env=env, capture_output=True,
                                text=True, timeout=300)  # fmt: skip
        assert loaded.returncode == 0 and loaded.stdout.split()[-1] == str(experts), loaded.stderr[-3000:]


def test_the_seed_travels_with_the_mode_and_stays_when_it_shrinks(tmp_path):
    run = write_run(tmp_path / "run")  # its experts forked from the seed's checkpoint step_4
    checkpoint = run["seed"] / "checkpoints" / "step_4"
    checkpoint.mkdir(parents=True)
    files = {"trainer_state.json": b'{"step": 4}', "optimizer.bin": b"moments", "model.safetensors": b"weights"}
    for name, content in files.items():
        (checkpoint / name).write_bytes(content)
    experts = [str(path) for path in run["experts"]]
    mode = tmp_path / "mode"
    assemble(experts, str(run["clusters"]), str(run["seed"]), str(mode), router_space="seed-text")
    assert {path.name: path.read_bytes() for path in (mode / "seed").iterdir()} == files
    shrunk = shrink(str(mode), 0, "gone", str(tmp_path / "shrunk"))
    assert {path.name: path.read_bytes() for path in (shrunk / "seed").iterdir()} == files
    without = tmp_path / "without"
    assemble(experts, str(run["clusters"]), str(run["seed"]), str(without), router_space="seed-text", with_seed=False)
    assert not (without / "seed").exists()
