"""A griffe extension that lets mkdocstrings render conveyor's API as its docstrings mean it.

conveyor's docstrings follow the Sphinx conventions (STYLE.md): ``:param:`` / ``:raises:``
fields, which griffe's ``sphinx`` parser reads, and three things Markdown does not know, which
this extension rewrites before the docstrings are parsed:

- a field list followed by more text moves to the end, where griffe's parser expects it;

- roles (``:class:`~conveyor.store.JobData```, ``:meth:`Store.finish_jobs```) become
  mkdocs-autorefs links, the target found the way Sphinx finds it: the current class, the
  current module (its own names and its imports), then conveyor's public namespaces. A method
  of a store that implements the store contract without a docstring of its own links to the
  contract's method. A name that is not conveyor's (``time.time``) stays plain code; a name
  that looks like conveyor's but is found nowhere is reported, so ``mkdocs build --strict``
  fails on it, as it does on a link autorefs cannot resolve;
- literal blocks (a paragraph ending in ``::`` and the indented block after it) become fenced
  blocks, Python when Python can parse them, plain text otherwise;
- doctest blocks (``>>>`` lines and their output) become fenced ``pycon`` blocks.

It also gives attrs classes the ``__init__`` signature attrs generates at run time (griffe
reads source and sees none), so their ``:param:`` fields match real parameters.

It changes nothing in the sources: only what griffe hands to mkdocstrings.
"""

from __future__ import annotations

import ast
import builtins
import enum
import importlib
import importlib.util
import inspect
import logging
import re
from collections.abc import Iterator
from typing import Any

import attrs
import griffe

log = logging.getLogger("griffe")  # mkdocstrings reports this logger's warnings as mkdocs's

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|data|exc|mod|obj):`([^`]+)`")
_TITLED = re.compile(r"(.*?)\s*<([^<>]+)>")  # :meth:`the title <target>`
_FIELD = re.compile(
    r":(?:param|parameter|arg|argument|key|keyword|type|raises?|except|exception|returns?|rtype"
    r"|yields?|ytype|var|ivar|cvar|vartype)\b"
)  # a field line (":param x: ..."), as against a role opening a line (":meth:`x`")
_PUBLIC_NAMESPACES = ("conveyor", "conveyor.store", "conveyor.testing")
_OUR_PACKAGES = ("conveyor", "conveyor_stores")
_CONTRACT = "conveyor.store.Store"


class RestDocstrings(griffe.Extension):
    """Rewrite a package's docstrings, and add attrs classes' ``__init__``, once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            if obj.is_class and "__init__" not in obj.members:
                _add_attrs_init(obj)
            elif obj.is_attribute and obj.docstring is None:
                _property_docstring(obj)
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = rewrite(obj.docstring.value, obj, loader)


def _walk(obj: griffe.Object) -> Iterator[griffe.Object]:
    """The object and every object defined (not merely imported) inside it."""
    yield obj
    for member in obj.members.values():
        if isinstance(member, griffe.Object):
            yield from _walk(member)


# -- what only the live objects say -----------------------------------------------------------


def _runtime(obj: griffe.Object) -> object | None:
    """The live object ``obj`` describes, if its module imports."""
    try:
        value: object = importlib.import_module(obj.module.path)
    except ImportError:
        return None
    for part in obj.path.removeprefix(obj.module.path).strip(".").split("."):
        value = getattr(value, part, None)
    return value


def _property_docstring(attr: griffe.Object) -> None:
    """``name = property(getter, doc="...")`` is a documented property griffe sees as a bare
    attribute."""
    owner = attr.parent
    if not (isinstance(owner, griffe.Object) and owner.is_class):
        return
    live = _runtime(owner)
    value = inspect.getattr_static(live, attr.name, None) if inspect.isclass(live) else None
    if isinstance(value, property) and value.__doc__:
        attr.docstring = griffe.Docstring(value.__doc__, parent=attr)
        attr.labels.add("property")


def _add_attrs_init(cls: griffe.Object) -> None:
    live = _runtime(cls)
    if not (inspect.isclass(live) and attrs.has(live)):
        return
    fields = {field.alias: field for field in attrs.fields(live) if field.init}
    parameters = [griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword)]
    for name, param in inspect.signature(live).parameters.items():
        annotation = param.annotation
        if annotation is inspect.Parameter.empty:
            expr: str | griffe.Expr | None = None
        else:
            text = (
                annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
            )
            expr = griffe.safe_get_annotation(ast.parse(text, mode="eval").body, cls)  # type: ignore[arg-type]
        parameters.append(
            griffe.Parameter(
                name,
                annotation=expr,
                kind=griffe.ParameterKind[param.kind.name.lower()],
                default=_default(fields.get(name), param),
            )
        )
    init = griffe.Function(
        "__init__",
        parameters=griffe.Parameters(*parameters),
        returns="None",
        parent=cls,
        lineno=cls.lineno,
        endlineno=cls.lineno,
    )
    cls.set_member("__init__", init)


def _default(field: attrs.Attribute[Any] | None, param: inspect.Parameter) -> str | None:
    if param.default is inspect.Parameter.empty:
        return None
    default = field.default if field is not None else param.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        factory: Any = default.factory  # type: ignore[union-attr]
        return {list: "[]", dict: "{}", set: "set()"}.get(factory, f"{factory.__name__}()")
    if isinstance(default, enum.Enum):
        return f"{type(default).__name__}.{default.name}"
    return repr(default)


# -- docstring text --------------------------------------------------------------------------


def rewrite(text: str, obj: griffe.Object, loader: griffe.GriffeLoader) -> str:
    """The docstring ``text`` of ``obj`` in the Markdown mkdocstrings renders."""
    return _replace_roles(_fence_blocks(_fields_last(text)), obj, loader)


def _fields_last(text: str) -> str:
    """Move the field list (``:param x: ...`` lines and their indented continuations) after
    any text that follows it: griffe's parser would read that text as part of the last field,
    where reST ends the list at the first unindented paragraph."""
    lines = text.splitlines()
    fields: list[str] = []
    body: list[str] = []
    i = 0
    while i < len(lines):
        if _FIELD.match(lines[i]):
            fields.append(lines[i])
            i += 1
            while i < len(lines) and lines[i].strip() and lines[i][0] in " \t":
                fields.append(lines[i])
                i += 1
        else:
            body.append(lines[i])
            i += 1
    if not fields:
        return text
    while body and not body[-1].strip():
        body.pop()
    return "\n".join([*body, "", *fields] if body else fields)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _fence_blocks(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    in_fence = False
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        indent = line[: _indent(line)]
        if stripped.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and stripped.startswith(">>>"):
            end = i
            while end < len(lines) and lines[end].strip():
                end += 1
            out += [f"{indent}```pycon", *lines[i:end], f"{indent}```"]
            i = end
            continue
        elif not in_fence and stripped.endswith("::") and not _FIELD.match(stripped):
            start = i + 1
            while start < len(lines) and not lines[start].strip():
                start += 1
            end = start
            while end < len(lines) and (
                not lines[end].strip() or _indent(lines[end]) > len(indent)
            ):
                end += 1
            while end > start and not lines[end - 1].strip():
                end -= 1
            if end > start and _indent(lines[start]) > len(indent):
                lead = stripped[:-2].rstrip()
                if lead:  # "text::" reads "text:"; "text ::" and a lone "::" say nothing
                    out += [indent + lead + ("" if stripped.endswith(" ::") else ":"), ""]
                block = lines[start:end]
                depth = min(_indent(b) for b in block if b.strip())
                code = [b[depth:] if b.strip() else "" for b in block]
                out.append(f"{indent}```{_language(code)}")
                out += [indent + c if c else "" for c in code]
                out.append(f"{indent}```")
                i = end
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _language(code: list[str]) -> str:
    """``python`` for a block Python can parse, ``text`` for a diagram or a config file."""
    try:
        compile(
            "\n".join(code),
            "<docstring>",
            "exec",
            ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
        )
    except SyntaxError:
        return "text"
    return "python"


def _replace_roles(text: str, obj: griffe.Object, loader: griffe.GriffeLoader) -> str:
    parts = re.split(r"(```.*?```)", text, flags=re.S)  # leave fenced code alone
    for n in range(0, len(parts), 2):
        parts[n] = _ROLE.sub(lambda m: _link(m.group(1), obj, loader), parts[n])
    return "".join(parts)


def _link(content: str, obj: griffe.Object, loader: griffe.GriffeLoader) -> str:
    titled = _TITLED.fullmatch(content.strip())
    if titled:
        shown, target = titled.group(1), titled.group(2).strip().removesuffix("()")
    else:
        target = content.strip().removesuffix("()")
        if target.startswith("~"):
            target = target[1:]
            shown = target.rsplit(".", 1)[-1]
        else:
            shown = target
    path = _resolve(target, obj, loader)
    if path is None:
        head = target.split(".")[0]
        if not (hasattr(builtins, head) or importlib.util.find_spec(head) is not None):
            log.warning("%s: cannot resolve the reference %r", obj.path, target)
        return f"`{shown}`"
    return f"[`{shown}`][{path}]"


def _lookup(path: str, loader: griffe.GriffeLoader) -> griffe.Object | griffe.Alias | None:
    try:
        return loader.modules_collection[path]  # type: ignore[no-any-return]
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _resolve(target: str, obj: griffe.Object, loader: griffe.GriffeLoader) -> str | None:
    """The path autorefs knows ``target`` by, or ``None`` for a name that is not ours."""
    head, _, rest = target.partition(".")
    candidates: list[str] = []
    for scope in (obj, obj.parent):
        if isinstance(scope, griffe.Object) and scope.is_class:
            candidates.append(f"{scope.path}.{target}")
    try:
        found = obj.module.resolve(head)
    except griffe.NameResolutionError:
        pass
    else:
        candidates.append(f"{found}.{rest}" if rest else found)
    candidates += [f"{namespace}.{target}" for namespace in _PUBLIC_NAMESPACES]
    candidates.append(target)
    for path in candidates:
        found_obj = _lookup(path, loader)
        if found_obj is None:
            continue
        if path.split(".")[0] not in _OUR_PACKAGES:
            return None
        return _contract_method(found_obj, loader) or path
    return target if head in _OUR_PACKAGES else None


def _contract_method(obj: griffe.Object | griffe.Alias, loader: griffe.GriffeLoader) -> str | None:
    """For a store's undocumented implementation of a contract method, the contract's."""
    if obj.is_function and obj.docstring is None and isinstance(obj.parent, griffe.Object):
        contract = f"{_CONTRACT}.{obj.name}"
        if obj.parent.is_class and _lookup(contract, loader) is not None:
            return contract
    return None
