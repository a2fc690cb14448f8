"""``attnlab eval RUN_DIR``: evaluate a trained run with its task's evaluation; the results (and
pictures) are written under ``RUN_DIR/eval/`` or ``--out``."""

from __future__ import annotations

import dataclasses
import json

from attnlab.cli.common import add_int8_arguments, add_which_argument, note_int8, one_line_errors


def register(subparsers) -> None:
    from attnlab.tasks import task_specs
    from attnlab.train.config import add_arguments, positive_int

    p = subparsers.add_parser("eval", help="evaluate a trained run (accuracy, perplexity, BLEU...) and save the results",
                              description="Evaluate a run directory's model with its task's evaluation (by default on "
                                          "the data it was trained with) and write results.json (and pictures) under "
                                          "RUN_DIR/eval/<what>/ or --out.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by 'attnlab train' (RUN_DIR:last: its last "
                                                      "checkpoint)")
    add_which_argument(p)
    p.add_argument("--device", default="cpu", metavar="DEV", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--out", metavar="DIR", help="write results.json and the pictures here (default: RUN_DIR/eval/<what>)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_int8_arguments(p)
    p.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                   help="per batch: images (image runs, default 500; detect runs, default 100), windows or rows (lm "
                        "runs, default: the run's), sentences (translate runs, default 64)")
    seen: set[str] = {"which", "device", "out", "json", "quiet", "run_dir", "batch_size"}
    for name, spec in task_specs().items():  # each task's own options, each option once
        if spec.eval_config is None:
            continue
        names = [f.name for f in dataclasses.fields(spec.eval_config) if f.name not in seen]
        add_arguments(p, spec.eval_config, f"{name} runs", skip=tuple(f.name for f in dataclasses.fields(spec.eval_config)
                                                                       if f.name not in names))
        seen.update(names)
    one_line_errors(p)
    p.set_defaults(func=run)


def eval_config(spec, args):
    """The task's eval options from the parsed ones; an option of another task is refused."""
    from attnlab.errors import ConfigError
    from attnlab.tasks import task_specs
    from attnlab.train.config import from_args

    mine = {f.name for f in dataclasses.fields(spec.eval_config)} if spec.eval_config else set()
    mine |= {"batch_size"}
    others = {f.name for s in task_specs().values() if s.eval_config for f in dataclasses.fields(s.eval_config)} - mine
    wrong = sorted(k for k in others if getattr(args, k, None) is not None)
    if wrong:
        raise ConfigError(f"{', '.join('--' + k.replace('_', '-') for k in wrong)} do(es) not apply to {spec.name!r} runs")
    return from_args(spec.eval_config, args)[0] if spec.eval_config else None


def run(args) -> int:
    from attnlab import runs
    from attnlab.train import distributed as dist

    spec = runs.task_of(args.run_dir)
    ec = eval_config(spec, args)
    run_ = runs.open(args.run_dir, args.which, device=dist.resolve_device(args.device), int8=args.int8,
                     compile=args.compile)
    note_int8(run_)
    results = runs.evaluate(run_, ec, args.out, progress=not args.quiet)
    print(json.dumps(results, indent=2) if args.json else FORMATS.get(spec.name, format_any)(results))
    return 0


# --- terminal formatting, per task --------------------------------------------------------------------

def format_image(r: dict) -> str:
    lines = [f"{r['run_dir']} ({r['checkpoint']}) on {r['dataset']} test: {r['images']} images in {r['seconds']:.1f} s "
             f"(batches of {r['batch_size']})",
             f"  accuracy {100 * r['accuracy']:.2f}%   top-5 {100 * r['top5']:.2f}%   loss {r['loss']:.4f}",
             "  per class:"]
    items = list(r["per_class_accuracy"].items())
    w = max(len(k) for k, _ in items)
    for i in range(0, len(items), 4):
        lines.append("    " + "   ".join(f"{k:>{w}} {100 * v:6.2f}%" for k, v in items[i:i + 4]))
    lines.append(f"  confusion matrix: {r['confusion_png']}")
    lines.append(f"  results: {r['results_json']}")
    return "\n".join(lines)


def format_lm(res: dict) -> str:
    lines = [f"{res['run_dir']} ({res['checkpoint']} checkpoint, step {res['step']}): {res['model']}, "
             f"{res.get('parameters') or 0:,} parameters, {res['tokenizer']} tokens"]
    for split in ("valid", "test"):
        if split in res:
            r = res[split]
            extra = f"  bits/char {r['bpc']:.4f}" if "bpc" in r else ""
            lines.append(f"  {split:5s}  loss {r['loss']:.4f} nats/token  perplexity {r['ppl']:.2f}  "
                         f"accuracy {100 * r['acc']:.2f}%{extra}  ({int(r['tokens']):,} tokens, {r['seconds']:.1f}s)")
    lines.append(f"  results: {res['results_json']}")
    return "\n".join(lines)


def format_translate(res: dict) -> str:
    dec = res["decode"]
    how = (f"mask-predict, {dec['iterations']} iterations, {dec['length_beam']} lengths" if res["decoder"] == "mask-predict"
           else "greedy" if dec["beam"] == 1 else f"beam {dec['beam']}, length penalty {dec['length_penalty']}")
    return "\n".join([
        f"{res['run_dir']} ({res['checkpoint']} checkpoint, step {res['step']}): {res['model']}, "
        f"{res.get('parameters') or 0:,} parameters; {res['sentences']} sentences, {how}, batches of "
        f"{res['batch_size']}, {res['seconds']:.1f} s ({res['tokens_per_s']:.0f} tokens/s)",
        f"BLEU = {res['bleu']:.2f}  {res['bleu_signature']}",
        f"chrF = {res['chrf']:.2f}  {res['chrf_signature']}",
        f"BLEU (lowercased, 13a-tokenized) = {res['bleu_tok_lc']:.2f}  {res['bleu_tok_lc_signature']}",
        f"results and hypotheses: {res['results_json']}",
    ])


def format_detect(r: dict) -> str:
    what = (f"{r['photographs']} photograph(s) in {r['tiles']} tiles" if "photographs" in r
            else f"{r['images']} images")
    recall = f"   AR {r['AR']:.3f}" if "AR" in r else ""
    return "\n".join([
        f"{r['run_dir']} ({r['checkpoint']}) on {r['dataset']}: {what} in {r['seconds']:.1f} s "
        f"(batches of {r['batch_size']})",
        f"  AP {r['AP']:.3f}   AP50 {r['AP50']:.3f}   AP75 {r['AP75']:.3f}{recall}   (COCO evaluator; IoU 0.5:0.95, 0.5, "
        f"0.75; at most {r.get('max_dets', 100)} detections per image)",
        f"  set loss {r['loss']:.4f}   class {r['ce']:.4f}   L1 {r['l1']:.4f}   GIoU {r['giou']:.4f}",
        f"  results: {r['results_json']}",
    ])


def format_any(res: dict) -> str:
    """A task without its own format: its scalar results, one per line."""
    return "\n".join(f"  {k}: {v}" for k, v in res.items() if isinstance(v, (str, int, float)))


FORMATS = {"image": format_image, "lm": format_lm, "translate": format_translate, "detect": format_detect}
