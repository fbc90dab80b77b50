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
