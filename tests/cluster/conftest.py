"""Ray Serve's own pydantic models warn when ray.serve is first imported (extra `Field` keywords,
PydanticDeprecatedSince20), which pytest's warnings-as-errors would turn into a collection
error. Import it once here, with those warnings silenced; Hearth's own warnings stay errors."""

from __future__ import annotations

import contextlib
import warnings

# Without the cluster extra the modules skip themselves (pytest.importorskip).
with warnings.catch_warnings(), contextlib.suppress(ImportError):
    warnings.simplefilter("ignore", DeprecationWarning)
    import ray.serve  # noqa: F401
