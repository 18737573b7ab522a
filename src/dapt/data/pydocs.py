"""Real text that ships inside Python packages: docstrings and Python's language reference.

The offline demo needs a domain corpus and a general corpus without network access. Installed packages
carry both: SciPy's numpydoc docstrings are specialised technical prose (the domain), the standard
library's docstrings and `pydoc_data`'s language reference are general Python text (held-out general).

Docstrings are read by parsing source files with `ast`; the package is never imported, so reading it runs
none of its code, needs none of its compiled extensions and works for packages that would fail to import.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import logging
import os
import re
import sysconfig
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dapt.data.documents import make_doc_id
from dapt.errors import DataError

logger = logging.getLogger(__name__)

STDLIB = "stdlib"

# Test code is not documentation; its docstrings describe test cases.
_SKIPPED_DIRS = frozenset({"tests", "test", "testing", "__pycache__"})
# Parts of the standard library that are not the library: vendored packages, GUI apps, py2 tooling.
_SKIPPED_STDLIB_DIRS = frozenset({"site-packages", "idlelib", "lib2to3", "ensurepip", "turtledemo", "pydoc_data"})


@dataclass(frozen=True)
class Docstring:
    """One docstring found in a package's source.

    `qualname` is the dotted import name (`scipy.stats._stats_py.ttest_ind`); `subpackage` is the first
    folder under the package root (`stats`), or for the standard library the top-level module (`json`);
    `path` is relative to the package root; `line` is where the documented object is defined (1-based).
    """

    qualname: str
    subpackage: str
    path: str
    line: int
    text: str


def package_root(package: str) -> Path:
    """Where an installed package's source lives, found without importing it.

    Returns the package folder, or the `.py` file for a single-module distribution. `"stdlib"` means
    Python's standard library folder.
    """
    if package == STDLIB:
        return Path(sysconfig.get_paths()["stdlib"])
    top, *rest = package.split(".")
    # find_spec on a dotted name imports the parent package; resolving the top level and walking down
    # the folders keeps the promise of never running the package's code.
    spec = importlib.util.find_spec(top)
    if spec is None:
        raise DataError(f"package '{package}' is not installed; install it with `pip install {top}`")
    if spec.submodule_search_locations:
        root = Path(next(iter(spec.submodule_search_locations)))
    elif spec.origin and spec.origin.endswith(".py"):
        root = Path(spec.origin)
    else:
        raise DataError(
            f"package '{package}' has no Python source to read (found {spec.origin}); "
            "docstrings are read from .py files"
        )
    for part in rest:
        if (root / part).is_dir():
            root = root / part
        elif (root / f"{part}.py").is_file():
            root = root / f"{part}.py"
        else:
            raise DataError(f"'{package}': no module '{part}' under {root}; check the package name")
    return root


def _python_files(root: Path, skipped_dirs: frozenset[str]) -> Iterator[Path]:
    """Every .py file under root in sorted order, so the corpus (and its ids' order) is reproducible."""
    if root.is_file():
        yield root
        return
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skipped_dirs and not d.startswith("."))
        for filename in sorted(filenames):
            if filename.endswith(".py"):
                yield Path(folder) / filename


def _module_name(relative: Path) -> str:
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _string_constant(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _add_newdoc_docstring(call: ast.Call, enclosing_package: str) -> tuple[str, str] | None:
    """(qualname, text) for `add_newdoc(...)`, the numpy/scipy way of documenting compiled functions.

    SciPy writes `add_newdoc("erf", doc)` (the ufuncs of scipy.special), NumPy writes
    `add_newdoc("numpy._core.multiarray", "array", doc)` and, for one method,
    `add_newdoc("pkg.mod", "Class", ("method", doc))`. The doc is the last positional argument; any
    other shape (a list of method docs, a doc built at run time) is skipped.
    """
    func = call.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    if name != "add_newdoc" or len(call.args) < 2:
        return None
    nodes = list(call.args)
    # Two-argument form: the name is relative to the package holding the file
    # (scipy/special/_add_newdocs.py documents scipy.special.<name>).
    prefix = [enclosing_package] if len(nodes) == 2 else []
    if isinstance(nodes[-1], ast.Tuple) and len(nodes[-1].elts) == 2:
        nodes[-1:] = nodes[-1].elts
    strings = [value for node in nodes if (value := _string_constant(node)) is not None]
    if len(strings) != len(nodes):
        return None
    *name_parts, text = strings
    return ".".join(prefix + name_parts), inspect.cleandoc(text)


_DEFINITIONS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _child_statements(node: ast.AST) -> Iterator[ast.stmt]:
    """Statements directly inside `node`, looking through `except` handlers and `match` cases."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.stmt):
            yield child
        elif isinstance(child, ast.excepthandler | ast.match_case):
            yield from _child_statements(child)


def _module_docstrings(tree: ast.Module, module: str, enclosing_package: str) -> Iterator[tuple[str, int, str]]:
    """(qualname, line, text) for every docstring of one module, in source order.

    Only statements are walked, not expressions: docstrings and `add_newdoc(...)` calls are statements,
    and skipping the expression trees makes the walk ~3x faster than `ast.NodeVisitor` over everything.
    """
    text = ast.get_docstring(tree)
    if text:
        yield module, tree.body[0].lineno, text

    def walk(node: ast.AST, scope: str) -> Iterator[tuple[str, int, str]]:
        for statement in _child_statements(node):
            if isinstance(statement, _DEFINITIONS):
                qualname = f"{scope}.{statement.name}"
                text = ast.get_docstring(statement)
                if text:
                    yield qualname, statement.lineno, text
                yield from walk(statement, qualname)
            elif isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call):
                documented = _add_newdoc_docstring(statement.value, enclosing_package)
                if documented:
                    yield documented[0], statement.lineno, documented[1]
            else:  # if / for / while / with / try / match: definitions can hide in their bodies
                yield from walk(statement, scope)

    yield from walk(tree, module)


def _parse(path: Path) -> ast.Module | None:
    try:
        source = path.read_bytes()
        # ast.parse on bytes honours PEP 263 coding lines. Invalid escape sequences in old files raise
        # Syntax/DeprecationWarnings that say nothing useful about our corpus.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(source, filename=str(path))
    except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, OSError) as error:
        logger.debug("skipping %s: %s", path, error)
        return None


def iter_docstrings(package: str, *, min_chars: int = 200, unparsable: list[str] | None = None) -> Iterator[Docstring]:
    """Every docstring of at least `min_chars` characters in `package`'s source, in a fixed order.

    Module, class, function and method docstrings (indentation cleaned by `ast.get_docstring`) and the
    docs passed to `add_newdoc(...)`. Test folders are skipped. Files that do not parse as Python 3
    (py2 leftovers, odd encodings) are skipped; pass a list as `unparsable` to get their relative paths.
    """
    root = package_root(package)
    is_stdlib = package == STDLIB
    skipped_dirs = _SKIPPED_DIRS | _SKIPPED_STDLIB_DIRS if is_stdlib else _SKIPPED_DIRS
    base = root.parent if root.is_file() else root
    skipped_files = 0
    for path in _python_files(root, skipped_dirs):
        relative = path.relative_to(base)
        tree = _parse(path)
        if tree is None:
            skipped_files += 1
            if unparsable is not None:
                unparsable.append(relative.as_posix())
            continue
        if is_stdlib:
            module = _module_name(relative)
            subpackage = relative.parts[0].removesuffix(".py")
        else:
            module = package if root.is_file() else _module_name(Path(package.replace(".", "/")) / relative)
            subpackage = relative.parts[0] if len(relative.parts) > 1 else ""
        is_package_init = relative.name == "__init__.py"
        enclosing_package = module if is_package_init else module.rpartition(".")[0]
        for qualname, line, text in _module_docstrings(tree, module, enclosing_package):
            if len(text) >= min_chars:
                yield Docstring(qualname, subpackage, relative.as_posix(), line, text)
    if skipped_files:
        logger.debug("%s: skipped %d file(s) that do not parse as Python 3", package, skipped_files)


def iter_pydoc_topics() -> Iterator[tuple[str, str]]:
    """(topic, text) for each topic of Python's language reference, as `help("if")` shows it.

    This is reference prose, written differently from docstrings, which makes it a held-out general text.
    """
    from pydoc_data.topics import topics  # a data module: a dict of strings, nothing runs

    for topic in sorted(topics):
        yield topic, topics[topic].strip()


_SECTION_UNDERLINE = re.compile(r"^\s*-{3,}\s*$")


def strip_numpydoc_sections(text: str, drop: tuple[str, ...] = ("Examples", "See Also", "References")) -> str:
    """Remove the numpydoc sections named in `drop` (header, dashes underline, body up to the next header).

    A section header is a line followed by a line of dashes (`Examples` / `--------`). Names match
    case-insensitively but exactly: "Example" is only dropped when it is in `drop`.
    """
    wanted = {name.lower() for name in drop}
    lines = text.split("\n")
    kept: list[str] = []
    dropping = False
    for index, line in enumerate(lines):
        is_header = (
            bool(line.strip())
            and not _SECTION_UNDERLINE.match(line)
            and index + 1 < len(lines)
            and _SECTION_UNDERLINE.match(lines[index + 1]) is not None
        )
        if is_header:
            dropping = line.strip().lower() in wanted
        if not dropping:
            kept.append(line)
    return "\n".join(kept).strip()


def docstring_documents(package: str, *, source: str, min_chars: int) -> Iterator[dict]:
    """`package`'s docstrings as document dicts (see `dapt.data.documents`), ids from their qualnames."""
    seen_locators: set[str] = set()
    for doc in iter_docstrings(package, min_chars=min_chars):
        # A qualname can repeat (a property's getter and setter, a function defined in both branches of
        # an `if`); the path and line keep such ids distinct while the common case stays readable.
        locator = doc.qualname if doc.qualname not in seen_locators else f"{doc.qualname}@{doc.path}:{doc.line}"
        seen_locators.add(locator)
        yield {
            "id": make_doc_id(source, locator),
            "text": doc.text,
            "source": source,
            "meta": {
                "path": doc.path,
                "line": doc.line,
                "qualname": doc.qualname,
                "package": package,
                "subpackage": doc.subpackage,
            },
        }


def pydoc_topic_documents(*, source: str, min_chars: int) -> Iterator[dict]:
    """The language reference topics of at least `min_chars` characters as document dicts."""
    for topic, text in iter_pydoc_topics():
        if len(text) >= min_chars:
            yield {
                "id": make_doc_id(source, topic),
                "text": text,
                "source": source,
                "meta": {"topic": topic, "package": "pydoc_data"},
            }
