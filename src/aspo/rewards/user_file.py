"""A user's reward function from a ``path/file.py:function`` spec (used in-process and by the bounded
worker)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any

from aspo.errors import UserError


def load_file_function(spec: str) -> Callable[..., Any]:
    """The function ``attr`` of the file ``path`` in a ``path/file.py:attr`` spec (UserError if not)."""
    path, _, attr = spec.rpartition(":")
    if not os.path.isfile(path):
        raise UserError(
            f"reward file {path!r} does not exist (reward spec {spec!r}, expected path/file.py:function)"
        )
    module_name = "aspo_user_reward_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise UserError(f"cannot import reward file {path!r}")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # the user's file failed to import: say where, not a traceback
        raise UserError(f"importing reward file {path!r} failed: {type(err).__name__}: {err}") from err
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"reward file {path!r} has no function {attr!r}")
    return fn
