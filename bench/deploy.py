"""The deployment path against the anchors a user would pick instead: int8 weights, exported
graphs, ONNX Runtime. Results go to the Deployment section of BENCHMARKS.md.

    python bench/deploy.py vit                 # ViT-B/16 batch 1: int8 / ONNX Runtime / compiled vs timm fp32 eager; file sizes
    python bench/deploy.py vit --run RUN --dataset mnist   # + int8 vs fp32 top-1 agreement on a trained run's test split
    python bench/deploy.py small               # ViT-Ti/16 and S/16 batch 1: the leanest fp32 paths vs timm eager
    python bench/deploy.py translate           # greedy decoding: int8 decoder vs HF Marian fp32, batch 1 and 32
    python bench/deploy.py bleu --run RUN      # greedy BLEU of a trained translation run: fp32, each int8 backend, CTranslate2
    python bench/deploy.py floor               # batch-32 translation: time inside the Linear layers vs the rest
    python bench/deploy.py lm                  # LM generation at batch 1: int8 vs fp32, greedy token agreement
    python bench/deploy.py report              # rewrite the section from the stored results
    python bench/deploy.py notes "one" "two"   # free-text notes under the tables (replaces the old ones)

Timing: every variant runs once per round, in turn (interleaved), in one process, with
``--threads`` torch/ONNX Runtime threads (default 1); a variant's time is its median over the
rounds and a speed-up is the median of the per-round ratios, so load changes hit all variants
alike. The load average is recorded at the start and the end of each part: run alone on a quiet
machine for the final figures. Each part keeps its numbers in a JSON comment inside the section,
so running one part rewrites the section with the others' last results.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import BENCHMARKS, command, machine, write_section  # noqa: E402
from attnlab.checkpoints import save_checkpoint  # noqa: E402
from attnlab.export import compile_linears, export_model, load_graph, quantize_int8  # noqa: E402
from attnlab.models import create_model  # noqa: E402

SECTION = "deploy"


# --- shared ----------------------------------------------------------------------------------------

def load_results() -> dict:
    if not BENCHMARKS.exists():
        return {}
    m = re.search(r"<!-- section:deploy -->.*?<!-- data: (.*?) -->", BENCHMARKS.read_text(), re.S)
    return json.loads(m.group(1)) if m else {}


def save(part: str, result: dict) -> None:
    """Store ``result`` as ``part`` and rewrite the section. Parts measured before figures named
    their processor (no ``cpu`` key) are dropped: a table must say what it ran on."""
    results = {k: v for k, v in load_results().items() if k == "notes" or (isinstance(v, dict) and "cpu" in v)}
    results[part] = result
    write_section(SECTION, render(results) + f"\n<!-- data: {json.dumps(results)} -->\n")


def context(args) -> dict:
    """What every part records: the command, the machine (processor included), the date, the load,
    and the int8 backend ``--int8`` picks on this machine (measured: attnlab.export.int8)."""
    from attnlab.cpu import cpu_info
    from attnlab.export.int8 import choose_backend

    choice = choose_backend(refresh=True)
    return {"command": command(), "machine": machine(), "cpu": cpu_info(), "date": time.strftime("%Y-%m-%d %H:%M"),
            "load_start": round(os.getloadavg()[0], 2), "int8_choice": choice.describe(), "int8_backend": choice.backend}


def interleaved(fns: dict, rounds: int, base: str) -> dict:
    """Median seconds per call of each function and median per-round speed-up over ``base``."""
    times = {k: [] for k in fns}
    with torch.inference_mode():
        for f in fns.values():  # warm-up (compilation, ONNX Runtime's first run)
            f()
            f()
        for _ in range(rounds):
            for k, f in fns.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    return {k: {"seconds": statistics.median(t),
                "speedup": statistics.median(b / x for b, x in zip(times[base], t))} for k, t in times.items()}


def file_mib(paths) -> float:
    """Size of exported files, with the .data weights file an ONNX file over 1 GiB has beside it."""
    files = [f for p in paths for f in (Path(p), Path(f"{p}.data")) if f.exists()]
    return sum(f.stat().st_size for f in files) / 2**20


def compiled(model):
    """torch.compile (inductor) of the whole model with freezing: weights become constants, Linear
    layers get pre-packed oneDNN weights and fused epilogues. Freezing is switched on only while
    this model runs (and so compiles): ``options={"freezing": True}`` does not freeze (measured:
    ViT-Ti 1.11× timm instead of 1.27×), and setting it globally would also freeze the
    compiled-Linear rows, which are meant as users get them."""
    import torch._inductor.config as inductor_config

    fast = torch.compile(model, dynamic=False)

    def run(*args):
        with inductor_config.patch(freezing=True):
            return fast(*args)
    return run


BACKENDS = ("torchao", "fbgemm")


def int8_copies(model) -> dict:
    """``{backend: int8 copy of model}`` for each of quantize_int8's backends (``--int8`` runs the
    one measured fastest on the machine: ``context()['int8_backend']``)."""
    return {b: quantize_int8(copy.deepcopy(model), backend=b) for b in BACKENDS}


def timm_twin(ours, name: str, tmp: Path):
    """timm's model of the same name carrying our weights."""
    import timm
    from safetensors.torch import load_file

    t = timm.create_model(name, pretrained=False).eval()
    t.load_state_dict(load_file(save_checkpoint(ours, tmp / "timm.safetensors", format="timm")))
    return t


# --- ViT-B/16 --------------------------------------------------------------------------------------

def vit(args) -> dict:
    ctx = context(args)
    torch.manual_seed(0)
    ours = create_model(args.model).eval()
    x = torch.randn(1, 3, ours.cfg.img_size, ours.cfg.img_size)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = timm_twin(ours, args.model, tmp)
        qs = int8_copies(ours)
        sizes, onnx = {}, {}
        for fmt in ("pt2", "onnx"):
            for int8 in (False, True):
                paths = export_model(ours, tmp / f"m{'8' if int8 else ''}.{fmt}", fmt, int8=int8)
                sizes[f"{fmt}_{'int8' if int8 else 'fp32'}_mib"] = file_mib(paths)
                if fmt == "onnx":
                    onnx["int8" if int8 else "fp32"] = load_graph(paths[0], threads=args.threads)
        fns = {"timm fp32 eager": lambda: t(x), "attnlab fp32 eager": lambda: ours(x)}
        for b, q in qs.items():
            fns[f"attnlab int8 eager, {b}"] = lambda q=q: q(x)
        if args.compile:
            qc = compiled(qs["torchao"])
            fns["attnlab int8 torchao + torch.compile"] = lambda: qc(x)
            ql = compile_linears(quantize_int8(copy.deepcopy(ours), backend="torchao"))
            fns["attnlab int8 torchao, compiled Linear layers"] = lambda: ql(x)
        fns["ONNX Runtime fp32"] = lambda: onnx["fp32"](x)
        fns["ONNX Runtime int8"] = lambda: onnx["int8"](x)
        with torch.inference_mode():
            ref = t(x)
            outs = {k: f() for k, f in fns.items()}
        diffs = {k: (o[0] if isinstance(o, tuple) else o).sub(ref).abs().max().item() for k, o in outs.items()}
        res = interleaved(fns, args.rounds, "timm fp32 eager")
    out = {**ctx, "model": args.model, "batch": 1, "rounds": args.rounds, "rows": res, "max_abs_diff_vs_timm": diffs,
           "sizes": sizes, "load_end": round(os.getloadavg()[0], 2)}
    if args.run:
        out["agreement"] = agreement(args.run, args.dataset, args.threads)
    return out


def agreement(run_dir: str, dataset: str, threads: int) -> dict:
    """Top-1 of the fp32 and int8 models (each backend, and ONNX Runtime int8) of a trained run on
    its dataset's test split."""
    from attnlab import runs
    from attnlab.data.images import load

    run = runs.open(run_dir)
    fp32 = run.model
    qs = int8_copies(fp32)
    test = load(dataset, progress=False).test
    norm = run.extras["normalize"]
    preds = {"fp32": [], "onnx_int8": [], **{b: [] for b in qs}}
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        ort_int8 = load_graph(export_model(fp32, Path(tmp) / "q.onnx", int8=True)[0], threads=threads)
        for i in range(0, len(test), 500):
            xb = norm(test.images[i:i + 500])
            preds["fp32"].append(fp32(xb).argmax(-1))
            preds["onnx_int8"].append(ort_int8(xb)[0].argmax(-1))
            for b, q in qs.items():
                preds[b].append(q(xb).argmax(-1))
    p = {k: torch.cat(v) for k, v in preds.items()}
    acc = lambda k: (p[k] == test.labels).float().mean().item()  # noqa: E731
    return {"run": run_dir, "model": run.name, "dataset": dataset, "images": len(test), "acc_fp32": acc("fp32"),
            "paths": {k: {"agreement": (p["fp32"] == p[k]).float().mean().item(), "accuracy": acc(k)}
                      for k in p if k != "fp32"}}


# --- ViT-Ti/16, S/16 -------------------------------------------------------------------------------

def small(args) -> dict:
    ctx = context(args)
    rows = {name: small_one(name, args) for name in args.models}
    return {**ctx, "batch": 1, "rounds": args.rounds, "models": rows, "load_end": round(os.getloadavg()[0], 2)}


def small_one(name: str, args) -> dict:
    torch.manual_seed(0)
    ours = create_model(name).eval()
    x = torch.randn(1, 3, 224, 224)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = timm_twin(ours, name, tmp)
        [onnx_path] = export_model(ours, tmp / "m.onnx")
        ort_run = load_graph(onnx_path, threads=args.threads)
        [pt2_path] = export_model(ours, tmp / "m.pt2")
        program = load_graph(pt2_path)
        fns = {"timm fp32 eager": lambda: t(x), "attnlab fp32 eager": lambda: ours(x)}
        if args.compile:
            c = compiled(ours)
            fns["attnlab torch.compile (freezing)"] = lambda: c(x)
        fns["attnlab .pt2 program"] = lambda: program(x)
        fns["ONNX Runtime fp32"] = lambda: ort_run(x)
        with torch.inference_mode():
            ref = t(x)
            diffs = {k: (lambda o: o[0] if isinstance(o, tuple) else o)(f()).sub(ref).abs().max().item() for k, f in fns.items()}
        res = {"rows": interleaved(fns, args.rounds, "timm fp32 eager"), "max_abs_diff_vs_timm": diffs}
    torch._dynamo.reset()
    return res


# --- translation -----------------------------------------------------------------------------------

def translate(args) -> dict:
    from attnlab.decode.search import SearchConfig, greedy_search
    from attnlab.export import greedy_decode, self_cache_zeros
    from attnlab.export.ctranslate2 import ct2_greedy
    from translate import NEW_TOKENS, SRC_LEN, V, build_marian, build_ours

    ctx = context(args)
    ours, marian = build_ours(), build_marian()
    qs = int8_copies(ours)
    qc = compile_linears(quantize_int8(copy.deepcopy(ours), backend="torchao")) if args.compile else None
    scfg = SearchConfig(eos=None, max_len=NEW_TOKENS, max_len_a=0, max_len_b=NEW_TOKENS)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        pieces = {k: [load_graph(p, threads=args.threads) for p in export_model(ours, Path(tmp) / f"{k}.onnx", int8=k == "int8")]
                  for k in ("fp32", "int8")}
        ct2 = ct2_translators(ours, Path(tmp), args.threads)
        for b in args.batches:
            src = torch.randint(4, V, (b, SRC_LEN), generator=torch.Generator().manual_seed(b))

            def hf(src=src):
                return marian.generate(input_ids=src, attention_mask=torch.ones_like(src), max_new_tokens=NEW_TOKENS,
                                       min_new_tokens=NEW_TOKENS, num_beams=1, do_sample=False, use_cache=True)

            fns = {"HF Marian fp32 (cache)": hf, "attnlab fp32 (cache)": lambda src=src: greedy_search(ours, src, scfg)}
            for bk, q in qs.items():
                fns[f"attnlab int8 {bk} (cache)"] = lambda src=src, q=q: greedy_search(q, src, scfg)
            if qc is not None:
                fns["attnlab int8 torchao, compiled Linear layers (cache)"] = lambda src=src: greedy_search(qc, src, scfg)
            for k, (enc, step) in pieces.items():
                fns[f"ONNX Runtime {k} pieces"] = lambda src=src, enc=enc, step=step, b=b: greedy_decode(
                    enc, step, src, self_cache_zeros(ours, b), scfg)
            for k, tr in ct2.items():
                fns[f"CTranslate2 {k}"] = lambda src=src, tr=tr: ct2_greedy(tr, src, NEW_TOKENS, eos=None)
            res = interleaved(fns, args.rounds, "HF Marian fp32 (cache)")
            for r in res.values():
                r["tokens_per_s"] = b * NEW_TOKENS / r["seconds"]
            out[str(b)] = res
    result = {**ctx, "rounds": args.rounds, "batches": out, "load_end": round(os.getloadavg()[0], 2),
              "model": "random weights, d_model 512, 6+6 layers, FFN 2048, vocabulary 8000, source length 20, "
                       f"{NEW_TOKENS} new tokens"}
    if args.run:
        result["bleu"], result["bleu_run"] = bleu(args.run, args.src, args.ref), args.run
    return result


def ct2_translators(model, tmp: Path, threads: int) -> dict:
    """CTranslate2 translators (fp32 and int8) built from ``model``'s weights
    (:mod:`attnlab.export.ctranslate2`), ``threads`` threads each."""
    from attnlab.export.ctranslate2 import load_translator, to_ctranslate2

    return {k: load_translator(to_ctranslate2(model, tmp / f"ct2-{k}", None if k == "fp32" else "int8"),
                               intra_threads=threads, inter_threads=1) for k in ("fp32", "int8")}


def linear_share(decode, model, rounds: int) -> dict:
    """Median seconds of ``decode()`` and of the part spent inside the model's nn.Linear modules
    (timed by forward hooks), over ``rounds`` calls."""
    from torch import nn

    spent = [0.0]
    started: list[float] = []
    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            hooks.append(m.register_forward_pre_hook(lambda *_: started.append(time.perf_counter())))
            hooks.append(m.register_forward_hook(lambda *_: spent.__setitem__(0, spent[0] + time.perf_counter() - started.pop())))
    total, inside = [], []
    with torch.inference_mode():
        decode()
        for _ in range(rounds):
            spent[0] = 0.0
            t0 = time.perf_counter()
            decode()
            total.append(time.perf_counter() - t0)
            inside.append(spent[0])
    for h in hooks:
        h.remove()
    t, lin = statistics.median(total), statistics.median(inside)
    return {"seconds": t, "linear_seconds": lin, "other_seconds": t - lin}


def floor(args) -> dict:
    """Where batch-32 greedy decoding spends its time: inside the nn.Linear modules (what int8
    makes cheaper) and everything else (attention over the cache, LayerNorm, softmax, the search
    loop, the cross-attention query projection that runs through F.linear), for HF Marian fp32
    and attnlab fp32 / int8 with the translate part's model. The bound: HF's time over attnlab's
    time outside the Linear modules, the speed-up if those cost nothing."""
    from attnlab.decode.search import SearchConfig, greedy_search
    from translate import NEW_TOKENS, SRC_LEN, V, build_marian, build_ours

    ctx = context(args)
    ours, marian = build_ours(), build_marian()
    q = quantize_int8(copy.deepcopy(ours), backend="torchao")  # its layers are nn.Linear, which the hooks time
    scfg = SearchConfig(eos=None, max_len=NEW_TOKENS, max_len_a=0, max_len_b=NEW_TOKENS)
    src = torch.randint(4, V, (args.batch, SRC_LEN), generator=torch.Generator().manual_seed(args.batch))

    def hf():
        return marian.generate(input_ids=src, attention_mask=torch.ones_like(src), max_new_tokens=NEW_TOKENS,
                               min_new_tokens=NEW_TOKENS, num_beams=1, do_sample=False, use_cache=True)

    rows = {"HF Marian fp32 (cache)": linear_share(hf, marian, args.rounds),
            "attnlab fp32 (cache)": linear_share(lambda: greedy_search(ours, src, scfg), ours, args.rounds),
            "attnlab int8 torchao (cache)": linear_share(lambda: greedy_search(q, src, scfg), q, args.rounds)}
    if args.compile:
        qc = compile_linears(quantize_int8(copy.deepcopy(ours), backend="torchao"))
        rows["attnlab int8 torchao, compiled Linear layers (cache)"] = linear_share(lambda: greedy_search(qc, src, scfg), qc,
                                                                            args.rounds)
    hf_s = rows["HF Marian fp32 (cache)"]["seconds"]
    for r in rows.values():
        r["speedup"] = hf_s / r["seconds"]
    return {**ctx, "rounds": args.rounds, "batch": args.batch, "rows": rows, "load_end": round(os.getloadavg()[0], 2),
            "bound": hf_s / rows["attnlab int8 torchao (cache)"]["other_seconds"]}


def bleu(run_dir: str, src: str, ref: str) -> dict:
    """Greedy BLEU of a trained translation run: fp32, int8 with each backend (``attnlab eval
    --int8``, the backend forced by ATTNLAB_INT8_BACKEND), torchao int8 with compiled Linear
    layers (``--int8 --compile``), and CTranslate2 fp32 / int8 built from the run's weights."""
    import subprocess

    out = {}
    for tag, extra, backend in (("fp32", [], None), ("int8_fbgemm", ["--int8"], "fbgemm"),
                                ("int8_torchao", ["--int8"], "torchao"),
                                ("int8_torchao_compiled", ["--int8", "--compile"], "torchao")):
        env = {**os.environ, **({"ATTNLAB_INT8_BACKEND": backend} if backend else {})}
        cmd = [sys.executable, "-m", "attnlab", "eval", run_dir, "--src", src, "--ref", ref, "--beam", "1", "--json",
               "--out", str(Path(tempfile.mkdtemp()) / tag), *extra]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        out[tag] = json.loads(res.stdout)["bleu"]
    for quantization in (None, "int8"):
        out[f"ct2_{quantization or 'fp32'}"] = ct2_bleu(run_dir, src, ref, quantization)
    return out


def ct2_bleu(run_dir: str, src: str, ref: str, quantization: str | None, batch: int = 64) -> float:
    """Greedy BLEU of the run's model exported to CTranslate2: sources encoded and decoded as
    ``attnlab eval`` does (sorted by length, batches of ``batch``), each batch decoding at most
    1.5 x its longest source + 10 tokens (attnlab's limit per sentence)."""
    from attnlab import runs
    from attnlab.data.parallel import pad_to, read_lines
    from attnlab.export.ctranslate2 import ct2_greedy, load_translator, to_ctranslate2
    from attnlab.tasks.translate import score

    run = runs.open(run_dir)
    src_tok, tgt_tok = run.extras["src_tokenizer"], run.extras["tgt_tokenizer"]
    lines, refs = read_lines(src), read_lines(ref)
    with tempfile.TemporaryDirectory() as tmp:
        tr = load_translator(to_ctranslate2(run.model, Path(tmp) / "ct2", quantization, bos=tgt_tok.bos_id,
                                            eos=tgt_tok.eos_id, unk=tgt_tok.unk_id), intra_threads=1)
        todo = sorted(((i, src_tok.encode(s.strip()) + [src_tok.eos_id]) for i, s in enumerate(lines)), key=lambda x: len(x[1]))
        hyps = [""] * len(lines)
        for b in range(0, len(todo), batch):
            chunk = todo[b:b + batch]
            longest = max(len(ids) for _, ids in chunk)
            out = ct2_greedy(tr, pad_to([ids for _, ids in chunk], src_tok.pad_id), int(1.5 * longest + 10),
                             bos=tgt_tok.bos_id, eos=tgt_tok.eos_id, pad=src_tok.pad_id)
            for (i, _), h in zip(chunk, out):
                hyps[i] = tgt_tok.decode(h).strip()
    return score(hyps, refs)["bleu"]


# --- language model --------------------------------------------------------------------------------

def lm(args) -> dict:
    from attnlab.export import greedy_generate, lm_cache_zeros
    from attnlab.models.lm import TransformerLMConfig, build_lm

    ctx = context(args)
    if args.run:
        from attnlab import runs

        model, what = runs.open(args.run, "last").model, args.run
    else:
        torch.manual_seed(0)
        cfg = TransformerLMConfig(vocab_size=args.vocab, d_model=args.d_model, num_layers=args.layers,
                                  num_heads=args.d_model // 64, max_len=1024)
        model, what = build_lm(cfg).eval(), f"random weights: {cfg}"
    qs = int8_copies(model)
    qc = compile_linears(quantize_int8(copy.deepcopy(model), backend="torchao")) if args.compile else None
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, model.cfg.vocab_size, (1, 16), generator=g) for _ in range(args.prompts)]

    def eager(m, prompt):
        step = m.stepper()
        toks, new = [], prompt
        for _ in range(args.new_tokens):
            new = step.step(new).argmax(-1, keepdim=True)
            toks.append(int(new))
        return toks

    with tempfile.TemporaryDirectory() as tmp:
        steps = {k: load_graph(export_model(model, Path(tmp) / f"{k}.onnx", int8=k == "int8")[1], threads=args.threads)
                 for k in ("fp32", "int8")}

        def exported(k, prompt):
            out = greedy_generate(steps[k], prompt, args.new_tokens, lm_cache_zeros(model, 1), model.cfg.max_len)
            return out[0, prompt.shape[1]:].tolist()

        paths = {"fp32 eager (cache)": lambda p: eager(model, p),
                 **{f"int8 eager, {b}": (lambda p, q=q: eager(q, p)) for b, q in qs.items()},
                 "ONNX Runtime fp32 step graph": lambda p: exported("fp32", p),
                 "ONNX Runtime int8 step graph": lambda p: exported("int8", p)}
        if qc is not None:
            paths["int8 torchao, compiled Linear layers"] = lambda p: eager(qc, p)
        with torch.inference_mode():
            toks = {k: [f(p) for p in prompts] for k, f in paths.items()}  # greedy agreement over all prompts
        res = interleaved({k: (lambda f=f: f(prompts[0])) for k, f in paths.items()}, args.rounds, "fp32 eager (cache)")
    ref = toks["fp32 eager (cache)"]
    total = args.new_tokens * len(prompts)
    for k, r in res.items():
        r["tokens_per_s"] = args.new_tokens / r["seconds"]
        r["same_tokens"] = sum(x == y for a, b in zip(ref, toks[k]) for x, y in zip(a, b)) / total
        r["identical_prefix"] = statistics.median(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
                                                  for a, b in zip(ref, toks[k]))
    return {**ctx, "model": what, "rounds": args.rounds, "new_tokens": args.new_tokens, "prompts": len(prompts), "rows": res,
            "load_end": round(os.getloadavg()[0], 2)}


# --- report ----------------------------------------------------------------------------------------

def _table(rows: dict, extra: dict | None = None, unit: str = "ms") -> list[str]:
    head = "| path | " + ("ms per call" if unit == "ms" else "tokens/s") + " | × baseline |" + (" max abs Δ |" if extra else "")
    lines = [head, "|---|---:|---:|" + ("---:|" if extra else "")]
    for k, r in rows.items():
        v = f"{1e3 * r['seconds']:.1f}" if unit == "ms" else f"{r['tokens_per_s']:.0f}"
        lines.append(f"| {k} | {v} | {r['speedup']:.2f} |" + (f" {extra[k]:.1e} |" if extra else ""))
    return lines


def _ctx(r: dict) -> str:
    choice = f" `--int8` here: {r['int8_choice']}." if "int8_choice" in r else ""
    return (f"`{r['command']}` — {r['machine']}, {r['date']}, load average {r['load_start']} at the start, "
            f"{r['load_end']} at the end.{choice}")


def render(results: dict) -> str:
    out = ["## Deployment: int8 weights, exported graphs, ONNX Runtime (CPU)", "",
           "Written by `bench/deploy.py` (see its docstring). int8 eager: dynamic int8 Linear layers "
           "(`attnlab.export.quantize_int8`) with each backend, torchao and fbgemm; `--int8` runs the one measured "
           "fastest on the machine (named under each table). ONNX Runtime int8: its dynamic quantization of the "
           "MatMul/Gemm weights (`attnlab export --int8`). Speed-ups are medians of per-round ratios against the first "
           "row, in one process. Each table names its processor: int8 speed depends on it (VNNI or not).", ""]
    if "vit" in results:
        r = results["vit"]
        out += [f"### {r['model']}, batch 1", "", _ctx(r), ""] + _table(r["rows"], r["max_abs_diff_vs_timm"]) + [""]
        s = r["sizes"]
        out.append(f"File sizes: .pt2 fp32 {s['pt2_fp32_mib']:.0f} MiB, int8 {s['pt2_int8_mib']:.0f} MiB "
                   f"({s['pt2_int8_mib'] / s['pt2_fp32_mib']:.0%}); ONNX fp32 {s['onnx_fp32_mib']:.0f} MiB, int8 "
                   f"{s['onnx_int8_mib']:.0f} MiB ({s['onnx_int8_mib'] / s['onnx_fp32_mib']:.0%}).")
        if "paths" in r.get("agreement", {}):
            a = r["agreement"]
            paths = "; ".join(f"{k.replace('_', ' ')} agrees on {v['agreement']:.2%} (accuracy {v['accuracy']:.2%})"
                              for k, v in a["paths"].items())
            out.append(f"Quality on a trained run (`{a['run']}`, {a['model']}, {a['dataset']} test split, {a['images']} "
                       f"images), top-1 against fp32 (accuracy {a['acc_fp32']:.2%}): {paths}.")
        out.append("")
    if "small" in results:
        r = results["small"]
        out += ["### ViT-Ti/16 and S/16, batch 1, fp32: the leanest path", "", _ctx(r), ""]
        for name, m in r["models"].items():
            out += [f"{name}:", ""] + _table(m["rows"], m["max_abs_diff_vs_timm"]) + [""]
    if "translate" in results:
        r = results["translate"]
        out += ["### Translation: greedy decoding with the key/value cache", "", _ctx(r), f"Model: {r['model']}.", ""]
        for b, rows in r["batches"].items():
            out += [f"Batch {b}:", ""] + _table(rows, unit="tok") + [""]
        if "bleu" in r and "bleu_run" in r:
            out += [f"BLEU (greedy, test_2016_flickr) of the trained run `{r['bleu_run']}`: "
                    + ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in r["bleu"].items()) + ".", ""]
    if "floor" in results:
        r = results["floor"]
        out += [f"### Translation at batch {r['batch']}: where the time goes", "", _ctx(r),
                "Same model and decoding as above; time inside the nn.Linear modules measured by forward hooks (median "
                "of the rounds).", "", "| path | ms per sentence batch | × HF | inside nn.Linear | everything else |",
                "|---|---:|---:|---:|---:|"]
        for k, row in r["rows"].items():
            out.append(f"| {k} | {1e3 * row['seconds']:.0f} | {row['speedup']:.2f} | {1e3 * row['linear_seconds']:.0f} ms "
                       f"({row['linear_seconds'] / row['seconds']:.0%}) | {1e3 * row['other_seconds']:.0f} ms |")
        out += ["", f"Bound: even with Linear layers that cost nothing, attnlab's decoding would be at most "
                    f"{r['bound']:.2f}× HF Marian fp32 at this batch (HF's time over attnlab int8's time outside the "
                    "Linear modules).", ""]
    for key in ("lm", "lm_run"):
        if key not in results:
            continue
        r = results[key]
        out += [f"### Language-model generation, batch 1, greedy{' (a trained run)' if key == 'lm_run' else ''}", "", _ctx(r),
                f"Model: {r['model']}; 16-token random prompts, {r['new_tokens']} new tokens; timing on the first prompt, "
                f"agreement over {r.get('prompts', 1)} prompt(s) (identical prefix: the median number of leading tokens "
                f"equal to fp32's).", ""]
        out += ["| path | tokens/s | × baseline | same greedy token as fp32 eager | identical prefix |",
                "|---|---:|---:|---:|---:|"]
        for k, row in r["rows"].items():
            out.append(f"| {k} | {row['tokens_per_s']:.0f} | {row['speedup']:.2f} | {row['same_tokens']:.1%} | "
                       f"{row['identical_prefix']:g} |")
        out.append("")
    for note in results.get("notes", []):
        out.append(f"- {note}")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="part", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads (default: 1)")
    common.add_argument("--rounds", type=int, default=20, help="interleaved timing rounds (default: 20)")
    common.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile rows")
    common.add_argument("--no-write", action="store_true", help="print the results, leave BENCHMARKS.md alone")
    p = sub.add_parser("vit", parents=[common])
    p.add_argument("--model", default="vit_base_patch16_224")
    p.add_argument("--run", default=None, help="a trained image run for the int8 agreement (e.g. an MNIST run)")
    p.add_argument("--dataset", default="mnist", help="its dataset (default: mnist)")
    p = sub.add_parser("small", parents=[common])
    p.add_argument("--models", nargs="+", default=["vit_tiny_patch16_224", "vit_small_patch16_224"])
    p = sub.add_parser("translate", parents=[common])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--run", default=None, help="a trained translation run for BLEU fp32 vs int8")
    p.add_argument("--src", default="../shared/data/multi30k/test_2016_flickr.de.gz")
    p.add_argument("--ref", default="../shared/data/multi30k/test_2016_flickr.en.gz")
    p = sub.add_parser("lm", parents=[common])
    p.add_argument("--run", default=None, help="a trained language-model run (default: random weights)")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--prompts", type=int, default=8, help="prompts the greedy agreement is counted over (default: 8)")
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p = sub.add_parser("floor", parents=[common])
    p.add_argument("--batch", type=int, default=32)
    p = sub.add_parser("bleu", help="BLEU of a trained translation run per path, added to the translate part's results")
    p.add_argument("--run", required=True, help="a trained translation run")
    p.add_argument("--src", default="../shared/data/multi30k/test_2016_flickr.de.gz")
    p.add_argument("--ref", default="../shared/data/multi30k/test_2016_flickr.en.gz")
    sub.add_parser("report")
    sub.add_parser("notes").add_argument("notes", nargs="*")
    args = ap.parse_args(argv)
    if args.part in ("report", "notes"):
        results = load_results()
        if args.part == "notes":
            results["notes"] = args.notes
        write_section(SECTION, render(results) + f"\n<!-- data: {json.dumps(results)} -->\n")
        return 0
    if args.part == "bleu":  # quality, not speed: kept beside the translate part's timing
        results = load_results()
        results.setdefault("translate", {}).update(bleu=bleu(args.run, args.src, args.ref), bleu_run=args.run)
        write_section(SECTION, render(results) + f"\n<!-- data: {json.dumps(results)} -->\n")
        return 0
    torch.set_num_threads(args.threads)
    result = {"vit": vit, "small": small, "translate": translate, "floor": floor, "lm": lm}[args.part](args)
    if args.no_write:
        print(json.dumps(result, indent=2))
    else:
        key = "lm_run" if args.part == "lm" and args.run else args.part  # random-weight and trained LM rows both kept
        save(key, result)
        print(render({key: result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
