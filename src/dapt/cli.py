"""The `dapt` command: run a whole pipeline, one stage of it, or the offline demo.

User errors (bad config, bad data, missing files) print one clear message and exit with code 2; add
`--debug` for the traceback.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from importlib import resources
from pathlib import Path

from dapt.errors import DaptError

STAGES = {
    "ingest": "read the text sources into documents (Parquet)",
    "base": "materialise the original base model as a Hugging Face folder",
    "task": "build the tasks' labelled train/test splits",
    "curate": "clean, deduplicate and decontaminate the documents (with a rejection ledger)",
    "extend-vocab": "add domain tokens to the base's tokenizer and embeddings (set vocab.add or vocab.coverage)",
    "tokenize": "tokenise into packed shards with held-out splits",
    "extend-context": "write the base with a longer context window (set pretrain.context)",
    "pretrain": "continued pretraining: the DAPT base",
    "adapt": "train each task variant from the DAPT base and from the original base (control)",
    "evaluate": "perplexity of both bases; task metrics of every variant",
}


GATES_BROKEN_EXIT = 3  # `dapt run --strict-gates` with a broken gate: not a user error (2), not a crash (1)


def demo_config_path() -> Path:
    return Path(str(resources.files("dapt") / "pipelines" / "demo.yaml"))


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="run folder (default: ./runs/<name from the config>)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set pretrain.max_steps=10 (repeatable)",
    )


def _add_tokenizer_commands(commands: argparse._SubParsersAction) -> None:
    """`dapt tokenizer train|extend|compare`."""
    tokenizer = commands.add_parser(
        "tokenizer",
        help="train a byte-level BPE tokenizer, add domain tokens to a base, or compare tokenizers' fertility",
        description=(
            "Tokenizer tools: train a new byte-level BPE tokenizer (for a from-scratch base), extend a base's "
            "tokenizer and embeddings with domain tokens (ChipNeMo's recipe), or compare tokens per word and per "
            "character of two tokenizers on domain and general text."
        ),
    )
    actions = tokenizer.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    corpus_help = "domain text: files, globs, folders, or a dapt artifact folder"
    text_field_help = "JSONL key or Parquet column holding the text"

    train = actions.add_parser(
        "train",
        help="a new byte-level BPE tokenizer trained on a corpus (for a from-scratch base)",
        description=(
            "Train a byte-level BPE tokenizer (GPT-2's scheme: every byte is a token, so any text round-trips) "
            "with <|endoftext|> (bos/eos) and <|pad|>, and save it as a Hugging Face tokenizer folder."
        ),
    )
    train.add_argument("paths", nargs="+", metavar="PATH", help=corpus_help)
    train.add_argument("--vocab-size", type=int, required=True, help="tokens in all, e.g. 8000 or 32000")
    train.add_argument("--out", type=Path, required=True, help="folder to save the tokenizer in")
    train.add_argument("--text-field", default="text", help=text_field_help)

    extend = actions.add_parser(
        "extend",
        help="add domain tokens to a base's tokenizer and embeddings (ChipNeMo's recipe)",
        description=(
            "Train a BPE tokenizer on the domain text, rank its tokens the base lacks by the base tokens they "
            "save, add the best as BPE merges after the base's (text without them encodes exactly as before), "
            "initialise each new embedding row as the mean of its pieces' rows, pad the embeddings to a multiple "
            "of 64, and save model + tokenizer as a Hugging Face folder with extension.json."
        ),
    )
    extend.add_argument(
        "--base", required=True, help="base model: local HF folder, hub id, .gguf, or package:PKG/FILE.gguf"
    )
    extend.add_argument("paths", nargs="+", metavar="PATH", help=corpus_help)
    extend.add_argument("--out", type=Path, required=True, help="folder for the extended model + tokenizer")
    size = extend.add_mutually_exclusive_group()
    size.add_argument("--add", type=int, metavar="K", help="add K new tokens, intermediates included (default 1000)")
    size.add_argument(
        "--coverage",
        type=float,
        metavar="X",
        help="add tokens until the domain text's estimated token count falls by the share X (e.g. 0.05)",
    )
    extend.add_argument(
        "--domain-vocab-size", type=int, help="size of the domain tokenizer that proposes tokens (default 32000)"
    )
    extend.add_argument(
        "--min-frequency",
        type=int,
        default=1,
        metavar="N",
        help="never add a token seen fewer than N times in the domain text (default 1: no floor)",
    )
    extend.add_argument("--text-field", default="text", help=text_field_help)

    compare = actions.add_parser(
        "compare",
        help="tokens per word / per character of a base's and another tokenizer on domain and general text",
        description=(
            "Fertility of one or two tokenizers (tokens per word and per character, share of words cut into 3 "
            "or more pieces) on domain text and, with --general, on general text."
        ),
    )
    compare.add_argument("--base", required=True, help="a model or tokenizer folder, hub id, or .gguf")
    compare.add_argument("--other", help="the tokenizer to compare with, e.g. the output of `dapt tokenizer extend`")
    compare.add_argument("paths", nargs="+", metavar="PATH", help=corpus_help)
    compare.add_argument("--general", nargs="+", metavar="PATH", help="general text (same kinds of paths)")
    compare.add_argument("--text-field", default="text", help=text_field_help)
    compare.add_argument("--json", action="store_true", help="print the measurements as JSON, for tools")


def _run_tokenizer(args: argparse.Namespace) -> int:
    if args.tokenizer_command == "train":
        from dapt.tokenizer.train import run_train

        return run_train(args.paths, vocab_size=args.vocab_size, out=args.out, text_field=args.text_field)
    if args.tokenizer_command == "extend":
        from dapt.tokenizer.extend import run_extend

        return run_extend(
            args.base,
            args.paths,
            out=args.out,
            add=args.add,
            coverage=args.coverage,
            domain_vocab_size=args.domain_vocab_size,
            min_frequency=args.min_frequency,
            text_field=args.text_field,
        )
    from dapt.tokenizer.compare import run_compare

    return run_compare(
        args.base,
        args.paths,
        other=args.other,
        general=args.general,
        text_field=args.text_field,
        as_json=args.json,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dapt",
        description=(
            "Domain-adaptive pretraining, the pretrain-then-adapt way: curate domain text, continue "
            "pretraining a base model on it, branch the adapted base into task variants, and measure every "
            "variant against the same adaptation of the original base."
        ),
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_pipeline_commands(commands)
    _add_plan_command(commands)
    report = commands.add_parser("report", help="rebuild report.html / report.md / report.json of a finished run")
    report.add_argument("run_dir", type=Path, nargs="?", default=Path("runs/demo"), help="the run folder")
    _add_assess_command(commands)
    _add_inspection_commands(commands)
    _add_tokenizer_commands(commands)

    config = commands.add_parser("config", help="explain the config keys, or print the demo pipeline")
    group = config.add_mutually_exclusive_group(required=True)
    group.add_argument("--explain", action="store_true", help="every config key with its default and meaning")
    group.add_argument("--demo", action="store_true", help="print the demo pipeline YAML (a starting point)")
    return parser


def _add_pipeline_commands(commands: argparse._SubParsersAction) -> None:
    """`dapt demo`, `dapt run` and one command per stage (with `curate PATH...`, `adapt --base` and `evaluate
    --harness`, which need no pipeline)."""
    demo = commands.add_parser(
        "demo",
        help="the offline demo: SmolLM2-135M adapted to SciPy's documentation (about 5-10 minutes on 2 cores)",
        description="Run the shipped demo pipeline. Re-running skips finished stages.",
    )
    _add_run_options(demo)

    run = commands.add_parser("run", help="run a pipeline YAML end to end (finished stages are skipped)")
    run.add_argument("pipeline", type=Path, help="the pipeline YAML (see `dapt config --demo` for an example)")
    _add_run_options(run)
    run.add_argument(
        "--strict-gates",
        action="store_true",
        help=f"exit with code {GATES_BROKEN_EXIT} when a gate of `safety:` or `retention:` is broken (for CI), after "
        "writing the report",
    )

    for stage, summary in STAGES.items():
        command = commands.add_parser(
            stage,
            help=summary,
            description=f"{summary[0].upper()}{summary[1:]}. Runs the stages it needs first, unless already finished.",
        )
        if stage == "curate":  # also `dapt curate PATH... --out DIR`, without a pipeline
            from dapt.curate_command import add_arguments

            add_arguments(command)
        elif stage == "adapt":  # also `dapt adapt --base ARTIFACT --task TASK.yaml`: a new task on a finished base
            _add_adapt_arguments(command)
        elif stage == "evaluate":  # also `dapt evaluate --harness TASKS --model FOLDER`: lm-evaluation-harness
            _add_harness_arguments(command)
        else:
            command.add_argument("pipeline", type=Path, help="the pipeline YAML")
        _add_run_options(command)


def _add_adapt_arguments(command: argparse.ArgumentParser) -> None:
    """`dapt adapt`'s second use: `--base ARTIFACT --task TASK.yaml`, a new task on a finished base."""
    command.description = (
        "Two uses. `dapt adapt PIPELINE.yaml`: run the pipeline's adapt stages (and the stages they need). "
        "`dapt adapt --base ARTIFACT --task TASK.yaml [--out RUN_DIR]`: branch a finished DAPT base (e.g. "
        "runs/x/pretrain) into a new task without touching it — its files are hashed again first — with the "
        "control from the original base its manifest names; the variants and evaluations land in RUN_DIR "
        "(default: the base's run folder) and appear in its lineage and report."
    )
    command.add_argument("pipeline", type=Path, nargs="?", help="the pipeline YAML (without --base)")
    command.add_argument(
        "--base",
        help="a finished DAPT base: its artifact folder, its run folder (uses its pretrain), or its id",
    )
    command.add_argument(
        "--task",
        type=Path,
        help="with --base: a YAML of one task (the keys of a `tasks:` entry) or `tasks: [...]`",
    )


def _add_harness_arguments(command: argparse.ArgumentParser) -> None:
    """`dapt evaluate`'s second use: `--harness TASKS --model FOLDER`, lm-evaluation-harness on a checkpoint."""
    command.description = (
        "Two uses. `dapt evaluate PIPELINE.yaml`: run the pipeline's evaluations (and the stages they need). "
        "`dapt evaluate --harness TASKS --model FOLDER`: EleutherAI's lm-evaluation-harness (pip install "
        "'dapt-lm[harness]') on a model folder or dapt artifact; the results go to a harness-<name> artifact "
        "next to an artifact, or lm_eval_results.json in a plain model folder, or --out FILE."
    )
    command.add_argument("pipeline", type=Path, nargs="?", help="the pipeline YAML (without --harness)")
    command.add_argument("--harness", metavar="TASKS", help="lm-eval task names, comma-separated")
    command.add_argument("--model", type=Path, help="with --harness: a HF model folder or a dapt artifact")
    command.add_argument("--include-path", type=Path, help="with --harness: a folder of your own task YAMLs")
    command.add_argument("--num-fewshot", type=int, help="with --harness: few-shot examples per prompt")
    command.add_argument(
        "--limit", type=float, help="with --harness: examples per task (a share if below 1), for a quick look"
    )
    command.add_argument("--batch-size", type=int, default=8, help="with --harness: batch size (default 8)")
    command.add_argument("--device", help="with --harness: cpu, cuda, cuda:1, ... (default: cuda if present)")


def _add_plan_command(commands: argparse._SubParsersAction) -> None:
    """`dapt plan PIPELINE.yaml`: pilot runs, the fitted law's prediction, the replay fraction it recommends."""
    planner = commands.add_parser(
        "plan",
        help="pilot runs + a fitted law: predict continued pretraining and recommend the replay fraction",
        description="Run short pilot pretraining runs (one per replay fraction, sized by --budget; cached artifacts "
        "in the run folder), fit the continued-pretraining law to their domain and general validation losses, "
        "predict the full run's final losses with 90%% intervals, and recommend the replay fraction (and steps) with "
        "the lowest predicted domain loss within the forgetting budget. Writes plan/plan.md, plan.json and plan.png; "
        "`pretrain.replay_fraction: plan` makes `dapt run` use the recommendation.",
    )
    planner.add_argument("pipeline", type=Path, help="the pipeline YAML")
    planner.add_argument(
        "--budget", default="10%", help="the pilots' tokens, all together, as a share of the full run's (default 10%%)"
    )
    planner.add_argument(
        "--forgetting-budget",
        default="2%",
        help="how far the general validation loss may rise above the base's, relative (default 2%%)",
    )
    planner.add_argument("--replay", help="the pilots' replay fractions, comma-separated (default 0.05,0.25,0.5)")
    _add_run_options(planner)


def _add_assess_command(commands: argparse._SubParsersAction) -> None:
    """`dapt assess PATH...`: is domain-adaptive pretraining worth it, before any compute is spent."""
    assess = commands.add_parser(
        "assess",
        help="before spending compute: is domain-adaptive pretraining worth it for this corpus and base?",
        description=(
            "Measure a domain corpus (tokens, duplicates, vocabulary saturation), the base's perplexity and "
            "tokenizer fertility on it against general text, the compute and money continued pretraining would "
            "cost, and recommend: full DAPT, DAPT + vocabulary extension, task-adaptive pretraining only, "
            "fine-tune only, or retrieval / prompting first. Writes assess.md and assess.json."
        ),
    )
    assess.add_argument(
        "paths", nargs="+", metavar="PATH", help="domain text: files, globs, folders, or a dapt artifact folder"
    )
    assess.add_argument("--base", help="base model: local HF folder, hub id, .gguf, or package:PKG/FILE.gguf")
    assess.add_argument(
        "--general", nargs="+", metavar="PATH", help="general text to compare with (same kinds of paths)"
    )
    assess.add_argument("--out", type=Path, default=Path("assess"), help="folder for assess.md/json (default ./assess)")
    assess.add_argument("--text-field", default="text", help="JSONL key or Parquet column holding the text")
    assess.add_argument("--gpu", help="GPU type for the cost: A100, H100 (default), H200, L4, A10G")
    assess.add_argument("--mfu", type=float, help="assumed model FLOPs utilisation (default 0.4)")
    assess.add_argument("--price-per-hour", type=float, help="USD per GPU-hour (default: the table's for --gpu)")
    assess.add_argument("--params", help="cost a model of this size instead of the base, e.g. 7B or 135M")
    assess.add_argument("--seq-len", type=int, help="training context length for the cost (default 2048)")
    assess.add_argument("--ppl-tokens", type=int, help="tokens per side for the perplexities (default 16384)")


def _add_inspection_commands(commands: argparse._SubParsersAction) -> None:
    """The commands that look at what a run wrote: generate, lineage, gc."""
    generate = commands.add_parser("generate", help="a quick look: let a base or an LM variant answer a prompt")
    generate.add_argument("prompt", help="the prompt (sent through the model's chat template when it has one)")
    generate.add_argument(
        "--model", type=Path, required=True, help="a model folder, or an artifact folder holding model/"
    )
    generate.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default 64)")
    generate.add_argument("--raw", action="store_true", help="send the prompt as it is, without the chat template")

    lineage = commands.add_parser(
        "lineage",
        help="the tree original base → DAPT base(s) → task variants, with tokens, task metrics and harness scores",
    )
    lineage.add_argument("run_dir", type=Path, nargs="?", default=Path("runs/demo"), help="the run folder")
    lineage.add_argument("--json", action="store_true", help="print the tree as JSON, for tools")

    gc = commands.add_parser(
        "gc",
        help="delete the artifacts of a run folder that nothing refers to any more, listing what it frees",
        description=(
            "A re-run with a changed config builds a stage under its new id and keeps the earlier artifact in "
            "RUN_DIR/.artifacts/ (with the variants built on it). `dapt gc` deletes every artifact there that no "
            "current stage, no input of one (and so on up), and no task branched with `dapt adapt` (from this run "
            "folder or one beside it) refers to, and unfinished attempts of other configurations; it lists each "
            "with its size. Folders dapt did not make are left alone."
        ),
    )
    gc.add_argument("run_dir", type=Path, help="the run folder, e.g. runs/demo")
    gc.add_argument("--dry-run", action="store_true", help="only list what would be deleted")


def _run(
    pipeline_path: Path, out: Path | None, overrides: list[str], until: str | None, strict_gates: bool = False
) -> int:
    import yaml

    from dapt.config import load_config
    from dapt.errors import disk_full_reported
    from dapt.pipeline import run_pipeline, say
    from dapt.preflight import check_before_running
    from dapt.report.build import build_report, print_headline
    from dapt.run_folder import locked
    from dapt.train.distributed import is_main_process, leave
    from dapt.train.loop import check_launch

    config = load_config(pipeline_path, overrides)
    # now, not after ingest, curation and tokenization have run
    check_launch(config.pretrain.sharding, config.pretrain.compile)
    check_before_running(config)
    run_dir = (out or Path("runs") / config.name).resolve()
    what = "--out" if out is not None else f"run folder (from name: {config.name})"
    # Launched over several processes (torchrun / accelerate launch), only the main one writes to the run folder,
    # and holds its lock for all of them.
    main = is_main_process()
    with locked(run_dir, what) if main else nullcontext(run_dir):
        if main:
            (run_dir / "pipeline.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        artifacts = run_pipeline(config, run_dir, until=until)
        if until is not None:
            say(f"dapt: {until} finished; artifacts in {run_dir}")
        elif main:
            with disk_full_reported(run_dir, "write the report (every stage is finished)"):
                report = build_report(config, run_dir, artifacts)
            print_headline(report, run_dir)
        leave()  # the other processes wait for the report, then every one leaves the process group
    broken = artifacts["gates"].metrics["broken"] if strict_gates and until is None and "gates" in artifacts else []
    for gate in broken:
        print(f"gate broken ({gate['comparison']}): {gate['message']}", file=sys.stderr)
    if broken:
        print(f"dapt: {len(broken)} gate(s) broken; exit code {GATES_BROKEN_EXIT} (--strict-gates)", file=sys.stderr)
        return GATES_BROKEN_EXIT
    return 0


def _rebuild_report(run_dir: Path) -> int:
    from dapt.adapted_record import adapted_sources, run_stages_found
    from dapt.config import load_config
    from dapt.errors import ConfigError, disk_full_reported
    from dapt.report.build import build_report, print_headline

    artifacts = None
    if (run_dir / "pipeline.yaml").is_file():
        config = load_config(run_dir / "pipeline.yaml")
    elif (source := adapted_sources(run_dir)) is not None:  # tasks `dapt adapt` branched from another run's base
        config = load_config(source / "pipeline.yaml")
        artifacts = run_stages_found(config, source)
    else:
        raise ConfigError(f"{run_dir}: no pipeline.yaml here; is it a run folder written by `dapt run` or `dapt demo`?")
    try:
        with disk_full_reported(run_dir, "write the report"):
            report = build_report(config, run_dir, artifacts)
    except KeyError as missing:
        raise ConfigError(f"{run_dir}: stage {missing} has not finished; run the pipeline first") from None
    print_headline(report, run_dir)
    return 0


def quiet_libraries() -> None:
    """Our own progress bars say what is happening; transformers' per-load bars and notices are noise here
    (e.g. "score.weight newly initialized" is exactly what building a classifier head means)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command not in ("config", "lineage", "gc"):
        quiet_libraries()
    try:
        return _dispatch(args)
    except DaptError as error:
        if args.debug:
            raise
        print(f"{error.label}: {error}", file=sys.stderr)
        if error.on_every_process:  # all processes stopped at the same point: they leave the group together
            from dapt.train.distributed import leave

            leave()
        return error.exit_code
    except KeyboardInterrupt:
        print(
            "interrupted; finished stages are kept; pretraining resumes from its last checkpoint, another "
            "unfinished stage starts over",
            file=sys.stderr,
        )
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    """Run the command the arguments name; its exit code."""
    if args.command == "demo":
        return _run(demo_config_path(), args.out or Path("runs/demo"), args.overrides, None)
    if args.command == "run":
        return _run(args.pipeline, args.out, args.overrides, None, args.strict_gates)
    if args.command == "curate":
        from dapt.curate_command import pipeline_path, run_from_args

        args.pipeline = pipeline_path(args)
        if args.pipeline is None:
            return run_from_args(args)
    if args.command == "adapt" and (args.base or args.task or args.pipeline is None):
        return _adapt_a_finished_base(args)
    if args.command == "evaluate" and (args.harness or args.model or args.pipeline is None):
        return _evaluate_on_harness(args)
    if args.command in STAGES:
        return _run(args.pipeline, args.out, args.overrides, args.command)
    commands = {
        "plan": _plan,
        "report": lambda args: _rebuild_report(args.run_dir),
        "gc": _collect_garbage,
        "assess": _assess,
        "tokenizer": _run_tokenizer,
        "generate": _generate,
        "lineage": _lineage,
        "config": _config,
    }
    return commands[args.command](args)


def _adapt_a_finished_base(args: argparse.Namespace) -> int:
    """`dapt adapt --base ARTIFACT --task TASK.yaml`."""
    from dapt.adapt_command import run_adapt
    from dapt.errors import ConfigError

    if not (args.base and args.task) or args.pipeline is not None or args.overrides:
        raise ConfigError(
            "dapt adapt: give a pipeline YAML, or --base ARTIFACT --task TASK.yaml (then no pipeline, no --set)"
        )
    return run_adapt(args.base, args.task, args.out)


def _evaluate_on_harness(args: argparse.Namespace) -> int:
    """`dapt evaluate --harness TASKS --model FOLDER`."""
    from dapt.errors import ConfigError
    from dapt.harness_command import run_harness

    if not (args.harness and args.model) or args.pipeline is not None or args.overrides:
        raise ConfigError(
            "dapt evaluate: give a pipeline YAML, or --harness TASKS --model FOLDER (then no pipeline or --set)"
        )
    run_harness(
        args.harness,
        args.model,
        include_path=args.include_path,
        num_fewshot=args.num_fewshot,
        limit=args.limit,
        batch_size=args.batch_size,
        device=args.device,
        out=args.out,
    )
    return 0


def _plan(args: argparse.Namespace) -> int:
    from dapt.plan_command import run_plan

    return run_plan(
        args.pipeline,
        args.out,
        args.overrides,
        budget=args.budget,
        forgetting_budget=args.forgetting_budget,
        replays=args.replay,
    )


def _collect_garbage(args: argparse.Namespace) -> int:
    from dapt.run_folder import collect_garbage

    collect_garbage(args.run_dir, dry_run=args.dry_run)
    return 0


def _assess(args: argparse.Namespace) -> int:
    from dapt.assess import parse_count, run_assess
    from dapt.run_folder import writable_folder

    writable_folder(args.out, "--out")  # before measuring anything

    options = {
        "base": args.base,
        "general_paths": args.general,
        "gpu": args.gpu,
        "mfu": args.mfu,
        "price_per_hour": args.price_per_hour,
        "params": None if args.params is None else parse_count(args.params),
        "seq_len": args.seq_len,
        "ppl_tokens": args.ppl_tokens,
    }
    given = {name: value for name, value in options.items() if value is not None}  # else assess's defaults
    return run_assess(args.paths, out=args.out, text_field=args.text_field, **given)


def _generate(args: argparse.Namespace) -> int:
    from dapt.model.chat import generate_answer

    print(generate_answer(args.model, args.prompt, max_new_tokens=args.max_new_tokens, raw=args.raw))
    return 0


def _lineage(args: argparse.Namespace) -> int:
    import json

    from dapt.lineage import lineage, render_tree

    roots = lineage(args.run_dir)
    print(json.dumps(roots, indent=2) if args.json else "\n".join(render_tree(roots)))
    return 0


def _config(args: argparse.Namespace) -> int:
    if args.demo:
        print(demo_config_path().read_text(), end="")
    else:
        from dapt.config import explain_fields

        print("\n".join(explain_fields()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
