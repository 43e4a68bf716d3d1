"""The layering of src/hearth/server, checked over the source (ast), so that it survives the
next hurried change. Every import counts: at the top, inside functions, under TYPE_CHECKING.

- `core` (the protocol-free turn) imports no API package and nothing from FastAPI or Starlette.
- `http` (the cross-cutting plumbing) imports no API package and not `core`.
- An API package (openai, responses, anthropic, ollama, native) imports only itself, `core`,
  `http`, `server.state`, `hearth.protocol`, `hearth.errors`, `hearth.settings`, the
  `keep_alive` value type, the engine's plain result types (`hearth.engine.types`) and Hearth's
  version; `hearth.models` too for the Ollama and Hearth routes, which manage models. No API
  package imports another.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVER = Path(__file__).parents[2] / "src" / "hearth" / "server"
API_PACKAGES = ("openai", "responses", "anthropic", "ollama", "native")
SHARED = (
    "hearth.server.core",
    "hearth.server.http",
    "hearth.server.state",
    "hearth.protocol",
    "hearth.errors",
    "hearth.settings",
    "hearth.keep_alive",
    "hearth.engine.types",
)
MANAGE_MODELS = ("ollama", "native")


def _module(path: Path) -> str:
    parts = path.relative_to(SERVER.parents[1]).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every hearth module `path` imports, wherever the import sits."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(f"{p}.") for p in prefixes)


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 3 or (len(parts) == 3 and parts[2] in API_PACKAGES) else None


MODULES = sorted(SERVER.rglob("*.py"))


def _broken(path: Path) -> list[str]:
    module = _module(path)
    package = _package(module)
    imports = _imports(path)
    hearth = {name for name in imports if _within(name, "hearth")}
    if package == "core":
        return sorted(
            name
            for name in imports
            if _within(name, "fastapi", "starlette")
            or _within(name, *(f"hearth.server.{p}" for p in API_PACKAGES))
        )
    if package == "http":
        forbidden = (*(f"hearth.server.{p}" for p in API_PACKAGES), "hearth.server.core")
        return sorted(name for name in hearth if _within(name, *forbidden))
    if package in API_PACKAGES:
        allowed = (*SHARED, f"hearth.server.{package}")
        if package in MANAGE_MODELS:
            allowed = (*allowed, "hearth.models")
        return sorted(
            name
            for name in hearth
            if name not in ("hearth", "hearth.__version__") and not _within(name, *allowed)
        )
    return []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SERVER)))
def test_each_module_keeps_to_its_layer(path: Path) -> None:
    assert _broken(path) == []


def test_the_rules_see_imports_in_functions_and_under_type_checking(tmp_path: Path) -> None:
    source = tmp_path / "sample.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from hearth.server.ollama import serving\n"
        "def f():\n    import hearth.server.anthropic.messages\n"
    )
    assert {"hearth.server.ollama", "hearth.server.anthropic.messages"} <= _imports(source)


def test_every_api_package_exists() -> None:
    for package in (*API_PACKAGES, "core", "http"):
        assert (SERVER / package / "__init__.py").is_file(), package
