"""The documentation covers the whole public API, and its pages link to pages that exist.

Every public name of ``conveyor``, ``conveyor.store`` and ``conveyor.testing`` has a docstring,
so do the public methods of the public classes, and each name is rendered by an mkdocstrings
block of the API reference (docs/api/) and listed in the overview (docs/reference.md). The
strict build itself (``mkdocs build --strict``, which fails on any broken link or unresolved
cross-reference) runs in the README's test command.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import griffe
import pytest

import conveyor
import conveyor.store
import conveyor.testing
import conveyor.testing.state_machine
from conveyor.store import Store
from conveyor_stores.memory import MemoryStore
from conveyor_stores.postgres import PgStore
from conveyor_stores.sqlite import SqliteStore

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
PUBLIC_MODULES: list[ModuleType] = [
    conveyor,
    conveyor.store,
    conveyor.testing,
    conveyor.testing.state_machine,
]


def public_names(module: ModuleType) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    return [n for n in names if not inspect.ismodule(getattr(module, n)) and n != "annotations"]


PUBLIC = [(module.__name__, name) for module in PUBLIC_MODULES for name in public_names(module)]


def test_the_public_api_is_what_this_test_expects() -> None:
    # The lists below read the real modules; this only guards against checking nothing.
    assert len(PUBLIC) > 80
    assert ("conveyor", "Queue") in PUBLIC
    assert ("conveyor.testing.state_machine", "START_TIME") in PUBLIC


# -- docstrings -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded() -> griffe.GriffeLoader:
    """The packages as griffe (and so mkdocstrings) reads them: attribute docstrings live only
    in the source."""
    loader = griffe.GriffeLoader(search_paths=[str(ROOT / "src")])
    loader.load("conveyor")
    loader.resolve_aliases(external=False, implicit=False)
    return loader


def _docstring(module: str, name: str, loader: griffe.GriffeLoader) -> str:
    obj = getattr(importlib.import_module(module), name)
    if inspect.isclass(obj):
        return vars(obj).get("__doc__") or ""  # its own, not a base class's
    if inspect.isfunction(obj):
        return obj.__doc__ or ""
    found = loader.modules_collection[f"{module}.{name}"]  # a constant or a type alias
    return "" if found.docstring is None else found.docstring.value


@pytest.mark.parametrize(("module", "name"), PUBLIC, ids=[f"{m}.{n}" for m, n in PUBLIC])
def test_every_public_name_has_a_docstring(
    module: str, name: str, loaded: griffe.GriffeLoader
) -> None:
    assert _docstring(module, name, loaded).strip(), f"{module}.{name} has no docstring"


def _public_members(cls: type) -> Iterator[tuple[str, Any]]:
    """The public methods and properties of ``cls``, with those it inherits from conveyor's
    own classes (not ``object``'s, ``Exception``'s or ``enum``'s)."""
    seen: set[str] = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith(("conveyor", "conveyor_stores")):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") or name in seen:
                continue
            seen.add(name)
            if isinstance(value, staticmethod | classmethod):
                yield name, value.__func__
            elif isinstance(value, property) or inspect.isfunction(value):
                yield name, value


PUBLIC_CLASSES = sorted(
    {
        getattr(importlib.import_module(module), name)
        for module, name in PUBLIC
        if inspect.isclass(getattr(importlib.import_module(module), name))
    },
    key=lambda cls: cls.__qualname__,
)


@pytest.mark.parametrize("cls", PUBLIC_CLASSES, ids=lambda cls: cls.__qualname__)
def test_public_methods_have_docstrings(cls: type) -> None:
    missing = [name for name, member in _public_members(cls) if not (member.__doc__ or "").strip()]
    assert not missing, f"{cls.__qualname__}: no docstring on {missing}"


@pytest.mark.parametrize(
    "cls",
    [
        MemoryStore,
        SqliteStore,
        PgStore,
    ],
)
def test_store_classes_document_what_the_contract_does_not(cls: type) -> None:
    """A store documents its constructor and the members it adds; the contract's methods are
    documented once, on ``Store``."""
    assert (cls.__doc__ or "").strip()
    contract = {name for name in vars(Store) if not name.startswith("_")}
    missing = [
        name
        for name, member in _public_members(cls)
        if name not in contract and not (member.__doc__ or "").strip()
    ]
    assert not missing, f"{cls.__name__}: no docstring on {missing}"


# -- the reference ----------------------------------------------------------------------------


def _rendered() -> set[str]:
    """The dotted paths the mkdocstrings blocks of docs/ render: ``::: path``, and for a
    block with ``members: [a, b]``, ``path.a`` and ``path.b`` too."""
    paths: set[str] = set()
    for page in DOCS.rglob("*.md"):
        for path, options in re.findall(
            r"^::: ([\w.]+)\n((?:[ ]{4}.*\n)*)", page.read_text(), re.M
        ):
            paths.add(path)
            members = re.search(r"^\s+members: \[(.*)\]", options, re.M)
            if members:
                paths.update(f"{path}.{m.strip()}" for m in members.group(1).split(","))
    return paths


def _resolve(path: str) -> Any:
    """The object a dotted path names: modules imported, then attributes."""
    first, *rest = path.split(".")
    value: Any = importlib.import_module(first)
    for part in rest:
        if not hasattr(value, part) and inspect.ismodule(value):
            importlib.import_module(f"{value.__name__}.{part}")
        value = getattr(value, part)
    return value


def test_the_api_pages_render_every_public_name() -> None:
    rendered = _rendered()
    objects = [_resolve(path) for path in rendered]
    missing = []
    for module, name in PUBLIC:
        obj = getattr(importlib.import_module(module), name)
        # rendered under this path, or under another public path of the same object
        if f"{module}.{name}" not in rendered and not any(obj is other for other in objects):
            missing.append(f"{module}.{name}")
    assert not missing, f"no ::: block in docs/api renders: {missing}"


def test_the_api_pages_render_the_store_classes() -> None:
    rendered = _rendered()
    for cls in (MemoryStore, SqliteStore, PgStore):
        assert f"{cls.__module__.rsplit('._', 1)[0]}.{cls.__name__}" in rendered


def test_the_overview_lists_every_public_name() -> None:
    overview = (DOCS / "reference.md").read_text()
    missing = [f"{m}.{n}" for m, n in PUBLIC if not re.search(rf"`{re.escape(n)}\b", overview)]
    assert not missing, f"docs/reference.md does not mention: {missing}"


# -- links --------------------------------------------------------------------------------------


def test_links_between_pages_resolve() -> None:
    """Relative links (the form that works both on the site and on GitHub) reach a file."""
    for page in DOCS.rglob("*.md"):
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = target.split("#", 1)[0]
            assert (page.parent / path).exists(), f"{page.relative_to(DOCS)} links to {target}"


def test_the_nav_names_pages_that_exist() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    for target in re.findall(r"^\s*-\s+(?:[^:\n]+:\s+)?([\w/-]+\.md)\s*$", config, flags=re.M):
        assert (DOCS / target).exists(), f"mkdocs.yml's nav names a missing page: {target}"


def test_python_examples_in_the_pages_parse() -> None:
    for page in DOCS.rglob("*.md"):
        for n, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S)):
            flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT  # snippets may await
            compile(block, f"{page.relative_to(DOCS)}, python block {n + 1}", "exec", flags)


# -- the docstring extension ----------------------------------------------------------------


def _extension() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "rest_docstrings", DOCS / "_ext/rest_docstrings.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_literal_and_doctest_blocks_become_fenced_code() -> None:
    ext = _extension()
    text = "Use it like this::\n\n    await f()\n    g()\n\nThen:\n\n>>> 1 + 1\n2"
    assert ext._fence_blocks(text) == (
        "Use it like this:\n\n```python\nawait f()\ng()\n```\n\n"
        "Then:\n\n```pycon\n>>> 1 + 1\n2\n```"
    )
    assert ext._fence_blocks("::\n\n    x = 1") == "```python\nx = 1\n```"
    assert ext._fence_blocks("A tree::\n\n    a\n    └── b") == "A tree:\n\n```text\na\n└── b\n```"


def test_a_field_list_moves_after_the_text_that_follows_it() -> None:
    ext = _extension()
    text = "Summary.\n\n:param a: one\n    more\n:raises E: when\n\n::\n\n    example()"
    assert ext._fields_last(text) == (
        "Summary.\n\n\n::\n\n    example()\n\n:param a: one\n    more\n:raises E: when"
    )
    assert ext._fields_last("so that\n:meth:`x` does") == "so that\n:meth:`x` does"
