"""Docstrings are read from source without importing the package; add_newdoc ufunc docs are included."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dapt.data.pydocs import (
    docstring_documents,
    iter_docstrings,
    iter_pydoc_topics,
    package_root,
    pydoc_topic_documents,
    strip_numpydoc_sections,
)
from dapt.errors import DataError

LONG = "This sentence is here to make the docstring long enough to pass the length filter. " * 3


def write(path: Path, source: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source), encoding="utf-8")


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A package that raises when imported, with a subpackage, a test folder, add_newdoc and a py2 file."""
    root = tmp_path / "boompkg"
    write(root / "__init__.py", f'"""Top level. {LONG}"""\nraise RuntimeError("boompkg was imported")\n')
    write(
        root / "stats" / "_core.py",
        f'''
        """Statistics core. {LONG}"""

        class Estimator:
            """An estimator. {LONG}"""

            def fit(self):
                """Fit the estimator. {LONG}"""

        if True:
            def hidden():
                """Defined inside an if block. {LONG}"""

        def short():
            """Too short."""
        ''',
    )
    write(
        root / "special" / "_add_newdocs.py",
        f'''
        def add_newdoc(name, doc):
            pass

        add_newdoc("erf", """
            erf(z)

            The error function. {LONG}
            """)
        add_newdoc("boompkg.special._ufuncs", "gamma", """The gamma function. {LONG}""")
        add_newdoc("boompkg.special", "Solver", ("solve", """Solve a system. {LONG}"""))
        add_newdoc("not_a_literal", some_variable)
        ''',
    )
    write(root / "stats" / "tests" / "test_core.py", f'def test_x():\n    """A test. {LONG}"""\n')
    write(root / "legacy.py", 'print "python 2 only"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    return "boompkg"


def test_docstrings_are_read_without_importing(fake_package: str) -> None:
    unparsable: list[str] = []
    docs = list(iter_docstrings(fake_package, min_chars=200, unparsable=unparsable))
    by_name = {doc.qualname: doc for doc in docs}
    assert set(by_name) == {
        "boompkg",
        "boompkg.stats._core",
        "boompkg.stats._core.Estimator",
        "boompkg.stats._core.Estimator.fit",
        "boompkg.stats._core.hidden",
        "boompkg.special.erf",
        "boompkg.special._ufuncs.gamma",
        "boompkg.special.Solver.solve",
    }
    assert unparsable == ["legacy.py"]
    assert by_name["boompkg"].subpackage == ""
    assert by_name["boompkg.stats._core.Estimator.fit"].subpackage == "stats"
    assert by_name["boompkg.stats._core.Estimator.fit"].path == "stats/_core.py"
    # add_newdoc docs are cleaned like ast.get_docstring cleans docstrings
    assert by_name["boompkg.special.erf"].text.startswith("erf(z)\n\nThe error function.")
    assert by_name["boompkg.special.erf"].subpackage == "special"


def test_iteration_order_is_deterministic(fake_package: str) -> None:
    first = [doc.qualname for doc in iter_docstrings(fake_package)]
    assert first == [doc.qualname for doc in iter_docstrings(fake_package)]
    assert first[0] == "boompkg"  # sorted walk: root files before subfolders' (special/ < stats/)


def test_min_chars_keeps_short_docstrings_when_asked(fake_package: str) -> None:
    assert "boompkg.stats._core.short" in {doc.qualname for doc in iter_docstrings(fake_package, min_chars=0)}


def test_missing_package_says_how_to_install() -> None:
    with pytest.raises(DataError, match="pip install no_such_package_xyz"):
        package_root("no_such_package_xyz")


def test_scipy_docstrings_include_special_ufuncs() -> None:
    docs = list(iter_docstrings("scipy", min_chars=200))
    by_name = {doc.qualname: doc for doc in docs}
    # erfinv is a compiled ufunc: its only docstring is the add_newdoc("erfinv", """...""") call.
    erfinv = by_name["scipy.special.erfinv"]
    assert erfinv.path == "special/_add_newdocs.py" and erfinv.subpackage == "special"
    assert "inverse of the error function" in erfinv.text.lower()
    assert by_name["scipy.stats._stats_py.ttest_ind"].subpackage == "stats"
    assert not any("/tests/" in f"/{doc.path}" for doc in docs)
    assert len(docs) > 2000


def test_stdlib_subpackage_is_the_top_level_module() -> None:
    docs = list(iter_docstrings("stdlib", min_chars=200))
    subpackage_of = {doc.qualname: doc.subpackage for doc in docs}
    assert subpackage_of["json.decoder.JSONDecoder"] == "json"
    assert {doc.subpackage for doc in docs if doc.path == "argparse.py"} == {"argparse"}
    skipped = ("idlelib/", "lib2to3/", "site-packages/", "test/", "pydoc_data/")
    assert not any(doc.path.startswith(skipped) for doc in docs)


def test_strip_numpydoc_sections() -> None:
    text = textwrap.dedent(
        """\
        Summary line.

        Parameters
        ----------
        x : int
            The input.

        See Also
        --------
        scipy.stats.norm

        Notes
        -----
        Kept notes.

        Examples
        --------
        >>> from scipy import stats
        >>> stats.norm.cdf(0)
        """
    )
    stripped = strip_numpydoc_sections(text)
    assert "Parameters" in stripped and "Kept notes." in stripped
    assert "scipy.stats" not in stripped and ">>>" not in stripped and "See Also" not in stripped
    assert "Kept notes." not in strip_numpydoc_sections(text, drop=("Notes",))
    assert "Notes" in strip_numpydoc_sections(text, drop=("Note",))  # names match exactly


def test_pydoc_topics_are_language_reference_text() -> None:
    topics = dict(iter_pydoc_topics())
    assert "if" in topics and "if" in topics["if"]
    documents = list(pydoc_topic_documents(source="general", min_chars=200))
    assert documents and all(len(doc["text"]) >= 200 for doc in documents)
    assert len({doc["id"] for doc in documents}) == len(documents)


def test_docstring_documents_have_stable_unique_ids(fake_package: str) -> None:
    documents = list(docstring_documents(fake_package, source="domain", min_chars=200))
    ids = [doc["id"] for doc in documents]
    assert len(set(ids)) == len(ids)
    assert ids == [doc["id"] for doc in docstring_documents(fake_package, source="domain", min_chars=200)]
    meta = documents[-1]["meta"]
    assert set(meta) == {"path", "line", "qualname", "package", "subpackage"}
    assert meta["package"] == fake_package
