"""The README's commands are the ones CI runs, every YAML snippet in the docs is a valid pipeline config, the
README links to every page of the docs, and the docs' links lead somewhere."""

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from dapt.config import PipelineConfig, _explain

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
BENCH_README = ROOT / "bench" / "README.md"
PAGES = [README, *DOCS, BENCH_README]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    return [block.strip() for block in blocks[:2]]


def yaml_snippets() -> list[tuple[str, str]]:
    """(page:line, text) of every ```yaml block in the README and the docs."""
    snippets = []
    for page in PAGES:
        text = page.read_text()
        for match in re.finditer(r"```yaml\n(.*?)```", text, flags=re.S):
            line = text.count("\n", 0, match.start()) + 2
            snippets.append((f"{page.relative_to(ROOT)}:{line}", match.group(1)))
    return snippets


SNIPPETS = yaml_snippets()
# A snippet that shows only some sections (say, `pretrain:` alone) is checked inside this smallest pipeline.
SMALLEST = {
    "name": "snippet",
    "base": {"model": "HuggingFaceTB/SmolLM2-135M"},
    "sources": [{"name": "docs", "role": "domain", "kind": "files", "paths": ["docs/*.md"]}],
}


def test_ci_runs_the_readme_test_command_verbatim():
    setup_and_demo, tests = readme_commands()
    assert setup_and_demo.endswith("dapt demo")
    assert tests.endswith("pytest")
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests in ci_lines


@pytest.mark.parametrize(("where", "snippet"), SNIPPETS, ids=[where for where, _ in SNIPPETS])
def test_every_yaml_snippet_is_a_valid_pipeline_config(where, snippet):
    raw = yaml.safe_load(snippet)
    assert isinstance(raw, dict), f"{where}: a YAML snippet should hold pipeline sections, not {type(raw).__name__}"
    unknown = sorted(set(raw) - set(PipelineConfig.model_fields))
    assert not unknown, f"{where}: not pipeline sections: {unknown}"
    try:
        PipelineConfig.model_validate({**SMALLEST, **raw})
    except ValidationError as error:
        pytest.fail(str(_explain(error, where)))


def test_the_docs_hold_the_snippets_they_are_known_for():
    # an empty SNIPPETS would make the test above vanish: name the snippets that must be there
    pages = {where.split(":")[0] for where, _ in SNIPPETS}
    assert {"README.md", "docs/tasks-and-evaluation.md"} <= pages


def test_the_readme_pipeline_is_minimal_and_says_tasks_are_optional():
    readme_snippets = [yaml.safe_load(snippet) for where, snippet in SNIPPETS if where.startswith("README.md:")]
    assert len(readme_snippets) == 1
    config = PipelineConfig.model_validate(readme_snippets[0])
    assert config.tasks == []
    assert "`tasks:` is optional" in README.read_text()


def test_the_readme_links_every_page_of_the_docs():
    linked = set(re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text()))
    expected = {str(page.relative_to(ROOT)) for page in [*DOCS, BENCH_README]}
    assert {"docs/architecture.md", "docs/training.md", "bench/README.md"} <= expected
    assert expected <= linked, f"not linked from the README: {sorted(expected - linked)}"


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(ROOT)) for page in PAGES])
def test_relative_links_lead_to_files(page):
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
        assert (page.parent / target).exists(), f"{page.relative_to(ROOT)}: link to {target}, which does not exist"


def test_the_benchmark_table_lists_every_measured_benchmark():
    # bench/readme_table.py rewrites the table between these markers from bench/results/*.json
    text = README.read_text()
    assert text.count("<!-- bench-table:start -->") == 1 and text.count("<!-- bench-table:end -->") == 1
    table = text.split("<!-- bench-table:start -->")[1].split("<!-- bench-table:end -->")[0]
    listed = set(re.findall(r"^\| `bench/(\w+)\.py` \|", table, flags=re.M))
    measured = {path.stem for path in (ROOT / "bench" / "results").glob("*.json")}
    assert measured and listed == measured
