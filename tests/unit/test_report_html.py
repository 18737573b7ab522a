"""report.html: one self-contained page with every section, real embedded plots, and data escaped."""

import base64
import copy
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from dapt.cli import main
from dapt.report.html import SECTIONS, render_html

TINY = Path(__file__).parents[1] / "integration" / "tiny.yaml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DATA_PNG = "data:image/png;base64,"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Page(HTMLParser):
    """What a reader of the page sees: section ids with their headings, images, links, tags, and text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.headings: dict[str, str] = {}  # section id -> its <h2> text
        self.section_text: dict[str, list[str]] = {}
        self.images: list[dict[str, str]] = []
        self.references: list[str] = []  # every src / href value
        self.tags: set[str] = set()
        self._section: str | None = None
        self._in_h2 = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.add(tag)
        if tag == "section":
            self._section = attributes.get("id")
            self.headings.setdefault(self._section, "")
            self.section_text.setdefault(self._section, [])
        elif tag == "h2":
            self._in_h2 = True
        elif tag == "img":
            self.images.append(attributes)
        self.references += [value for name, value in attrs if name in ("src", "href") and value is not None]

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None
        elif tag == "h2":
            self._in_h2 = False

    def handle_data(self, data):
        if self._section is None:
            return
        if self._in_h2:
            self.headings[self._section] += data
        self.section_text[self._section].append(data)

    def text(self, section: str) -> str:
        return " ".join(" ".join(self.section_text[section]).split())


def decode_png(src: str) -> bytes:
    assert src.startswith(DATA_PNG), src[:40]
    return base64.b64decode(src.removeprefix(DATA_PNG), validate=True)


def distinct_colours(image: np.ndarray) -> int:
    """How many different colours an image (height, width[, channels]) of floats in [0, 1] holds."""
    channels = np.round(np.atleast_3d(image) * 255).astype(np.uint32)
    packed = np.zeros(channels.shape[:2], dtype=np.uint32)
    for channel in range(channels.shape[2]):  # one integer per pixel: np.unique on rows is far slower
        packed = (packed << 8) | channels[:, :, channel]
    return len(np.unique(packed))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-html") / "run"
    # the tiny pipeline, made smaller still (4 steps with evaluations at 0, 2, 4; one classifier epoch):
    # this file is about the page, not the training
    # two seeds on half and all of the data: the data-efficiency plot with the seeds' spread
    shrink = [
        "pretrain.max_steps=4",
        "pretrain.eval_every=2",
        "tasks.0.epochs=1",
        "tasks.0.seeds=[0, 1]",
        "tasks.0.data_fractions=[0.5, 1.0]",
    ]
    assert main(["run", str(TINY), "--out", str(out), *(a for o in shrink for a in ("--set", o))]) == 0
    return out


@pytest.fixture(scope="module")
def page(run_dir):
    return Page((run_dir / "report.html").read_text(encoding="utf-8"))


@pytest.mark.integration
def test_report_html_is_written_next_to_report_md_and_stays_small(run_dir):
    report_html = run_dir / "report.html"
    assert report_html.is_file() and (run_dir / "report.md").is_file()
    assert report_html.stat().st_size < 1_000_000


@pytest.mark.integration
def test_every_section_is_there_with_its_heading(page):
    assert list(page.headings) == [section_id for section_id, _ in SECTIONS]
    for section_id, heading in SECTIONS:
        assert page.headings[section_id].strip() == heading


@pytest.mark.integration
def test_every_image_is_an_embedded_png_with_something_drawn(page):
    # loss curves, perplexity, data funnel, task differences, data efficiency
    assert len(page.images) == 5
    assert "by share of the training data" in page.images[4]["alt"]
    for image in page.images:
        png = decode_png(image["src"])
        assert png.startswith(PNG_SIGNATURE)
        pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert distinct_colours(pixels) > 1, "a blank image"
        assert image.get("alt")


@pytest.mark.integration
def test_page_needs_nothing_outside_itself(run_dir, page):
    text = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    assert all(ref.startswith((DATA_PNG, "#")) for ref in page.references)
    assert not page.tags & {"script", "link", "iframe", "object", "embed"}


@pytest.mark.integration
def test_verdict_and_numbers_match_report_json(run_dir, page):
    report = json.loads((run_dir / "report.json").read_text())
    verdict = page.text("verdict")
    (task,) = report["tasks"]
    assert task["name"] in verdict and task["verdict"] in verdict
    assert f"{task['difference']['accuracy'] * 100:+.1f} points" in verdict
    assert f"{report['base']['domain_ppl_after']:.3f}" in page.text("perplexity")
    assert str(report["pretrain"]["best_step"]) in page.text("loss-curves")
    assert str(report["data"]["funnel"]["kept"]) in page.text("data-funnel")
    dapt_base = report["lineage"][0]["children"][0]
    assert (
        dapt_base["kind"] == "pretrain"
        and "DAPT base" in page.text("lineage")
        and dapt_base["id"] in page.text("lineage")
    )
    assert f"{report['pretrain']['tokens_trained']:,}" in page.text("cost")
    # the data-efficiency table beside its plot: each share's mean ± the seeds' spread, as in report.json
    half = task["data_efficiency"][0]
    assert half["fraction"] == 0.5 and len(half["dapt_runs"]) == 2
    assert f"{half['dapt']:.3f} ± {half['dapt_std']:.3f}" in page.text("tasks")
    # per class: each class with its test examples, and both confusion matrices
    assert "Per class: xml-subpackage" in page.text("tasks") and page.text("tasks").count("Confusion matrix") == 2
    for label, scores in task["per_class"]["dapt"].items():
        assert f"{label} {scores['support']} " in page.text("tasks")
    # report.json carries the per-step training loss the loss curves are drawn from
    curve = report["pretrain"]["train_curve"]
    assert len(curve["step"]) == len(curve["loss"]) == report["pretrain"]["steps"]


def hostile_report() -> dict:
    """A hand-made report whose names from data carry markup; and no general held-out text at all."""
    name, source, reason = "<script>alert('task')</script>", "<b>docs</b>", "<img src=x onerror=alert(1)>"
    original, dapt = "aaaa", "bbbb"
    return {
        "run": "<i>run</i>",
        "created": "2026-01-01T00:00:00+00:00",
        "machine": "x86_64, Linux, Python 3.11",
        "base": {
            "original": "preset & <friends>",
            "architecture": "LlamaForCausalLM",
            "parameters": 1_000_000,
            "domain_ppl_before": 20.0,
            "domain_ppl_after": 15.0,
            "general_ppl_before": None,
            "general_ppl_after": None,
            "test_tokens": {"domain": 100},
            "domain_bpb_before": 1.5,
            "domain_bpb_after": 1.25,
            "general_bpb_before": None,
            "general_bpb_after": None,
            "same_tokenizer": True,
            "vocab_size_before": 258,
            "vocab_size_after": 258,
            "test_documents": {"domain": 3},
            "test_bytes": {"domain": 400},
            "general_heldout_from": "replay",
            "tokenizer_missing_bytes": ["0x04"],
            "vocabulary_extension": {
                "added": 2,
                "old_vocab_size": 258,
                "new_vocab_size": 260,
                "embedding_rows_after": 320,
                "heldout_fertility": {},
                "top_tokens": ["<b>tok</b>", " x"],
            },
        },
        "pretrain": {
            "steps": 4,
            "tokens_trained": 512,
            "tokens_per_second": 100.0,
            "train_seconds": 5.1,
            "best_step": 4,
            "stopped_early": True,
            "stop_reason": "<patience> ran out",
            "evaluations": [{"step": 0, "domain_val_loss": 3.0}, {"step": 4, "domain_val_loss": 2.7}],
            "train_curve": {"step": [1, 2, 3, 4], "loss": [3.1, 2.9, 2.8, 2.6]},
        },
        "data": {
            "funnel": {
                "documents_in": 10,
                "kept": 7,
                "dropped_by_reason": {reason: 3},
                "decontaminated_by_task": {name: 0},
            },
            "sources": {source: {"role": "domain", "documents": 10, "chars": 5000}},
            "token_splits": {"domain_train": {"documents": 6, "tokens": 900}},
        },
        "tasks": [
            {
                "name": name,
                "recipe": "top_blocks",
                "top_blocks": 1,
                "train_examples": 20,
                "test_examples": 10,
                "control": {"accuracy": 0.5, "macro_f1": 0.4},
                "dapt": {"accuracy": 0.7, "macro_f1": 0.6},
                "difference": {"accuracy": 0.2, "macro_f1": 0.2, "accuracy_ci95": [0.1, 0.3]},
                "type": "classification",
                "primary": "accuracy",
                "secondary": "macro_f1",
                "verdict": "the DAPT base helped",
                "data_efficiency": [
                    {
                        "fraction": 0.25,
                        "control": 0.3,
                        "dapt": 0.5,
                        "control_std": 0.05,
                        "dapt_std": 0.02,
                        "control_runs": [0.25, 0.35],
                        "dapt_runs": [0.48, 0.52],
                    },
                    {
                        "fraction": 1.0,
                        "control": 0.5,
                        "dapt": 0.7,
                        "control_std": 0.0,
                        "dapt_std": 0.0,
                        "control_runs": [0.5, 0.5],
                        "dapt_runs": [0.7, 0.7],
                    },
                ],
                "dapt_matches_control_full_data_at": 0.25,
            }
        ],
        "lineage": [
            {
                "name": "base",
                "kind": "base",
                "id": original,
                "description": "original base — <origin>",
                "children": [
                    {
                        "name": "pretrain",
                        "kind": "pretrain",
                        "id": dapt,
                        "description": "DAPT base",
                        "children": [
                            {
                                "name": f"adapt-{name}-dapt",
                                "kind": "adapt",
                                "id": "dddd",
                                "description": name,
                                "children": [],
                            },
                        ],
                    },
                    {
                        "name": f"adapt-{name}-control",
                        "kind": "adapt",
                        "id": "cccc",
                        "description": name,
                        "children": [],
                    },
                ],
            }
        ],
        "timings": {"ingest": 1.0, f"evaluate-{name}-dapt": 2.0},
    }


def test_names_from_data_are_escaped_never_markup():
    report = hostile_report()
    text = render_html(copy.deepcopy(report))
    page = Page(text)
    assert not page.tags & {"script", "b", "i", "friends", "patience"}
    assert [image["src"][: len(DATA_PNG)] for image in page.images] == [DATA_PNG] * len(page.images)
    assert "<script>" not in text and "<img src=x" not in text and "<b>docs" not in text
    assert "&lt;script&gt;alert(&#x27;task&#x27;)&lt;/script&gt;" in text
    # what the reader sees is the name as it was written
    assert report["tasks"][0]["name"] in page.text("verdict")
    assert report["tasks"][0]["name"] in page.text("tasks") and report["tasks"][0]["name"] in page.text("lineage")
    assert "dropped: <img src=x onerror=alert(1)>" in page.text("data-funnel")
    assert "<b>docs</b>" in page.text("perplexity")
    assert "<b>tok</b>" in page.text("perplexity")  # a token from the domain text, shown as text


def test_a_run_without_general_text_still_renders_every_section():
    page = Page(render_html(hostile_report()))
    assert list(page.headings) == [section_id for section_id, _ in SECTIONS]
    assert "—" in page.text("perplexity")  # general perplexity not measured: shown as missing, not as 0
    assert len(page.images) == 5  # perplexity bars of the domain only; the data-efficiency plot
    assert "reaches it with 25% of the data" in page.text("tasks") and "0.500 ± 0.020" in page.text("tasks")


@pytest.mark.integration
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium to run this)")
def test_page_renders_in_a_headless_browser(run_dir, tmp_path):
    screenshot = tmp_path / "report.png"
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={screenshot}",
        "--window-size=1200,3000",
        (run_dir / "report.html").as_uri(),
    ]
    # output to a file, not a pipe: chromium's helper processes can hold a pipe open for seconds after it exits
    log = tmp_path / "chromium.log"
    with log.open("wb") as output:
        finished = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, timeout=60)
    assert finished.returncode == 0 and screenshot.is_file(), log.read_text(errors="replace")[-2000:]
    pixels = matplotlib.image.imread(screenshot)
    assert pixels.shape[:2] == (3000, 1200)
    assert distinct_colours(pixels) > 50, "the page rendered blank"
    # the plots are drawn, not broken-image icons: the lower half of the page (figures, tables) has ink too
    assert distinct_colours(pixels[1500:]) > 50


def test_data_stages_are_a_table_beside_the_loss_curves_and_in_report_md():
    from dapt.report.markdown import render_markdown

    report = hostile_report()
    stage = {"first_step": 1, "steps": 3, "completed": True, "micro_batch_size": 4, "seq_len": 64, "schedule": "wsd"}
    report["pretrain"]["stages"] = [
        stage
        | {"name": "<i>main</i>", "last_step": 3, "planned_steps": 3, "tokens": 768, "replay_fraction": 0.2}
        | {"lr": [1e-3, 1e-3], "windows_drawn": {"domain_train": 10, "replay_train": 2}}
        | {"end_evaluation": {"domain_val_loss": 2.5, "general_val_loss": 3.25}},
        stage
        | {"name": "anneal", "first_step": 4, "last_step": 5, "steps": 2, "planned_steps": 4, "completed": False}
        | {"tokens": 256, "seq_len": 128, "micro_batch_size": 1, "mix": {"hq": 3, "wiki": 1}, "schedule": "linear"}
        | {"lr": [1e-3, 5e-4], "windows_drawn": {"hq": 2, "wiki": 0}, "end_evaluation": None},
    ]
    page = Page(render_html(copy.deepcopy(report)))
    assert "i" not in page.tags, "a stage's name is data, never markup"
    shown = page.text("loss-curves")
    assert "Trained in 2 data stages" in shown and "<i>main</i> 1-3 768 4 × 64 replay 20%" in shown
    assert "1.00e-03 → 1.00e-03 (wsd) domain_train 10, replay_train 2 2.5000" in shown
    assert "anneal 4-5 (2 of 4) 256 1 × 128 hq 75%, wiki 25% 1.00e-03 → 5.00e-04 (linear) hq 2, wiki 0" in shown
    markdown = render_markdown(report)
    assert "| anneal | 4-5 (2 of 4) | 256 | 1 × 128 | hq 75%, wiki 25% |" in markdown
