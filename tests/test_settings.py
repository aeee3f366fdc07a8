"""Refusals of outputs: made with other settings (`lib.core.resume_guard`: the differing fields only, shortened), or by
another tool (`checks.check_output_dir`)."""

import pytest

from modeling_mode.lib.core.checks import OUTPUT_KINDS, check_output_dir
from modeling_mode.lib.core.errors import InputError
from modeling_mode.lib.core.resume_guard import MAX_LINE, check_same_settings, differences

FILES = [f"/data/web/shard-{i:05d}.tar" for i in range(40_000)]  # a web corpus's data files


def test_only_the_fields_that_differ_each_shortened():
    stored = {"data_files": FILES, "shard_size": 1000, "clusters": {"experts": 4, "seed": 0}, "caption": "txt"}
    current = {"data_files": FILES[:7] + ["/else.tar"] + FILES[8:], "shard_size": 500, "clusters": {"experts": 4,
               "seed": 1}, "image": "jpg"}  # fmt: skip
    assert differences(stored, current) == [
        "caption: 'txt' there, unset now",
        "clusters.seed: 0 there, 1 now",
        "data_files: 40000 entries there, 40000 now, first differing at [7]: '/data/web/shard-00007.tar' there, "
        "'/else.tar' now",
        "image: unset there, 'jpg' now",
        "shard_size: 1000 there, 500 now",
    ]
    assert differences(stored, stored) == []
    check_same_settings(stored, dict(stored), "x", "y")  # the same: no refusal


def test_a_refusal_is_one_line_within_the_limit_naming_the_fix():
    stored = {f"field_{i}": "x" * 200 for i in range(10)}
    current = {f"field_{i}": "y" * 200 for i in range(10)}
    with pytest.raises(InputError) as refused:
        check_same_settings(stored, current, "--output 'runs/r' holds a reshard made", "give another --output.")
    line = str(refused.value)
    assert len(line) <= MAX_LINE and "\n" not in line
    assert line.startswith("--output 'runs/r' holds a reshard made with other settings (field_0: 'xxx")
    assert line.endswith("): give another --output.")  # the fix is never cut
    assert "'xxx...' there" in line or "..." in line


@pytest.mark.parametrize("kind", OUTPUT_KINDS)
def test_a_tool_refuses_an_output_folder_of_another_tool(tmp_path, kind):
    for other, markers in OUTPUT_KINDS.items():
        folder = tmp_path / other.replace(" ", "-")
        (folder / markers[0]).mkdir(parents=True, exist_ok=True)  # a file or a folder: its name says what it is
        if other == kind:
            assert check_output_dir(folder, kind=kind) == folder  # its own: a re-run resumes there
        else:
            with pytest.raises(InputError, match=rf"--output '.*' holds {other} \({markers[0]}\), not {kind}: give"):
                check_output_dir(folder, kind=kind)
    assert check_output_dir(tmp_path / "new", kind=kind) == tmp_path / "new"
