"""The README's examples run exactly as written, and its two commands are the ones CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_build_your_own_model_example_runs():
    blocks = [b for b in _python_blocks() if "class Captioner" in b]
    assert len(blocks) == 1, "the README lost its build-your-own example"
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # the README's code, as a user runs it
    model = namespace["model"]
    # It really is built from our blocks: the decoder cross-attends to the image tokens.
    import torch

    ids = torch.randint(1, 100, (1, 5))
    model.eval()
    a = model(torch.zeros(1, 3, 32, 32), ids)
    b = model(torch.ones(1, 3, 32, 32), ids)
    assert (a - b).abs().max() > 1e-4


def test_library_snippet_runs():
    first = _python_blocks()[0]
    namespace: dict = {}
    exec(compile(first, "README.md", "exec"), namespace)
    assert sum(p.numel() for p in namespace["vit"].parameters()) > 80e6


def test_ci_runs_the_readme_test_command():
    test_command = next(
        line for line in README.splitlines() if "pytest" in line and "setup" in line
    )
    command = test_command.split("#")[0].strip()
    assert command in (ROOT / ".ci" / "run").read_text()
