"""The README's "Ten lines" is `examples/ten_lines.py`, word for word (the file is run by
tests/integration/test_readme_example.py)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_shows_the_example_file():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Ten lines") :]
    shown = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert shown == (ROOT / "examples" / "ten_lines.py").read_text()
    assert "asyncio.run(main())" in shown  # a script, not top-level await


def test_readme_lists_every_edge_limit_with_its_default():
    from spark.cli.edge import parser

    text = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^ *\| `(--[a-z-]+) [NS]` \| ([0-9.]+) \|", text, re.M))
    numeric = {
        action.option_strings[0]: action.default
        for action in parser()._actions
        if isinstance(action.default, int | float)
        and not isinstance(action.default, bool)
        and action.option_strings[0] != "--port"
    }
    assert set(rows) == set(numeric)
    for flag, default in numeric.items():
        assert float(rows[flag]) == default, flag
