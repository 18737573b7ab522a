"""Bad input, as a hostile new user gives it, through the CLI: every case exits 2 with one message naming the
culprit (key, file, line or folder), no traceback, and no manifest written by a stage that failed.

Each case prepares what it needs in its own folder (a small pipeline with one JSONL source and a from-scratch
base) and returns the command line and the words its message must hold. Most fail before any stage runs; the
record cases run ingest alone on a few lines.
"""

import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from dapt.cli import main
from helpers.lock_holder import hold_lock

pytestmark = pytest.mark.integration

DOCUMENTS = [
    {"text": f"Document {i} about pressure vessels, their welds and their inspection intervals."} for i in range(6)
]
PIPELINE = {
    "name": "bad",
    "base": {
        "preset": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64}
    },
    "sources": [{"name": "docs", "role": "domain", "kind": "files", "paths": ["docs.jsonl"]}],
    "pretrain": {"seq_len": 32, "max_steps": 1},
}
TASK = {"name": "kinds", "data": {"kind": "files", "train": "task.jsonl"}, "max_length": 16}


def pipeline(folder: Path, change: Callable[[dict], None] | None = None, docs: str | bytes | None = None) -> str:
    """Write the pipeline (changed by `change`) and its data into `folder`; return the YAML's path."""
    config = json.loads(json.dumps(PIPELINE))
    if change is not None:
        change(config)
    docs = docs if docs is not None else "".join(json.dumps(d) + "\n" for d in DOCUMENTS)
    (folder / "docs.jsonl").write_bytes(docs if isinstance(docs, bytes) else docs.encode())
    (folder / "task.jsonl").write_text(
        "".join(json.dumps({"text": f"t{i}", "label": "ab"[i % 2]}) + "\n" for i in range(8))
    )
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def data(folder: Path) -> str:
    """The pipeline's data file alone, for `dapt curate PATH --out DIR`."""
    return pipeline(folder).replace("pipeline.yaml", "docs.jsonl")


def written(path: Path, text: str = "x") -> str:
    """`path`, made a file holding `text`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def run(folder: Path, *extra: str, command: str = "run", **options) -> list[str]:
    return [command, pipeline(folder, **options), "--out", str(folder / "out"), *extra]


def set_key(*keys: str, value) -> Callable[[dict], None]:
    def change(config: dict) -> None:
        node = config
        for key in keys[:-1]:
            node = node.setdefault(key, {}) if isinstance(node, dict) else node[int(key)]
        node[keys[-1]] = value

    return change


def with_task(**task) -> Callable[[dict], None]:
    return lambda config: config.update(tasks=[{**TASK, **task}])


def model_folder(folder: Path, positions: int | None = None) -> str:
    """A local 'model' folder: a config.json (with `positions`) or none at all."""
    model = folder / "model"
    model.mkdir()
    if positions is not None:
        (model / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": positions}))
    return str(model)


def stray(folder: Path, kind: str) -> list[str]:
    """Something in the run folder where the ingest stage keeps its artifact, that dapt did not make."""
    out = folder / "out"
    out.mkdir()
    if kind == "folder":
        (out / "ingest").mkdir()
        (out / "ingest" / "important.txt").write_text("notes")
    elif kind == "file":
        (out / "ingest").write_text("notes")
    else:
        (out / "ingest").symlink_to(folder)
    return ["ingest", pipeline(folder), "--out", str(out)]


def read_only(folder: Path) -> list[str]:
    out = folder / "ro"
    out.mkdir()
    if os.geteuid() == 0:  # root writes anywhere but on a read-only filesystem
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(out)], capture_output=True)
        if mounted.returncode:
            pytest.skip("root, and no read-only tmpfs can be mounted here")
    else:
        out.chmod(0o555)
    return ["ingest", pipeline(folder), "--out", str(out / "run")]


def locked_by_another(folder: Path) -> list[str]:
    HOLDERS.append(hold_lock(folder / "out"))
    return ["ingest", pipeline(folder), "--out", str(folder / "out")]


HOLDERS: list[subprocess.Popen] = []
LINES = [json.dumps(d) for d in DOCUMENTS]

# id: (prepare(folder) -> argv, words the message must hold)
CASES: dict[str, tuple[Callable[[Path], list[str]], list[str]]] = {
    # names that become paths
    "pipeline name escapes": (
        lambda f: run(f, change=set_key("name", value="../../escaped-run")),
        ["name: becomes a folder name"],
    ),
    "pipeline name with a space": (lambda f: run(f, change=set_key("name", value="my run")), ["name:", "'my run'"]),
    "task name escapes": (
        lambda f: run(f, change=with_task(name="x/../../victim")),
        ["tasks[0].name", "x/../../victim"],
    ),
    "source name with a slash": (
        lambda f: run(f, change=set_key("sources", "0", "name", value="a/b")),
        ["sources[0].name"],
    ),
    # config
    "unknown key": (lambda f: run(f, "--set", "pretrain.lrr=1"), ["pretrain.lrr: unknown key"]),
    "wrong type": (lambda f: run(f, "--set", "pretrain.max_steps=many"), ["pretrain.max_steps"]),
    "negative learning rate": (lambda f: run(f, "--set", "pretrain.lr=-1"), ["pretrain.lr"]),
    "no domain source": (lambda f: run(f, change=set_key("sources", "0", "role", value="replay")), ["role: domain"]),
    "two sources of one name": (
        lambda f: run(f, change=lambda c: c["sources"].append(dict(c["sources"][0]))),
        ["repeated: docs"],
    ),
    "mix names no source": (lambda f: run(f, "--set", "pretrain.mix={nope: 1}"), ["pretrain.mix names nope"]),
    "model and preset": (lambda f: run(f, "--set", "base.model=gpt2"), ["exactly one of `model`"]),
    "--set without a value": (lambda f: run(f, "--set", "pretrain.lr"), ["--set 'pretrain.lr'"]),
    "--set past a list": (lambda f: run(f, "--set", "sources.5.name=x"), ["--set sources.5.name", "not an index"]),
    "pipeline file missing": (
        lambda f: ["run", str(f / "nope.yaml"), "--out", str(f / "out")],
        ["nope.yaml", "not found"],
    ),
    "pipeline not YAML": (
        lambda f: ["run", written(f / "p.yaml", "name: [unclosed")],
        ["p.yaml: not valid YAML"],
    ),
    "pipeline a list": (
        lambda f: ["run", written(f / "p.yaml", "- a\n- b\n")],
        ["p.yaml: expected a mapping"],
    ),
    "task file missing": (
        lambda f: run(f, change=with_task(data={"kind": "files", "train": "gone.jsonl"})),
        ["tasks[0].data.train", "gone.jsonl"],
    ),
    "judge on a classifier": (
        lambda f: run(f, change=with_task(judge={"url": "http://x", "model": "m"})),
        ["judge is for instruction tasks"],
    ),
    # the base model, and what must fit it, before any stage runs
    "base path missing": (
        lambda f: run(f, "--set", "base={model: /no/such/model}"),
        ["base.model: '/no/such/model' not found"],
    ),
    "base relative path missing": (
        lambda f: run(f, "--set", "base={model: ./my-model}"),
        ["base.model:", "my-model' not found"],
    ),
    "base with ~": (lambda f: run(f, "--set", "base={model: ~/models/x}"), ["base.model", "~ is not expanded"]),
    "base neither path nor hub id": (
        lambda f: run(f, "--set", "base={model: 'not a hub id!'}"),
        ["base.model: 'not a hub id!' is neither"],
    ),
    "base package missing": (
        lambda f: run(f, "--set", "base={model: 'package:no_such_pkg_dapt/m.gguf'}"),
        ["no_such_pkg_dapt"],
    ),
    "base gguf missing": (lambda f: run(f, "--set", "base={model: gone.gguf}"), ["base.model", "gone.gguf"]),
    "base folder without config": (
        lambda f: run(f, "--set", f"base={{model: {model_folder(f)}}}"),
        ["holds no config.json"],
    ),
    "seq_len past the preset's positions": (
        lambda f: run(f, "--set", "pretrain.seq_len=4096"),
        ["pretrain.seq_len: 4096 tokens", "1024 positions"],
    ),
    "seq_len past a local model's positions": (
        lambda f: run(f, "--set", f"base={{model: {model_folder(f, 16)}}}"),
        ["pretrain.seq_len: 32 tokens", "at most 16 positions"],
    ),
    "seq_len past a held-out split": (
        lambda f: run(
            f,
            *("--set", "tokenize.eval_tokens=40", "--set", "tokenize.eval_min_documents=0"),
            *("--set", "pretrain.seq_len=200"),
            command="pretrain",
        ),
        ["pretrain.seq_len: 200 tokens per window, but domain_", "raise tokenize.eval_tokens"],
    ),
    "task length past the positions": (
        lambda f: run(f, change=with_task(max_length=5000)),
        ["tasks[0].max_length: 5000"],
    ),
    # output folders
    "--out is a file": (
        lambda f: ["run", pipeline(f), "--out", written(f / "o")],
        ["--out", "a file, not a folder"],
    ),
    "--out under a file": (
        lambda f: ["run", pipeline(f), "--out", written(f / "o") + "/run"],
        ["--out", "cannot write there"],
    ),
    "--out read-only": (read_only, ["--out", "cannot write there"]),
    "assess --out is a file": (
        lambda f: ["assess", str(f), "--out", written(f / "o")],
        ["--out", "a file, not a folder"],
    ),
    "a folder dapt did not make": (lambda f: stray(f, "folder"), ["out/ingest: a folder that dapt did not make"]),
    "a file dapt did not make": (lambda f: stray(f, "file"), ["out/ingest: a file that dapt did not make"]),
    "a symlink dapt did not make": (lambda f: stray(f, "link"), ["out/ingest: a symlink", "that dapt did not make"]),
    "run folder in use": (locked_by_another, ["in use by another dapt process (PID"]),
    # records and files
    "malformed line, strict": (
        lambda f: run(
            f,
            command="ingest",
            change=set_key("sources", "0", "strict", value=True),
            docs="\n".join([LINES[0], "{oops", *LINES[1:]]),
        ),
        ["docs.jsonl:2"],
    ),
    "missing text field, strict": (
        lambda f: run(
            f, command="ingest", change=set_key("sources", "0", "strict", value=True), docs='{"body": "x"}\n'
        ),
        ["docs.jsonl:1"],
    ),
    "not UTF-8, strict": (
        lambda f: run(
            f,
            command="ingest",
            change=set_key("sources", "0", "strict", value=True),
            docs=LINES[0].encode() + b'\n{"text": "caf\xe9"}\n',
        ),
        ["docs.jsonl:2"],
    ),
    "a glob that matches nothing": (
        lambda f: run(f, command="ingest", change=set_key("sources", "0", "paths", value=["nothing/*.jsonl"])),
        ["nothing/*.jsonl", "matched no file"],
    ),
    "curate --out holds other files": (
        lambda f: ["curate", data(f), "--out", str(Path(written(f / "o" / "mine.txt")).parent)],
        ["--out", "mine.txt"],
    ),
    "curate --sample below 0": (
        lambda f: [
            "curate",
            data(f),
            "--out",
            str(f / "o"),
            "--sample",
            "-1",
        ],
        ["--sample -1"],
    ),
    "curate a pipeline with --strict": (lambda f: ["curate", pipeline(f), "--strict"], ["--strict: only for"]),
    "adapt from no base": (lambda f: ["adapt", "--base", str(f / "none"), "--task", pipeline(f)], ["--base", "none"]),
    "report of a folder that is no run": (lambda f: ["report", str(f)], ["no pipeline.yaml here"]),
    "gc of a missing folder": (lambda f: ["gc", str(f / "nope")], ["nope", "not found"]),
}


# the stages that finish before the failing one, in the cases that fail after some stages ran
FINISHED_FIRST = {"seq_len past a held-out split": {"ingest", "base", "curate", "tokenize"}}


@pytest.fixture(autouse=True)
def release(tmp_path):
    yield
    for holder in HOLDERS:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    HOLDERS.clear()
    subprocess.run(["umount", "-l", str(tmp_path / "ro")], capture_output=True)  # read_only's, when mounted


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_naming_the_culprit(case, tmp_path, capsys, monkeypatch):
    prepare, words = CASES[case]
    monkeypatch.chdir(tmp_path)  # a run folder left to its default (./runs/<name>) lands here
    argv = prepare(tmp_path)
    before = {path for path in tmp_path.rglob("manifest.json")}
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = err[err.rindex("error: ") :]
    for word in words:
        assert word in message, (word, message)
    written = {json.loads(path.read_text())["name"] for path in set(tmp_path.rglob("manifest.json")) - before}
    assert written == FINISHED_FIRST.get(case, set()), "no stage that failed wrote a manifest"
    if case == "a folder dapt did not make":
        assert (tmp_path / "out" / "ingest" / "important.txt").read_text() == "notes", "left as it was"
