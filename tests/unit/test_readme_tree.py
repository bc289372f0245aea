"""The README's map of the source (Development): a newcomer looks a module up there first."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tree() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("\nstream_expiry/\n")
    return readme[start : readme.index("```", start)]


def test_the_development_tree_names_every_module_of_the_package() -> None:
    """It left out nine modules, ``rekey.py`` (a whole command) among them, and
    ``reading.py``, ``commits.py``, ``retired.py``: a reader looking for where the service
    resumes a partition, commits its offsets or keeps a retired topic found no word of
    them. Every module at the package's top level is named now."""
    named = set(re.findall(r"\b(\w+)\.py\b", _tree()))
    modules = {p.stem for p in (ROOT / "stream_expiry").glob("*.py")}
    assert sorted(modules - named - {"__init__", "__main__"}) == []
