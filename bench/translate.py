"""Translation benchmarks; results go to the Translation section of BENCHMARKS.md.

    python bench/translate.py speed                 # greedy decoding: KV cache vs none vs HF Marian
    python bench/translate.py multi30k --pair de-en --model transformer --minutes 40
    python bench/translate.py multi30k --pair de-en --model gru-attention --minutes 10 -- --model-arg dropout=0.2
    python bench/translate.py notes "one note" "another"   # free-text notes under the tables
    python bench/translate.py speed --batches 1 --repeats 1 --threads 1 --no-write   # a quick check

``speed``: tokens/s of greedy decoding of exactly 64 new tokens (no end token) with random
weights of the paper's base model (d_model 512, 6+6 layers, 8 heads, FFN 2048, vocabulary
8000), batch 1 and 32, source length 20: attnlab's Transformer with the decoder's key/value
cache, the same without it (the whole prefix recomputed at every step), and Hugging Face's
``MarianMTModel.generate`` with the same dimensions, with and without its cache. Every
configuration is timed ``--repeats`` times, interleaved in one process; the median is kept.

``multi30k``: trains on Multi30k with ``attnlab train translate`` (wall-clock time limited by
``--minutes``), then scores test_2016_flickr with ``attnlab eval`` (sacrebleu, default
signature) and the tokenized lowercased variant, greedy and beam. ``--model`` names the row:
transformer, gru-attention or nat, trained as the registry's ``transformer_multi30k``,
``gru_attention_multi30k`` or ``mask_predict_multi30k``; options after ``--`` go to ``attnlab
train translate`` (``--model-arg KEY=VALUE`` sets a field of the model). Data: ``--data``,
default the library's data root (``$ATTNLAB_DATA``, default ``../shared/data``) /multi30k.

Each part keeps its numbers in a JSON comment inside the section, so running one part
rewrites the section with the others' last results (``--no-write``: print them only).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import BENCHMARKS, command, machine, write_section  # noqa: E402
from attnlab.checkpoints.rundir import read_record  # noqa: E402
from attnlab.data.images import data_root  # noqa: E402
from attnlab.decode.search import SearchConfig, greedy_search  # noqa: E402
from attnlab.nn import Transformer, TransformerConfig  # noqa: E402

SECTION = "translation"
V, D, LAYERS, HEADS, FFN = 8000, 512, 6, 8, 2048
NEW_TOKENS, SRC_LEN = 64, 20
#: The rows' model names and the registry models they train.
MODELS = {"transformer": "transformer_multi30k", "gru-attention": "gru_attention_multi30k", "nat": "mask_predict_multi30k"}
#: What a row keeps of an ``attnlab eval --json`` result (not its paths, which are the machine's).
EVAL_KEYS = ("checkpoint", "step", "model", "parameters", "sentences", "decoder", "decode", "seconds", "tokens_per_s",
             "bleu", "chrf", "bleu_tok_lc", "bleu_signature", "chrf_signature", "bleu_tok_lc_signature", "bleu_detail")


# --- stored results ------------------------------------------------------------------------------

def load_results() -> dict:
    if not BENCHMARKS.exists():
        return {}
    m = re.search(r"<!-- section:translation -->.*?<!-- data: (.*?) -->", BENCHMARKS.read_text(), re.S)
    return json.loads(m.group(1)) if m else {}


def save_results(results: dict) -> None:
    write_section(SECTION, render(results) + f"\n<!-- data: {json.dumps(results)} -->\n")


# --- decoding speed ------------------------------------------------------------------------------

def build_ours() -> Transformer:
    torch.manual_seed(0)
    cfg = TransformerConfig(V, V, d_model=D, num_heads=HEADS, num_encoder_layers=LAYERS, num_decoder_layers=LAYERS,
                            d_ff=FFN, dropout=0.0, share_embeddings=True)
    return Transformer(cfg).eval()


def build_marian():
    from transformers import MarianConfig, MarianMTModel

    torch.manual_seed(0)
    cfg = MarianConfig(vocab_size=V, d_model=D, encoder_layers=LAYERS, decoder_layers=LAYERS, encoder_attention_heads=HEADS,
                       decoder_attention_heads=HEADS, encoder_ffn_dim=FFN, decoder_ffn_dim=FFN, activation_function="relu",
                       dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, max_position_embeddings=256,
                       pad_token_id=0, eos_token_id=2, forced_eos_token_id=None, decoder_start_token_id=1,
                       scale_embedding=True)
    return MarianMTModel(cfg).eval()


def speed(args) -> dict:
    torch.set_num_threads(args.threads) if args.threads else None
    ours, marian = build_ours(), build_marian()
    g = torch.Generator().manual_seed(0)
    runs = {}
    for b in args.batches:
        src = torch.randint(4, V, (b, SRC_LEN), generator=g)
        scfg = dict(eos=None, max_len=NEW_TOKENS, max_len_a=0, max_len_b=NEW_TOKENS)
        runs[("attnlab_cache", b)] = lambda src=src, c=scfg: greedy_search(ours, src, SearchConfig(use_cache=True, **c))
        runs[("attnlab_no_cache", b)] = lambda src=src, c=scfg: greedy_search(ours, src, SearchConfig(use_cache=False, **c))
        for cache in (True, False):
            def hf(src=src, cache=cache):
                with torch.inference_mode():
                    out = marian.generate(input_ids=src, attention_mask=torch.ones_like(src), max_new_tokens=NEW_TOKENS,
                                          min_new_tokens=NEW_TOKENS, num_beams=1, do_sample=False, use_cache=cache)
                assert out.shape[1] - 1 == NEW_TOKENS, out.shape
                return out
            runs[("hf_marian_cache" if cache else "hf_marian_no_cache", b)] = hf
    # Same tokens with and without the cache (a correctness check, not a timing).
    for b in args.batches:
        src = torch.randint(4, V, (b, SRC_LEN), generator=torch.Generator().manual_seed(1))
        a = greedy_search(ours, src, eos=None, max_len=16, use_cache=True)
        c = greedy_search(ours, src, eos=None, max_len=16, use_cache=False)
        assert a == c, "cached and uncached decoding differ"
    times: dict = {k: [] for k in runs}
    for k, fn in runs.items():  # warm-up
        if k[1] == min(args.batches):
            fn()
    for r in range(args.repeats):
        for k, fn in runs.items():
            if r >= args.slow_repeats and "no_cache" in k[0] and k[1] > 1:
                continue  # recomputing every prefix at batch 32 takes minutes per run
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
            print(f"repeat {r} {k}: {times[k][-1]:.2f} s", flush=True)
    rows = {f"{impl}@{b}": b * NEW_TOKENS / statistics.median(t) for (impl, b), t in times.items()}
    return {"tokens_per_s": rows, "threads": torch.get_num_threads(), "machine": machine(), "command": command(),
            "repeats": args.repeats, "slow_repeats": args.slow_repeats, "batches": args.batches,
            "date": time.strftime("%Y-%m-%d")}


def render_speed(s: dict) -> list[str]:
    tps = s["tokens_per_s"]
    impls = ["attnlab_cache", "attnlab_no_cache", "hf_marian_cache", "hf_marian_no_cache"]
    lines = ["### Decoding speed (greedy, random weights)", "",
             f"`{s['command']}` — {s['machine']}, {s['date']}. d_model {D}, {LAYERS}+{LAYERS} layers, {HEADS} heads, "
             f"FFN {FFN}, vocabulary {V}; source length {SRC_LEN}; exactly {NEW_TOKENS} new tokens per sentence; "
             f"median of {s['repeats']} interleaved repeats "
             f"({s.get('slow_repeats', s['repeats'])} for the uncached runs at batch > 1). "
             f"Tokens/s = batch × {NEW_TOKENS} / wall time "
             "(the encoder included). The machine is shared: ratios within a run matter more than absolute values.", "",
             "| batch | " + " | ".join(impls) + " | cache / no cache | attnlab / Marian (both cached) |",
             "|---:|" + "---:|" * (len(impls) + 2)]
    for b in s["batches"]:
        vals = [tps.get(f"{i}@{b}") for i in impls]
        cells = [f"{v:.0f}" if v else "–" for v in vals]
        r1 = vals[0] / vals[1] if vals[0] and vals[1] else None
        r2 = vals[0] / vals[2] if vals[0] and vals[2] else None
        lines.append(f"| {b} | " + " | ".join(cells) + f" | {r1:.1f}× | {r2:.1f}× |")
    lines += ["", "Targets: cache ≥ 5× no cache at batch 1; ≥ 2× Marian at batch 1 and ≥ 1.5× at batch 32."]
    return lines


# --- Multi30k ------------------------------------------------------------------------------------

#: Model options of ``attnlab train translate`` before models were registry names (in older rows'
#: commands), and the model fields they set.
OLD_OPTIONS = {"--d-model": ("d_model",), "--num-heads": ("num_heads",), "--d-ff": ("d_ff",), "--dropout": ("dropout",),
               "--num-layers": ("num_encoder_layers", "num_decoder_layers"), "--embed-dim": ("embed_dim",),
               "--hidden-dim": ("hidden_dim", "attn_dim")}


def current_command(cmd: str) -> str | None:
    """A row's command with the old model options written as ``--model-arg`` fields; None if it has none."""
    words, out = iter(cmd.split()), []
    for w in words:
        if w in OLD_OPTIONS:
            value = next(words)
            out += [f"--model-arg {f}={value}" for f in OLD_OPTIONS[w]]
        else:
            out.append(w)
    new = " ".join(out)
    return None if new == " ".join(cmd.split()) else new


def render_multi30k(rows: dict) -> list[str]:
    lines = ["### Multi30k (test_2016_flickr)", "",
             "BLEU: sacrebleu on detokenized text, default signature. \"tok/lc\": the same hypotheses and references "
             "lowercased and tokenized with sacrebleu's 13a tokenizer before scoring, the variant most tutorials report "
             "(the best-known small-Transformer tutorial: 36.52 De→En).", "",
             "| pair | model | train time | epochs | greedy BLEU | beam BLEU (k, α) | beam chrF | tok/lc BLEU (beam) | command |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for key in sorted(rows):
        r = rows[key]
        if r["model"] == "nat":
            continue
        lines.append(f"| {r['pair']} | {r['model']} | {r['train_minutes']:.0f} min | {r['epochs']} | {r['greedy_bleu']:.2f} | "
                     f"{r['beam_bleu']:.2f} ({r['beam']}, {r['length_penalty']}) | {r['beam_chrf']:.2f} | "
                     f"{r['beam_bleu_tok_lc']:.2f} | `{r['command']}` |")
    sigs = {r.get("signature") for r in rows.values() if r.get("signature")}
    if sigs:
        lines += ["", "Signature: " + "; ".join(f"`{s}`" for s in sorted(sigs))]
    nat = [r for r in rows.values() if r["model"] == "nat"]
    if nat:
        lines += ["", "#### Non-autoregressive (mask-predict) against the autoregressive Transformer", "",
                  "Whole test set (1,000 sentences), batches of 64 sentences, same machine; the autoregressive figures "
                  "come from the Transformer row of the same pair.", "",
                  "| pair | decoder | train time | epochs | BLEU | tok/lc BLEU | test-set seconds | × faster than AR greedy |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in nat:
            ar = rows.get(f"{r['pair']}/transformer")
            if ar and "greedy_seconds" in ar:
                lines.append(f"| {r['pair']} | autoregressive, greedy | {ar['train_minutes']:.0f} min | {ar['epochs']} | "
                             f"{ar['greedy_bleu']:.2f} | {ar.get('greedy_tok_lc', float('nan')):.2f} | "
                             f"{ar['greedy_seconds']:.1f} | 1.0 |")
            for key, name in (("nat_1", "mask-predict, 1 pass, 1 length"), ("nat_10", "mask-predict, 10 iterations, 3 lengths")):
                e = r[key]
                speed = f"{ar['greedy_seconds'] / e['seconds']:.2f}" if ar and "greedy_seconds" in ar else "–"
                lines.append(f"| {r['pair']} | {name} | {r['train_minutes']:.0f} min | {r['epochs']} | {e['bleu']:.2f} | "
                             f"{e['bleu_tok_lc']:.2f} | {e['seconds']:.1f} | {speed} |")
            lines.append(f"\nCommand: `{r['command']}`")
    now = {key: c for key in sorted(rows) if (c := current_command(rows[key]["command"]))}
    if now:
        lines += ["", "The model options of `attnlab train translate` have changed since these rows ran (a model's "
                      "fields are now set with `--model-arg KEY=VALUE`); the same runs today:", ""]
        lines += [f"- {key}: `{c}`" for key, c in now.items()]
    return lines


def render(results: dict) -> str:
    lines = ["## Translation", ""]
    if "speed" in results:
        lines += render_speed(results["speed"]) + [""]
    if results.get("multi30k"):
        lines += render_multi30k(results["multi30k"]) + [""]
    if results.get("notes"):
        lines += ["### Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    return "\n".join(lines)


def run(cmd: list[str]) -> str:
    print("$", " ".join(cmd), flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True)
    print(out.stdout[-2000:], out.stderr[-2000:], flush=True)
    if out.returncode:
        raise SystemExit(f"'{' '.join(cmd[2:4])}' failed with exit status {out.returncode} (its output is above)")
    return out.stdout


def eval_json(exe: list[str], run_dir: Path, out: Path, opts: list[str]) -> dict:
    """``attnlab eval --json`` into ``out``; what a row keeps of it."""
    res = json.loads(run(exe + ["eval", str(run_dir), *opts, "--out", str(out), "--json", "--quiet"]))
    return {k: res[k] for k in EVAL_KEYS if k in res}


def multi30k(args) -> dict:
    data = Path(args.data) if args.data else data_root() / "multi30k"
    src_l, tgt_l = args.pair.split("-")
    run_dir = Path(args.out) / f"multi30k-{args.pair}-{args.model}"
    exe = [sys.executable, "-m", "attnlab"]
    train = exe + ["train", "translate", "--model", MODELS[args.model],
                   "--src", str(data / f"train.{src_l}.gz"), "--tgt", str(data / f"train.{tgt_l}.gz"),
                   "--valid-src", str(data / f"val.{src_l}.gz"), "--valid-tgt", str(data / f"val.{tgt_l}.gz"),
                   "--run-dir", str(run_dir), "--overwrite", "--max-minutes", str(args.minutes), "--quiet"] + args.train_args
    if not args.skip_train:
        run(train)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    minutes = read_record(run_dir, "last")["elapsed"] / 60
    test = ["--src", str(data / f"test_2016_flickr.{src_l}.gz"), "--ref", str(data / f"test_2016_flickr.{tgt_l}.gz")]
    row = {"pair": args.pair, "model": args.model, "train_minutes": minutes,
           "epochs": sum(1 for r in metrics["epochs"] if "val_loss" in r), "command": command()}
    if args.model == "nat":  # one parallel pass, then mask-predict's default refinement
        for key, opts in (("nat_1", ["--iterations", "1", "--length-beam", "1"]), ("nat_10", [])):
            row[key] = eval_json(exe, run_dir, run_dir / "eval" / f"test-{key}", test + opts)
        return row
    res = {}
    for beam in (1, args.beam):
        res[beam] = eval_json(exe, run_dir, run_dir / "eval" / f"test-beam{beam}",
                              test + ["--beam", str(beam), "--length-penalty", str(args.length_penalty)])
    return {**row, "greedy_bleu": res[1]["bleu"], "beam_bleu": res[args.beam]["bleu"], "beam_chrf": res[args.beam]["chrf"],
            "beam_bleu_tok_lc": res[args.beam]["bleu_tok_lc"], "beam": args.beam, "length_penalty": args.length_penalty,
            "signature": res[args.beam]["bleu_signature"], "greedy_seconds": res[1]["seconds"],
            "beam_seconds": res[args.beam]["seconds"], "greedy_tok_lc": res[1]["bleu_tok_lc"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--slow-repeats", type=int, default=1, help="repeats of the uncached runs at batch > 1")
    s.add_argument("--threads", type=int, default=0)
    m = sub.add_parser("multi30k")
    m.add_argument("--pair", default="de-en", choices=["de-en", "en-de"])
    m.add_argument("--model", default="transformer", choices=list(MODELS),
                   help="the row's model: " + ", ".join(f"{k} = {v}" for k, v in MODELS.items()))
    m.add_argument("--minutes", type=float, default=40)
    m.add_argument("--beam", type=int, default=5)
    m.add_argument("--length-penalty", type=float, default=1.0)
    m.add_argument("--skip-train", action="store_true", help="only evaluate the existing run directory")
    m.add_argument("--data", help="the Multi30k directory (default: $ATTNLAB_DATA/multi30k, ATTNLAB_DATA defaulting to "
                                  "../shared/data)")
    m.add_argument("--out", default="runs", help="where the run directory goes (default: runs)")
    m.add_argument("train_args", nargs=argparse.REMAINDER, help="extra options for attnlab train translate (after --)")
    n = sub.add_parser("notes", help="replace the notes under the tables (one argument per note) and re-render")
    n.add_argument("notes", nargs="*")
    for q in (s, m, n):
        q.add_argument("--no-write", action="store_true", help="print the section only; leave BENCHMARKS.md alone")
    args = p.parse_args()
    if getattr(args, "train_args", None) and args.train_args[:1] == ["--"]:
        args.train_args = args.train_args[1:]
    if args.what == "speed":
        part = {"speed": speed(args)}
    elif args.what == "notes":
        part = {"notes": args.notes}
    else:
        part = {"multi30k": {f"{args.pair}/{args.model}": multi30k(args)}}
    # Read the stored results only now: other runs of this script may have saved theirs meanwhile.
    results = load_results()
    for k, v in part.items():
        results[k] = {**results.get(k, {}), **v} if k == "multi30k" else v
    if not args.no_write:
        save_results(results)
    print(render(results))


if __name__ == "__main__":
    main()
