"""``tokenseek visualize``: see which tokens are kept and why (one example, a whole store, or loss curves)."""

from __future__ import annotations

import argparse

from tokenseek.errors import TokenSeekError

_EPILOG = """modes:
  one example:   tokenseek visualize --data D --index I [--scores S] --output DIR
                 -> DIR/tokens.html, attention.png, gradient_map.png, context_score.png,
                    gradient_score.png, example.json (+ gradient_layers.png with --layers)
  a score store: tokenseek visualize --data D --scores S --summary --output DIR
                 -> DIR/summary.json, summary.md, positions.png
  loss curves:   tokenseek visualize --runs RUN1 RUN2 ... --output loss.png
"""


def register(sub) -> None:
    from tokenseek.cli.common import add_data_args, add_model_args, add_selection_args
    from tokenseek.seeking.config import GRAD_LAYERS, GRAD_MODES

    p = sub.add_parser(
        "visualize",
        help="show which tokens are kept and why (HTML + figures)",
        description="Visualize token seeking: the kept tokens of one example with its attention/gradient maps, "
        "statistics over a score store, or the training loss of several runs.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    add_data_args(p)
    p.add_argument(
        "--index",
        type=int,
        help="the example to show: its 0-based position in the tokenized data (after --limit, and after dropping "
        "examples with no response token left; the record index is printed in the output)",
    )
    p.add_argument("--scores", help="score store from `tokenseek score`: highlight its stored scores (required with --summary)")
    p.add_argument("--summary", action="store_true", help="statistics over every example of the score store instead of one example")
    p.add_argument("--runs", nargs="+", metavar="RUN_DIR", help="plot the training loss of these `tokenseek train` output dirs on one chart")
    p.add_argument("--output", help="output directory (example, --summary), or the image file for --runs (e.g. loss.png)")
    add_selection_args(p)
    p.add_argument(
        "--grad-layer",
        type=int,
        choices=GRAD_LAYERS,
        help="gradient at the input of layer N-1, N-2 or N-3 (default: the score store's, else 1)",
    )
    p.add_argument("--grad-mode", choices=GRAD_MODES, help="gradient score reduction (default: the score store's, else abs)")
    p.add_argument("--layers", action="store_true", help="also plot gradient scores from layers N-1, N-2, N-3 (gradient_layers.png, paper Fig. S1)")
    p.set_defaults(func=run, parser=p)


def run(args: argparse.Namespace) -> int:
    from tokenseek.seeking.select import check_selection

    if not args.output:
        raise TokenSeekError("--output is required: a directory for the example or --summary files, or the image file for --runs (e.g. loss.png)")
    if args.runs:
        if args.index is not None or args.summary or args.scores:
            raise TokenSeekError("--runs plots loss curves only: drop --index/--summary/--scores, or run those separately")
        return _loss_curves(args)
    check_selection("tokenseek", args.ratio, args.alpha, args.beta)
    if args.summary:
        if args.index is not None:
            raise TokenSeekError("--summary covers every example: drop --index (or drop --summary to show one example)")
        if not args.scores:
            raise TokenSeekError("--summary needs a score store: score the data with `tokenseek score --out S` and pass --scores S")
        if args.layers or args.grad_layer is not None or args.grad_mode is not None:
            raise TokenSeekError(
                "--summary reads the store's scores as they were made: drop --layers/--grad-layer/--grad-mode "
                "(score again with `tokenseek score --grad-layer` for another layer)"
            )
        return _summary(args)
    if args.index is None:
        raise TokenSeekError("say what to show: --index I for one example, --summary with --scores for a score store, or --runs for loss curves")
    return _example(args)


def _tokenized(args, tokenizer):
    from tokenseek.cli.common import load_data
    from tokenseek.data import tokenize_records

    records = load_data(args)
    return tokenize_records(records, tokenizer, template=args.template, max_length=args.max_length, train_on_prompt=args.train_on_prompt)


def _example(args) -> int:
    from tokenseek.models import DEFAULT_MODEL_NAME, load_model, load_tokenizer
    from tokenseek.seeking.store import ScoreStore
    from tokenseek.visualize import compute_example, render_example
    from tokenseek.visualize.outputs import EXAMPLE_FILES, staged_dir

    tokenizer = load_tokenizer(args.model)
    data = _tokenized(args, tokenizer)
    if not 0 <= args.index < len(data):
        raise TokenSeekError(
            f"--index {args.index} is out of range: the tokenized data has {len(data)} examples, so give 0..{len(data) - 1}"
            + (" (or raise --limit)" if args.limit is not None else "")
        )
    example = data.examples[args.index]
    store = stored = None
    if args.scores:
        store = ScoreStore.open(args.scores, data=data)
        stored = store.get(example["index"])
    scoring = store.meta.get("scoring", {}) if store else {}
    layers_back = args.grad_layer or scoring.get("layers_back", 1)
    grad_mode = args.grad_mode or scoring.get("grad_mode", "abs")
    if store is not None and (layers_back, grad_mode) != (scoring.get("layers_back", 1), scoring.get("grad_mode", "abs")):
        raise TokenSeekError(
            f"the score store {args.scores} holds gradients at layer N-{scoring.get('layers_back', 1)} ({scoring.get('grad_mode', 'abs')}): "
            "drop --grad-layer/--grad-mode to use them, or drop --scores to recompute at another layer"
        )

    model, tokenizer = load_model(args.model)
    if store is not None:
        store.check_model(model, args.model)
    view = compute_example(
        model,
        tokenizer,
        example,
        position=args.index,
        ratio=args.ratio,
        alpha=args.alpha,
        beta=args.beta,
        select_from=args.select_from,
        stored=stored,
        score_source=str(args.scores) if args.scores else "recomputed",
        layers_back=layers_back,
        grad_mode=grad_mode,
        layers=args.layers,
        model_name=args.model or DEFAULT_MODEL_NAME,
    )
    with staged_dir(args.output, EXAMPLE_FILES) as tmp:
        written = render_example(view, tmp, tokenizer)
    print(
        f"example {args.index} (record {view.record_index}, {view.n} tokens, k = {view.k}): "
        f"wrote {', '.join(written)} to {args.output}"
    )
    return 0


def _summary(args) -> int:
    from tokenseek.models import load_tokenizer
    from tokenseek.seeking.store import ScoreStore
    from tokenseek.visualize import render_summary
    from tokenseek.visualize.outputs import SUMMARY_FILES, staged_dir
    from tokenseek.visualize.summary import compute_summary

    tokenizer = load_tokenizer(args.model)
    data = _tokenized(args, tokenizer)
    store = ScoreStore.open(args.scores, data=data)
    summary = compute_summary(data, store, tokenizer, ratio=args.ratio, alpha=args.alpha, beta=args.beta, select_from=args.select_from)
    with staged_dir(args.output, SUMMARY_FILES) as tmp:
        written = render_summary(summary, tmp)
    share = summary["share"]
    print(
        f"{summary['examples']} examples; kept tokens in the response: "
        + ", ".join(f"{name} {100 * share[name]['response']:.1f} %" for name in ("context", "gradient", "combined"))
        + f" (all tokens {100 * share['all tokens']['response']:.1f} %); wrote {', '.join(written)} to {args.output}"
    )
    return 0


def _loss_curves(args) -> int:
    from pathlib import Path

    from tokenseek.visualize import render_loss_curves
    from tokenseek.visualize.outputs import IMAGE_SUFFIXES, staged_file
    from tokenseek.visualize.runs import load_runs

    output = Path(args.output)
    if output.is_dir():
        output = output / "loss.png"
    elif output.suffix.lower() not in IMAGE_SUFFIXES:
        raise TokenSeekError(f"--output {args.output} for --runs must be an image file ({', '.join(IMAGE_SUFFIXES)}), e.g. loss.png")
    runs = load_runs(args.runs)
    with staged_file(output) as tmp:
        render_loss_curves(runs, tmp)
    print(f"plotted {len(runs)} run(s) ({', '.join(r['label'] for r in runs)}) into {output}")
    return 0
