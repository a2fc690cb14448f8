"""Language-model benchmarks; results go to the "Language models" section of BENCHMARKS.md.

    python bench/lm.py throughput                 training tokens/s vs a plain reference; KV-cache speed-up
    python bench/lm.py shakespeare --budget 180   validation loss after a fixed training time, per model
    python bench/lm.py ptb --epochs 6             Penn Treebank word-level test perplexity
    python bench/lm.py report                     rewrite the section from bench/results/lm-*.json

Each experiment saves its numbers in bench/results/lm-<name>.json; the section is rebuilt from
all of them, so experiments can be run one at a time (``--no-write``: print only, for a check
with tiny settings, e.g. ``python bench/lm.py --threads 1 --no-write shakespeare --budget 2
--models transformer lstm``). Models come from the registry (``SHAKESPEARE_MODELS``,
``PTB_MODELS``: a registry name and its field overrides); the data decide the vocabulary size
and the Transformer's context. Data: the library's data root (``$ATTNLAB_DATA``, default
``../shared/data`` relative to the working directory).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import ROOT, command, machine, write_section  # noqa: E402
from attnlab.data.images import data_root  # noqa: E402

RESULTS = ROOT / "bench" / "results"
LOAD0 = round(os.getloadavg()[0], 2)
WRITE = True  # --no-write: results are printed, bench/results and BENCHMARKS.md left alone


def save_result(name: str, obj: dict) -> None:
    from attnlab.io import atomic_write_json

    obj = {**obj, "command": command(), "threads": torch.get_num_threads(), "machine": machine(),
           "load_avg_at_start": LOAD0, "date": time.strftime("%Y-%m-%d %H:%M")}
    if WRITE:
        atomic_write_json(RESULTS / f"lm-{name}.json", obj)


# --- a plain reference Transformer LM (same architecture, written directly on PyTorch) --------------

class RefBlock(nn.Module):
    def __init__(self, d: int, h: int, ff: int) -> None:
        super().__init__()
        self.h = h
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, ff), nn.Linear(ff, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(a.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class RefLM(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, max_len: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(1, max_len, d))
        self.blocks = nn.ModuleList(RefBlock(d, heads, 4 * d) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, idx):
        x = self.tok(idx) + self.pos[:, : idx.shape[1]]
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln(x))


def _train_speed(model, x, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    t = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(model(x).flatten(0, 1), x.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return x.numel() * steps / (time.perf_counter() - t)


def throughput(args) -> dict:
    from attnlab.decode.sampling import greedy
    from attnlab.models.registry import count_parameters, create_model

    def transformer(max_len: int):  # the reference's layout: learned positions, d_ff 4 x d_model, tied read-out
        return create_model("transformer_lm_char", vocab_size=V, d_model=D, num_layers=L, num_heads=H, max_len=max_len,
                            position="learned")

    torch.manual_seed(0)
    V, D, L, H, T, B = 65, args.d_model, args.layers, 4, args.window, args.batch
    ours = transformer(T)
    ref = RefLM(V, D, L, H, T)
    assert count_parameters(ours) == count_parameters(ref), (count_parameters(ours), count_parameters(ref))
    x = torch.randint(0, V, (B, T))
    for m in (ours, ref):
        _train_speed(m, x, 3)  # warm-up
    o, r = [], []
    for _ in range(args.rounds):  # interleaved, so both see the same machine load
        o.append(_train_speed(ours, x, args.steps))
        r.append(_train_speed(ref, x, args.steps))
    train = {"config": f"d_model {D}, {L} layers, {H} heads, context {T}, batch {B}, vocab {V}",
             "params": count_parameters(ours), "ours_tok_s": statistics.median(o), "ref_tok_s": statistics.median(r),
             "ratio": statistics.median(o) / statistics.median(r), "rounds": args.rounds}
    print(f"training: ours {train['ours_tok_s']:.0f} tok/s, reference {train['ref_tok_s']:.0f} tok/s, "
          f"ratio {train['ratio']:.3f}", flush=True)

    gen = []
    g = transformer(1024).eval()
    prompt = torch.randint(0, V, (1, 16))
    for n in (64, 512):
        speeds = {}
        for cached in (True, False):
            ts = []
            for _ in range(args.gen_rounds):
                t = time.perf_counter()
                out = greedy(g.stepper(cached=cached), prompt, n)
                ts.append(time.perf_counter() - t)
            speeds[cached] = n / statistics.median(ts)
            if cached:
                ref_out = out
            else:
                assert torch.equal(out, ref_out), "cached and uncached greedy outputs differ"
        gen.append({"new_tokens": n, "cached_tok_s": speeds[True], "uncached_tok_s": speeds[False],
                    "speedup": speeds[True] / speeds[False]})
        print(f"generation {n}: cached {speeds[True]:.0f} tok/s, uncached {speeds[False]:.0f} tok/s, "
              f"x{speeds[True] / speeds[False]:.1f}", flush=True)
    res = {"train": train, "generate": gen,
           "generate_config": f"d_model {D}, {L} layers, context 1024, batch 1, prompt 16 tokens, greedy"}
    save_result("throughput", res)
    return res


# --- Tiny Shakespeare under a fixed training-time budget ---------------------------------------------

SHAKESPEARE_MODELS = {
    # bench name: (registry name, field overrides); matched at about 0.8M parameters (vocabulary 65)
    "transformer": ("transformer_lm_char", dict(d_model=128, num_layers=4, num_heads=4)),
    "lstm": ("lstm_lm_small", dict(embed_dim=224, hidden_dim=224, num_layers=2)),
    "gru": ("gru_lm_small", dict(embed_dim=256, hidden_dim=256, num_layers=2)),
    "rnn": ("rnn_lm_small", dict(embed_dim=448, hidden_dim=448, num_layers=2)),
}


def budget_run(dc, name: str, model: str, model_args: dict, cfg, budget: float, log=print) -> dict:
    """Train the registry's ``model`` (with ``model_args``) for ``budget`` seconds of training
    time: the learning rate warms up over ``cfg.warmup_steps`` steps, then follows a cosine by
    the fraction of the budget used."""
    from attnlab import runs
    from attnlab.models.registry import count_parameters
    from attnlab.tasks import lm
    from attnlab.train.checkpoint import seed_everything
    from attnlab.train.engine import Trainer

    data = lm.load_data(dc, runs.probe(lm.SPEC, model, model_args), None, False, model_name=model)
    seed_everything(cfg.seed)
    net = runs.build_model(lm.SPEC, model, model_args, data.model_fields)
    clock = {"t0": None, "stopped": False}

    class BudgetTask(lm.LMTask):
        def train_batches(self, plan):
            for b in super().train_batches(plan):
                if clock["t0"] is None:
                    clock["t0"] = time.perf_counter()
                if time.perf_counter() - clock["t0"] >= budget:
                    clock["stopped"] = time.perf_counter()
                    return
                yield b

    task = BudgetTask({"train": data.ids["train"], "valid": data.ids["valid"]}, recurrent=net.is_recurrent,
                      window=dc.window, char_level=True, steps_per_epoch=dc.steps_per_epoch)
    trainer = Trainer(net, task, cfg, None, log=log, progress=False)
    warm, min_ratio = max(1, cfg.warmup_steps or 1), cfg.min_lr / cfg.lr

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        frac = 0.0 if clock["t0"] is None else min(1.0, (time.perf_counter() - clock["t0"]) / budget)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac))

    trainer.scheduler.factor = factor
    summary = trainer.fit()
    train_seconds = (clock["stopped"] or time.perf_counter()) - clock["t0"]
    val = summary["metrics"]
    return {"model": name, "params": count_parameters(net), "val_loss": val["val_loss"], "val_bpc": val["val_bpc"],
            "steps": summary["steps"], "tokens_seen": summary["steps"] * cfg.batch_size * dc.window,
            "train_seconds": round(train_seconds, 1), "budget_s": budget, "window": dc.window,
            "batch_size": cfg.batch_size, "lr": cfg.lr, "config": {"registry": model, **SHAKESPEARE_MODELS[name][1]}}


def shakespeare(args) -> dict:
    from attnlab.tasks.lm import LMDataConfig
    from attnlab.train.config import TrainConfig

    text = data_root() / "tinyshakespeare" / "input.txt"
    results = {}
    old = RESULTS / "lm-shakespeare.json"
    if old.exists() and args.models != list(SHAKESPEARE_MODELS):
        results = json.loads(old.read_text()).get("runs", {})
    for name in args.models:
        model, shape = SHAKESPEARE_MODELS[name]
        rec = name != "transformer"
        window = args.window if not rec else args.bptt
        dc = LMDataConfig(text=str(text), tokenizer="char", window=window, steps_per_epoch=10**6)
        model_args = {**shape, "dropout": 0.0, "tie_weights": not rec, **({} if rec else {"position": args.position})}
        lr = args.lr if not rec else args.rnn_lr
        cfg = TrainConfig(epochs=1 if not rec else 1000, batch_size=args.batch if not rec else args.rnn_batch, lr=lr,
                          min_lr=lr / 10, warmup_steps=50, weight_decay=0.1 if not rec else 0.0, clip_grad=1.0,
                          eval_every=10**6, seed=0, betas=(0.9, 0.99), log_every=50)
        print(f"--- {name}: {model} {model_args}", flush=True)
        r = budget_run(dc, name, model, model_args, cfg, args.budget, log=lambda s: None)
        print(f"{name}: {r['params']:,} params, {r['steps']} steps, {r['tokens_seen']:,} tokens in {r['train_seconds']} s: "
              f"val loss {r['val_loss']:.4f} nats/char ({r['val_bpc']:.3f} bpc)", flush=True)
        r["command"] = command()
        if not rec:
            r["config"]["position"] = args.position
        key, n = name, 1
        while key in results and results[key].get("command") != r["command"]:  # keep earlier attempts
            n += 1
            key = f"{name}#{n}"
        results[key] = r
        save_result("shakespeare", {"runs": results})
    return results


# --- Penn Treebank ---------------------------------------------------------------------------------

PTB_MODELS = {  # bench name: (registry name, field overrides)
    "lstm": ("lstm_lm_small", dict(embed_dim=200, hidden_dim=200, num_layers=2)),
    "gru": ("gru_lm_small", dict(embed_dim=200, hidden_dim=200, num_layers=2)),
    "transformer": ("transformer_lm_char", dict(d_model=200, num_layers=2, num_heads=4, position="learned")),
}


def ptb(args) -> dict:
    from attnlab import runs
    from attnlab.tasks import lm
    from attnlab.train.config import TrainConfig

    d = data_root() / "ptb"
    results = {}
    old = RESULTS / "lm-ptb.json"
    if old.exists():
        results = json.loads(old.read_text()).get("runs", {})
    for name in args.models:
        model, shape = PTB_MODELS[name]
        rec = name != "transformer"
        dc = lm.LMDataConfig(train=str(d / "ptb.train.txt.gz"), valid=str(d / "ptb.valid.txt.gz"),
                             test=str(d / "ptb.test.txt.gz"), tokenizer="word", window=args.bptt if rec else args.window,
                             eval_batch_size=10)
        model_args = {**shape, "dropout": args.dropout, "tie_weights": args.tie}
        cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch, lr=args.lr, min_lr=args.lr / 20, warmup_steps=100,
                          weight_decay=args.weight_decay, clip_grad=args.clip, seed=0, log_every=100,
                          optimizer=args.optimizer, threads=args.threads)
        run_dir = Path(args.runs) / f"bench-ptb-{name}"
        print(f"--- {name}: {model} {model_args}", flush=True)
        load_at_start, started = round(os.getloadavg()[0], 1), time.strftime("%Y-%m-%d %H:%M")
        t = time.perf_counter()
        s = runs.train(lm.SPEC, dc, cfg, run_dir, model=model, model_args=model_args, overwrite=True,
                       log=lambda m: print(m, flush=True), progress=False)
        seconds = time.perf_counter() - t
        ev = {}
        for which in ("last", "best"):
            run = runs.open(run_dir, which)
            same = which == "best" and run.record["path"] == ev["last"]["path"]
            ev[which] = ev["last"] if same else {"path": run.record["path"], **runs.evaluate(
                run, lm.LMEvalConfig(), run_dir / "eval" / which, progress=False)}
        results[name] = {"model": name, "params": s["parameters"], "epochs": args.epochs,
                         "train_seconds": round(s["train_time"], 1), "date": started, "threads": torch.get_num_threads(),
                         "load_avg_at_start": load_at_start,
                         "wall_seconds": round(seconds, 1), "valid_ppl": ev["last"]["valid"]["ppl"],
                         "test_ppl": ev["last"]["test"]["ppl"], "best_acc_test_ppl": ev["best"]["test"]["ppl"],
                         "command": command(),
                         "config": {"registry": model, **shape, "dropout": args.dropout, "tie_weights": args.tie,
                                    ("bptt" if rec else "window"): dc.window,
                                    "batch": args.batch, "lr": args.lr,
                                    "optimizer": f"{dict(adamw='AdamW', sgd='SGD')[args.optimizer]}, warm-up + cosine",
                                    "weight_decay": args.weight_decay, "clip": args.clip}}
        print(f"{name}: test perplexity {results[name]['test_ppl']:.1f} (valid {results[name]['valid_ppl']:.1f}) "
              f"after {seconds:.0f} s", flush=True)
        save_result("ptb", {"runs": results})
    return results


# --- the BENCHMARKS.md section ---------------------------------------------------------------------

def _load(name):
    p = RESULTS / f"lm-{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def report(args=None) -> str:
    out = ["## Language models", "",
           "Written by `bench/lm.py` (`python bench/lm.py report` rebuilds it from `bench/results/lm-*.json`). "
           "CPU only; the machine was shared with other jobs while these ran (load average at start shown), "
           "so times are pessimistic and noisy.", ""]
    tp, sh0, pt0 = _load("throughput"), _load("shakespeare"), _load("ptb")
    status = []
    if sh0:
        best = min((r for r in sh0["runs"].values() if r["model"] == "transformer"), key=lambda r: r["val_loss"], default=None)
        if best:
            n = sum(r["model"] == "transformer" for r in sh0["runs"].values())
            status.append(f"Tiny Shakespeare, Transformer ≤ 1.80 nats/char in 3 minutes: best {best['val_loss']:.3f} "
                          f"({'met' if best['val_loss'] <= 1.80 else 'not met'}; best of {n} configurations tried, all listed)")
    if pt0 and "lstm" in pt0["runs"]:
        r = pt0["runs"]["lstm"]
        status.append(f"Penn Treebank, LSTM test perplexity ≤ 115: {r['test_ppl']:.1f} after {r['epochs']} epoch(s) "
                      f"({'met' if r['test_ppl'] <= 115 else 'not met'})")
    if tp:
        status.append(f"training throughput ratio ≥ 1.0: {tp['train']['ratio']:.3f} "
                      f"({'met' if tp['train']['ratio'] >= 1.0 else 'not met'})")
        g512 = [g for g in tp["generate"] if g["new_tokens"] == 512]
        if g512:
            status.append(f"KV-cache speed-up ≥ 5× at 512 new tokens: {g512[0]['speedup']:.1f}× "
                          f"({'met' if g512[0]['speedup'] >= 5 else 'not met'})")
    if status:
        out += ["Targets: " + "; ".join(status) + ".", ""]
    if tp:
        t = tp["train"]
        out += ["### Throughput", "", f"Command: `{tp['command']}` ({tp['date']}, {tp['threads']} thread(s), "
                f"load average {tp['load_avg_at_start']}).", "",
                f"Training, {t['config']}, {t['params']:,} parameters, median of {t['rounds']} interleaved rounds:", "",
                "| implementation | tokens/s |", "| --- | ---: |",
                f"| attnlab `TransformerLM` (EncoderLayer, pre-LN, causal) | {t['ours_tok_s']:,.0f} |",
                f"| plain reference in the script (`F.scaled_dot_product_attention(is_causal=True)`) | {t['ref_tok_s']:,.0f} |",
                f"| **ratio** (target ≥ 1.0) | **{t['ratio']:.3f}** |", "",
                f"Generation, {tp['generate_config']}:", "",
                "| new tokens | with KV cache (tok/s) | without (tok/s) | speed-up |", "| ---: | ---: | ---: | ---: |"]
        out += [f"| {g['new_tokens']} | {g['cached_tok_s']:,.0f} | {g['uncached_tok_s']:,.0f} | {g['speedup']:.1f}× |"
                for g in tp["generate"]]
        out += ["", "Cached and uncached greedy outputs are checked equal token for token in the same run.", ""]
    sh = _load("shakespeare")
    if sh:
        out += ["### Tiny Shakespeare, characters, fixed training-time budget", "",
                f"Each row's command is given with its configuration (last run {sh['date']}, {sh['threads']} thread: under "
                "this machine's load two threads ran about four times slower than one). Models matched at about 0.8M "
                "parameters. "
                "Split: first 90 % of the characters for training, last 10 % for validation. Validation loss over the "
                "whole validation text (Transformer: non-overlapping windows; recurrent: state carried). "
                "Learning rate: warm-up, then cosine over the elapsed fraction of the budget. The machine's load varied "
                "between rows (about 8–10 for the recurrent rows and the first two Transformer rows, about 4–8 for the "
                "last two), so compare the steps and tokens seen as well as the loss. "
                "Target: Transformer ≤ 1.80 nats/char.", "",
                "| model | config | parameters | steps | tokens seen | train s | val loss (nats/char) | bits/char |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in sh["runs"].values():
            cfg = ", ".join(f"{k}={v}" for k, v in r["config"].items() if k != "model")
            cfg += f", window {r['window']}, batch {r['batch_size']}, lr {r['lr']}"
            if r.get("command"):
                cfg += f": `{r['command']}`"
            out.append(f"| {r['model']} | {cfg} | "
                       f"{r['params']:,} | {r['steps']:,} | {r['tokens_seen']:,} | {r['train_seconds']} | "
                       f"{r['val_loss']:.3f} | {r['val_bpc']:.3f} |")
        out.append("")
    pt = _load("ptb")
    if pt:
        out += ["### Penn Treebank, words", "",
                "Each row's command is given with its configuration, and when it ran. Vocabulary 10,000 from the "
                "training file; perplexity of the last checkpoint on the whole validation and test files (recurrent "
                "state carried across windows). Rows of a single epoch were cut short for lack of time in session 1 "
                "(under a load average of 8–10): they show where training stood, not what the model reaches. The 8-epoch "
                "LSTM run (session 2) shared the machine with a Multi30k training job, one thread each. "
                "Target: LSTM ≤ 115.", "",
                "| model | config | parameters | epochs | train time | valid ppl | test ppl |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in pt["runs"].values():
            c = r["config"]
            cfg = ", ".join(f"{k}={v}" for k, v in c.items() if k != "model")
            if r.get("command"):
                cfg += f": `{r['command']}`"
            if r.get("date"):
                cfg += f" ({r['date']}, {r['threads']} thread(s), load average {r['load_avg_at_start']} at the start)"
            out.append(f"| {r['model']} | {cfg} | {r['params']:,} | {r['epochs']} | {r['train_seconds'] / 60:.1f} min | "
                       f"{r['valid_ppl']:.1f} | {r['test_ppl']:.1f} |")
        out.append("")
    out += ["### Copy task: accuracy against lag", "",
            "The copy task is the experiment `attnlab experiment rnn-forgetting`, trained through the one engine; its "
            "full-budget results (accuracy against lag, gradient against distance) are in EXPERIMENTS.md.", ""]
    if (RESULTS / "lm-gradients.png").exists():
        out += ["### Gradient norm against distance from the loss", "",
                "Small runs on the first 250,000 characters of Tiny Shakespeare (`head -c 250000 input.txt > ts250k.txt`), "
                "then the pictures:", "", "```",
                "for m in rnn gru lstm transformer; do",
                "  attnlab train lm --text ts250k.txt --model $m --hidden-dim 256 --num-layers 2 --d-model 128 --window 64 \\",
                "    --epochs 1 --batch-size 32 --steps-per-epoch 120 --lr 3e-3 --run-dir runs/$m",
                "done",
                "attnlab viz gradients runs/rnn runs/gru runs/lstm runs/transformer --length 64 --windows 32 "
                "-o bench/results/lm-gradients.png",
                "attnlab viz gradients runs/rnn runs/gru runs/lstm runs/transformer --length 64 --windows 32 --wrt hidden "
                "-o bench/results/lm-gradients-hidden.png", "```", "",
                "(one epoch of 110 windows for the recurrent models, 120 steps for the Transformer.)", "",
                "The model options of `attnlab train lm` have changed since: models are registry names with "
                "`--model-arg` fields, so the same runs are now:", "", "```",
                "for m in rnn gru lstm; do",
                "  attnlab train lm --text ts250k.txt --model ${m}_lm_small --model-arg embed_dim=256 "
                "--model-arg hidden_dim=256 \\",
                "    --model-arg tie_weights=true --window 64 --epochs 1 --batch-size 32 --steps-per-epoch 120 --lr 3e-3 "
                "--run-dir runs/$m",
                "done",
                "attnlab train lm --text ts250k.txt --model transformer_lm_char --model-arg num_layers=2 "
                "--model-arg position=learned \\",
                "  --window 64 --epochs 1 --batch-size 32 --steps-per-epoch 120 --lr 3e-3 --run-dir runs/transformer",
                "```", "",
                "![gradients w.r.t. the embeddings](bench/results/lm-gradients.png)", ""]
        if (RESULTS / "lm-gradients-hidden.png").exists():
            out += ["![gradients w.r.t. the hidden states](bench/results/lm-gradients-hidden.png)", ""]
    text = "\n".join(out)
    if WRITE:
        write_section("lm", text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--no-write", action="store_true", help="print the results only; leave bench/results and "
                                                           "BENCHMARKS.md alone (for checks with tiny settings)")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--d-model", type=int, default=128)
    t.add_argument("--layers", type=int, default=4)
    t.add_argument("--window", type=int, default=128)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--steps", type=int, default=5)
    t.add_argument("--rounds", type=int, default=5)
    t.add_argument("--gen-rounds", type=int, default=3)
    s = sub.add_parser("shakespeare")
    s.add_argument("--budget", type=float, default=180.0, help="training seconds per model")
    s.add_argument("--models", nargs="+", default=list(SHAKESPEARE_MODELS), choices=list(SHAKESPEARE_MODELS))
    s.add_argument("--window", type=int, default=64, help="Transformer context")
    s.add_argument("--batch", type=int, default=32)
    s.add_argument("--lr", type=float, default=2e-3)
    s.add_argument("--position", default="learned", help="Transformer position encoding")
    s.add_argument("--bptt", type=int, default=64, help="recurrent window")
    s.add_argument("--rnn-batch", type=int, default=32)
    s.add_argument("--rnn-lr", type=float, default=3e-3)
    q = sub.add_parser("ptb")
    q.add_argument("--models", nargs="+", default=["lstm"], choices=list(PTB_MODELS))
    q.add_argument("--epochs", type=int, default=6)
    q.add_argument("--bptt", type=int, default=35)
    q.add_argument("--window", type=int, default=64, help="Transformer context")
    q.add_argument("--batch", type=int, default=20)
    q.add_argument("--lr", type=float, default=2e-3)
    q.add_argument("--dropout", type=float, default=0.3)
    q.add_argument("--tie", action=argparse.BooleanOptionalAction, default=True)
    q.add_argument("--weight-decay", type=float, default=0.0)
    q.add_argument("--clip", type=float, default=0.5)
    q.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"))
    q.add_argument("--runs", default="runs", help="where the run directories bench-ptb-<model> go (default: runs)")
    sub.add_parser("report")
    args = p.parse_args(argv)
    global WRITE
    WRITE = not args.no_write
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"throughput": throughput, "shakespeare": shakespeare, "ptb": ptb, "report": report}[args.cmd](args)
    if args.cmd != "report" and WRITE:
        report()
    if args.cmd == "report" and not WRITE:
        print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
