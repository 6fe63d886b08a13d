"""One version: pyproject.toml's, which `aspo --version` prints and CHANGELOG.md's newest release names."""

import re
import subprocess
import sys
from pathlib import Path

import aspo

ROOT = Path(__file__).resolve().parent.parent


def pyproject_version() -> str:
    project = re.search(r"^\[project\]\n(.*?)(?=^\[)", (ROOT / "pyproject.toml").read_text(), re.S | re.M)
    assert project, "pyproject.toml has no [project] table"
    match = re.search(r'^version = "([^"]+)"$', project.group(1), re.M)
    assert match, "pyproject.toml's [project] table has no version"
    return match.group(1)


def test_aspo_version_prints_the_pyproject_version():
    version = pyproject_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    assert aspo.__version__ == version
    out = subprocess.run(
        [sys.executable, "-m", "aspo", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == version


def test_changelog_is_keep_a_changelog_and_names_the_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    releases = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", text, re.M)
    assert releases and releases[0] == ("Unreleased", ""), "the first section is [Unreleased]"
    dated = releases[1:]
    assert dated and all(date for _, date in dated), "every release has a date"
    assert dated[0][0] == pyproject_version(), "the newest release is the package's version"
    assert [d for _, d in dated] == sorted((d for _, d in dated), reverse=True), "newest first"
    for section in re.findall(r"^### (.+)$", text, re.M):
        assert section in {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}, section
