"""The README is the front door: short, no lab notebook, every link and command real. The docs pages stay
inside the repository, and the library example runs as written."""

import re
from pathlib import Path

from aspo.cli import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def section(title: str) -> str:
    """The README text under the ``## title`` heading, up to the next one."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading (and mkdocs too, for the headings the README links to)."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # a '#' in a code block is no heading
    return {github_anchor(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def broken_links(text: str, base: Path) -> list[str]:
    """Relative links whose file (or heading anchor) does not exist."""
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = (base / path).resolve() if path else None
        if file is not None and not file.exists():
            broken.append(target)
        elif anchor and (file is None or file.suffix == ".md") and anchor not in anchors(file or base):
            broken.append(target)
    return broken


def test_readme_is_short_and_holds_no_lab_notebook():
    assert len(README.splitlines()) <= 200
    assert not re.findall(r"\b20\d\d-\d\d-\d\d\b", README), "a date: measurement history goes to docs/"
    assert not re.findall(r"\b\d{1,2}:\d\d\b", README), "a time of day"
    assert not re.findall(r"\bload (?:average )?[\d~]", README), "a machine load"
    hexes = re.findall(r"\b[0-9a-f]{7,40}\b", README)
    hashes = [h for h in hexes if re.search(r"\d", h) and re.search("[a-f]", h)]
    assert not hashes, f"commit hashes {hashes}"


def test_the_checker_catches_what_it_should():
    heading = "aspo vs TRL on one job (`benchmarks/vs_trl.py`)"
    assert github_anchor(heading) == "aspo-vs-trl-on-one-job-benchmarksvs_trlpy"
    assert broken_links("[a](docs/nope.md) [b](docs/performance.md#nope) [c](https://x.org)", ROOT) == [
        "docs/nope.md",
        "docs/performance.md#nope",
    ]
    assert broken_links("[a](docs/performance.md#objectives-benchmarksobjectivespy)", ROOT) == []


def test_quickstart_is_the_two_make_commands():
    blocks = re.findall(r"```bash\n(.*?)```", section("Quickstart"), re.S)
    assert len(blocks) == 1
    commands = [line.split("#")[0].strip() for line in blocks[0].splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_every_link_in_the_readme_resolves():
    assert broken_links(README, ROOT) == []


def test_commands_table_names_every_command_with_a_guide():
    table = section("Commands")
    for name in COMMANDS:
        row = next((line for line in table.splitlines() if line.startswith(f"| `aspo {name}` |")), None)
        assert row is not None, f"`aspo {name}` missing from the commands table"
        assert re.search(r"\]\(docs/[\w/-]+\.md", row), f"`aspo {name}` links no guide"


def test_results_rows_link_their_reports():
    results = section("Results: does ASPO hold on a laptop?")
    rows = [line for line in results.splitlines() if line.startswith("| ")]
    studies = {p.parent.name for p in (ROOT / "docs" / "results").glob("*/report.md")}
    linked = {m for row in rows for m in re.findall(r"\(docs/results/([\w-]+)/report\.md\)", row)}
    assert studies and linked == studies


def test_performance_rows_name_a_script_and_its_conditions():
    lines = section("Performance").splitlines()
    rows = [line for line in lines if line.startswith("| ") and "---" not in line][1:]  # [0]: the header
    assert len(rows) >= 5
    for row in rows:
        scripts = re.findall(r"`(benchmarks/\w+\.py)", row)
        assert scripts and all((ROOT / s).is_file() for s in scripts), row
        assert "(docs/performance.md#" in row, row


def test_docs_pages_link_only_inside_docs():
    docs = ROOT / "docs"
    for page in docs.rglob("*.md"):
        if "runs" in page.relative_to(docs).parts:
            continue
        text = page.read_text()
        for climb in re.findall(r"(?:\.\./)+[\w.-]+", text):  # any relative path, linked or not
            assert (page.parent / climb).resolve().is_relative_to(ROOT), (page, climb)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+://", target) or target.startswith("#"):
                continue
            resolved = (page.parent / target.partition("#")[0]).resolve()
            assert resolved.is_relative_to(docs.resolve()), f"{page}: {target} leaves docs/"
        assert broken_links(text, page.parent) == [], page


def test_library_api_example_runs():
    text = (ROOT / "docs" / "api" / "index.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    example = next(b for b in blocks if "from aspo.objectives import" in b)
    namespace: dict = {}
    exec(compile(example, "docs/api/index.md", "exec"), namespace)  # noqa: S102 - our own documentation
    assert namespace["log_prob"].grad is not None
    assert namespace["adv"][3:].abs().sum() == 0  # the all-solved group carries no signal
