"""The nightly workflow: valid for GitHub Actions, and in step with the box list in code."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pytest_portable_upgrade.boxes.fedora import FEDORA_RELEASES
from pytest_portable_upgrade.boxes.provision import provision_commands
from pytest_portable_upgrade.boxes.recipes import BOXES, get_box

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "nightly.yml"
REUSABLE = ROOT / ".github" / "workflows" / "portable-upgrade.yml"
CHECKER = shutil.which("check-jsonschema")


def workflow() -> dict[str, object]:
    data = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(data, dict)
    return data


def test_matrix_lists_exactly_the_boxes_in_code() -> None:
    jobs = workflow()["jobs"]
    assert isinstance(jobs, dict)
    boxes = jobs["integration"]["strategy"]["matrix"]["box"]
    assert boxes == list(BOXES), "add a box in vm/boxes/recipes.py and in nightly.yml together"


def test_no_box_job_is_doomed_by_design() -> None:
    """Each box can come about in the job: built here (Debian), or downloaded with a kept key
    and provisioned by commands that exist (Fedora; their network is open only then)."""
    jobs = workflow()["jobs"]
    assert isinstance(jobs, dict)
    for name in jobs["integration"]["strategy"]["matrix"]["box"]:
        recipe = get_box(name)
        if recipe.buildable_offline:
            assert recipe.suite and provision_commands(recipe) == []
            continue
        assert recipe.fedora_release is not None, f"{name}: neither built nor downloaded"
        assert FEDORA_RELEASES[recipe.fedora_release].key_file.exists(), name
        assert provision_commands(recipe)[0].startswith("dnf install"), name


def test_each_box_runs_the_readme_command_and_uploads_results() -> None:
    steps = workflow()["jobs"]["integration"]["steps"]  # type: ignore[index]
    runs = " ".join(str(step.get("run", "")) for step in steps)
    assert "./setup-host" in runs
    assert 'tox -e integration -- --box "${{ matrix.box }}"' in runs
    assert any(str(step.get("uses", "")).startswith("actions/upload-artifact") for step in steps)
    report = " ".join(str(s.get("run", "")) for s in workflow()["jobs"]["report"]["steps"])  # type: ignore[index]
    assert "python -m pytest_portable_upgrade.report.matrix join" in report


def test_nightly_is_scheduled() -> None:
    triggers = workflow()[True]  # YAML 1.1 reads the key `on` as True
    assert isinstance(triggers, dict) and triggers["schedule"][0]["cron"]


@pytest.mark.skipif(CHECKER is None, reason="check-jsonschema missing (tox -e unit has it)")
@pytest.mark.parametrize("broken", [False, True], ids=["as-committed", "misspelt-key"])
@pytest.mark.parametrize("source", [WORKFLOW, REUSABLE], ids=["nightly", "reusable"])
def test_github_schema_validates_it(tmp_path: Path, broken: bool, source: Path) -> None:
    """check-jsonschema's vendored GitHub workflow schema works offline; a typo must fail."""
    path = tmp_path / source.name
    text = source.read_text()
    path.write_text(text.replace("runs-on:", "runs_on:", 1) if broken else text)
    assert CHECKER is not None
    result = subprocess.run(
        [CHECKER, "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True, text=True, check=False,
    )
    assert (result.returncode != 0) == broken, result.stdout + result.stderr


def reusable() -> dict[object, object]:
    data = yaml.safe_load(REUSABLE.read_text())
    assert isinstance(data, dict)
    return data


def test_the_reusable_workflow_runs_the_spec_per_box_and_joins_the_matrix() -> None:
    inputs = reusable()[True]["workflow_call"]["inputs"]  # type: ignore[index]
    assert inputs["spec"]["required"] is True
    assert set(inputs) == {"spec", "boxes", "install", "args"}
    jobs = reusable()["jobs"]
    assert isinstance(jobs, dict)
    assert jobs["scenarios"]["strategy"]["matrix"]["box"] == "${{ fromJSON(inputs.boxes) }}"
    steps = jobs["scenarios"]["steps"]
    runs = " ".join(str(step.get("run", "")) for step in steps)
    for needed in ('pip install "$INSTALL"', "portable-upgrade setup-host",
                   'portable-upgrade run "$(basename "$SPEC")" --box "$BOX"', "--artifacts"):
        assert needed in runs, needed
    uploads = [s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert uploads and uploads[0]["if"] == "always()"
    assert "${{ matrix.box }}" in uploads[0]["with"]["name"]
    join = " ".join(str(s.get("run", "")) for s in jobs["matrix"]["steps"])
    assert jobs["matrix"]["needs"] == "scenarios"
    assert "python -m pytest_portable_upgrade.report.matrix join" in join
    # the caller's inputs reach the shell as variables, never spliced into a script
    assert all("${{ inputs." not in str(step.get("run", "")) for job in jobs.values()
               for step in job["steps"])


def test_the_guides_example_calls_it_with_inputs_it_has() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("uses: OWNER/pytest-portable-upgrade/.github/workflows/")[1]
    assert block.startswith(REUSABLE.name + "@")
    given = re.findall(r"\n      (\w+): ", block.split("```")[0])
    inputs = reusable()[True]["workflow_call"]["inputs"]  # type: ignore[index]
    assert given and set(given) <= set(inputs), given
