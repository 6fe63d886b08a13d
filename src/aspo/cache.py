"""The on-disk cache under ``~/.cache/aspo``: where it is, and how an entry is built exactly once.

An entry is a directory that is complete when its marker file exists. It is built in a temporary sibling
directory and renamed into place, so an interrupted build never leaves a broken entry, and two processes
building the same entry at once both end up with one complete copy.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_root(kind: str, cache_dir: str | Path | None = None) -> Path:
    """``cache_dir`` if given, else ``$ASPO_CACHE_DIR/<kind>``, else ``~/.cache/aspo/<kind>``."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("ASPO_CACHE_DIR"):
        return Path(os.environ["ASPO_CACHE_DIR"]) / kind
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "aspo" / kind


def build_once(final: Path, build: Callable[[Path], None], *, marker: str, notice: str | None = None) -> Path:
    """``final``, calling ``build(tmp_dir)`` first unless ``final/marker`` exists already.

    ``build`` must write ``marker`` last. ``notice`` is printed (one line, stderr) before a build.
    """
    if (final / marker).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    if notice:
        print(notice, file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        build(tmp)
        if final.exists():  # a broken leftover (no marker) or a concurrent build that finished first
            if (final / marker).is_file():
                return final
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:  # lost a race with another process building the same entry
            if not (final / marker).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
