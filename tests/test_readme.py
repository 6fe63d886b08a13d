"""The README's library example must run as written."""

import re
from pathlib import Path


def test_library_api_example_runs():
    text = (Path(__file__).parent.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    example = next(b for b in blocks if "from aspo.objectives import" in b)  # the Library API example
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    assert namespace["log_prob"].grad is not None
    assert namespace["adv"][3:].abs().sum() == 0  # the all-solved group carries no signal
