"""Write a directory so that readers see either the old one or the complete new one, never a part.

Used by bundle export and dataset writing: both assemble their files in a temporary directory beside
the destination (same filesystem, so the final rename is atomic) and only then put it in place.

Board-side module: standard library only, Python 3.10.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replace_dir_atomically(out: Path, prefix: str | None = None) -> Iterator[Path]:
    """Yield an empty work directory beside `out`. If the block completes, the work directory
    replaces `out` (a previous `out` is removed first); if it raises, anything included, the work
    directory is removed and `out` is left as it was. prefix names the hidden work directory
    (default: out's name)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{prefix or out.name}-", dir=out.parent))
    try:
        yield work
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
