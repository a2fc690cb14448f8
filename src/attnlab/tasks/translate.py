"""Translation: the Transformer, the GRU + additive-attention baseline or the non-autoregressive
mask-predict model on a local parallel corpus (two aligned files or a TSV; e.g. Multi30k).

Training is teacher forcing on shifted targets with label-smoothed cross-entropy, the paper's
warm-up schedule (``--schedule inverse-sqrt``, the default here) or warm-up + cosine, and
batches built by token count with length bucketing (``--max-tokens``). Tokens: byte-level BPE
trained locally, one joint vocabulary (with shared embeddings) or one per language. Models come
from the registry (``transformer_multi30k``, ``gru_attention_multi30k``, ``mask_predict_multi30k``,
``transformer_base``...); the vocabulary sizes, the padding id and whether embeddings are shared
are set by the data.

Evaluation (``attnlab eval RUN_DIR --src F --ref F``) decodes with greedy or beam search (or
mask-predict) and scores with sacrebleu (BLEU and chrF, with their signatures);
``attnlab translate RUN_DIR`` translates standard input line by line.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.data.parallel import EncodedCorpus, ParallelCorpus, collate, encode_corpus, load_parallel, pad_to, token_batches
from attnlab.data.tokenizers import BPETokenizer, Tokenizer, load_tokenizer
from attnlab.decode.mask_predict import mask_predict
from attnlab.decode.search import SearchConfig, translate_ids
from attnlab.errors import ConfigError, DataError
from attnlab.models.capabilities import Translator, decodes_by_mask_predict
from attnlab.tasks.spec import LoadedRun, TaskSpec
from attnlab.train.config import TrainConfig, nonneg_float, nonneg_int, opt, positive_int
from attnlab.train.engine import model_device

TASK = "translate"

#: The engine defaults that differ for translation (command-line options still win).
TRAIN_DEFAULTS = {"epochs": 20, "lr": 1e-3, "schedule": "inverse-sqrt", "warmup_steps": 1000, "min_lr": 0.0,
                  "weight_decay": 0.0, "betas": (0.9, 0.98), "eps": 1e-9, "label_smoothing": 0.1, "clip_grad": 1.0,
                  "log_every": 50}


@dataclass
class TranslateDataConfig:
    """The parallel corpus and its tokens."""

    src: str | None = opt(None, "training source sentences, one per line (gzip read transparently)", metavar="FILE")
    tgt: str | None = opt(None, "training target sentences, aligned with --src", metavar="FILE")
    tsv: str | None = opt(None, "instead of --src/--tgt: one file of 'source<TAB>target' lines", metavar="FILE")
    valid_src: str | None = opt(None, "validation source sentences (default: the last 1%% of the training pairs)", metavar="FILE")
    valid_tgt: str | None = opt(None, "validation target sentences", metavar="FILE")
    valid_tsv: str | None = opt(None, "validation pairs as a TSV file", metavar="FILE")
    vocab: str = opt("joint", "one BPE vocabulary for both languages (and shared embeddings) or one per language",
                     choices=("joint", "separate"))
    bpe_vocab_size: int = opt(8000, "BPE vocabulary size (each, when separate)", positive_int, metavar="N")
    max_len: int = opt(128, "longest sentence in tokens (special tokens included); also the longest target the "
                            "mask-predict model can choose", positive_int, metavar="N")
    on_long: str = opt("skip", "over-long training pairs: skip them (counted, first ones named) or stop with an error",
                       choices=("skip", "error"))
    max_tokens: int = opt(4096, "tokens per batch (padded, source or target side, whichever is longer); "
                                "replaces --batch-size", positive_int, metavar="N")
    init: str | None = opt(None, "start from a trained translation run (RUN_DIR or RUN_DIR:best|last): its weights "
                                 "and its tokenizers; the model must have the same shapes (fine-tuning)", metavar="RUN")

    def validate(self) -> TranslateDataConfig:
        if self.tsv is None and (self.src is None or self.tgt is None):
            raise ConfigError("give the parallel corpus: --src FILE --tgt FILE (aligned, one sentence per line) or --tsv FILE")
        return self


@dataclass
class DecodeOptions:
    """How to decode a translation run (``attnlab translate``, ``attnlab eval``)."""

    beam: int = opt(5, "beam size; 1 = greedy", positive_int, metavar="N")
    length_penalty: float = opt(1.0, "beam search ranks finished hypotheses by log P / length^A", nonneg_float, metavar="A")
    max_len_a: float = opt(1.5, "at most A x source length + B target tokens", nonneg_float, metavar="A")
    max_len_b: int = opt(10, "(see --max-len-a)", nonneg_int, metavar="B")
    iterations: int = opt(10, "mask-predict runs: refinement iterations", positive_int, metavar="T")
    length_beam: int = opt(3, "mask-predict runs: target lengths tried", positive_int, metavar="L")
    batch_size: int = opt(64, "sentences decoded together", positive_int, metavar="N")
    max_source_len: int | None = opt(None, "refuse a source line longer than this many tokens (default: 4 x the "
                                           "run's --max-len)", positive_int, metavar="N")


@dataclass
class TranslateEvalConfig(DecodeOptions):
    """Options of ``attnlab eval`` for translation runs."""

    src: str | None = opt(None, "source sentences to translate (default: the run's validation source)", metavar="FILE")
    ref: str | None = opt(None, "reference translations, aligned with --src", metavar="FILE")


# --- the task ----------------------------------------------------------------------------------------

class TranslateTask:
    """Token-count batches of (source, target) pairs for the engine.

    The batches are cut once (bucketed by length, seed-dependent) so every epoch has the same
    number of steps; each epoch visits them in an order drawn from (seed, epoch).
    """

    name = TASK
    main_metric = "accuracy"
    metric_label = "next-token accuracy"

    def __init__(self, train: EncodedCorpus, valid: EncodedCorpus, *, pad_id: int, max_tokens: int, nat: bool,
                 seed: int = 0, record: dict | None = None) -> None:
        self.train, self.valid, self.pad, self.nat = train, valid, pad_id, nat
        self.batches = token_batches([len(s) for s in train.src], [len(t) for t in train.tgt], max_tokens, seed=seed)
        self.valid_batches = token_batches([len(s) for s in valid.src], [len(t) for t in valid.tgt], max_tokens, seed=None)
        self._record = dict(record or {})

    def steps_per_epoch(self, plan) -> int:
        return len(self.batches)

    def _tensors(self, corpus: EncodedCorpus, idx: list[int]) -> tuple[Tensor, Tensor]:
        return collate([corpus.src[i] for i in idx], [corpus.tgt[i] for i in idx], self.pad)

    def train_batches(self, plan) -> Iterator[list]:
        g = torch.Generator().manual_seed(plan.seed * 7_919 + plan.epoch)
        order = torch.randperm(len(self.batches), generator=g).tolist()
        for s in range(plan.start_step, len(order)):
            idx = self.batches[order[s]]
            micro = [idx[j::plan.accum_steps] for j in range(min(plan.accum_steps, len(idx)))]
            yield [self._tensors(self.train, m[plan.rank::plan.world_size] or m[:1]) for m in micro]

    def _nat_target(self, tgt: Tensor) -> Tensor:
        """<s> y </s> -> y (padded): the non-autoregressive target has no start or end token."""
        body = tgt[:, 1:]
        ends = (body != self.pad).sum(1) - 1  # position of </s>
        return body.scatter(1, ends[:, None], self.pad)[:, :-1] if body.shape[1] > 1 else body

    def train_step(self, model: nn.Module, batch, cfg) -> tuple[Tensor, dict[str, Tensor]]:
        src, tgt = batch
        if self.nat:
            target = self._nat_target(tgt)
            core = model.module if hasattr(model, "module") else model
            loss, _ = core.loss(src, target, label_smoothing=cfg.label_smoothing)
            n = (target != self.pad).sum()
            return loss, {"loss": loss.detach() * n, "count": n.detach().float()}
        y = tgt[:, 1:]
        logits = model(src, tgt[:, :-1])
        mask = y != self.pad
        n = mask.sum()
        loss = F.cross_entropy(logits[mask], y[mask], label_smoothing=cfg.label_smoothing)
        return loss, {"loss": loss.detach() * n, "count": n.detach().float()}

    def eval_batches(self, plan, corpus: EncodedCorpus | None = None) -> Iterator:
        corpus = corpus or self.valid
        for idx in self.valid_batches[plan.rank::plan.world_size]:
            yield self._tensors(corpus, idx)

    @torch.no_grad()
    def eval_step(self, model: nn.Module, batch, cfg) -> dict[str, Tensor]:
        src, tgt = batch
        if self.nat:  # one parallel pass from an all-masked target of the true length
            target = self._nat_target(tgt)
            valid = target != self.pad
            logits = model(src, target.masked_fill(valid, model.mask_id))
            y = target
        else:
            y = tgt[:, 1:]
            valid = y != self.pad
            logits = model(src, tgt[:, :-1])
        lv, yv = logits[valid].float(), y[valid]
        return {"loss": F.cross_entropy(lv, yv, reduction="sum"), "correct": (lv.argmax(-1) == yv).sum().float(),
                "count": valid.sum().float()}

    def summarize(self, sums: dict[str, Tensor]) -> dict[str, float]:
        if "count" not in sums or float(sums["count"]) == 0:
            return {}
        n = float(sums["count"])
        out = {"loss": float(sums["loss"]) / n}
        out["ppl"] = math.exp(min(out["loss"], 50))
        if "correct" in sums:
            out["accuracy"] = float(sums["correct"]) / n
        return out

    def record(self) -> dict:
        return dict(self._record)


# --- data --------------------------------------------------------------------------------------------

def read_corpora(dc: TranslateDataConfig):
    """(train, valid) :class:`ParallelCorpus` pairs; valid defaults to the last 1% of train."""
    train = load_parallel(dc.src, dc.tgt, dc.tsv)
    if dc.valid_src or dc.valid_tgt or dc.valid_tsv:
        return train, load_parallel(dc.valid_src, dc.valid_tgt, dc.valid_tsv)
    n_valid = max(1, len(train) // 100)
    if len(train) - n_valid < 1:
        raise DataError(f"{train.src_name} has {len(train)} pair(s): too few to hold out validation pairs; "
                        "give --valid-src/--valid-tgt")
    cut = len(train) - n_valid
    valid = ParallelCorpus(train.src[cut:], train.tgt[cut:], train.lines[cut:], train.src_name, train.tgt_name)
    train = ParallelCorpus(train.src[:cut], train.tgt[:cut], train.lines[:cut], train.src_name, train.tgt_name,
                           train.skipped_empty)
    return train, valid


def build_tokenizers(dc: TranslateDataConfig, train) -> tuple[Tokenizer, Tokenizer]:
    if dc.vocab == "joint":
        tok = BPETokenizer.train(train.src, train.tgt, vocab_size=dc.bpe_vocab_size)
        return tok, tok
    return (BPETokenizer.train(train.src, vocab_size=dc.bpe_vocab_size),
            BPETokenizer.train(train.tgt, vocab_size=dc.bpe_vocab_size))


def tokenizer_files(joint: bool) -> dict:
    return {"src": "tokenizer.json", "tgt": "tokenizer.json"} if joint else {"src": "src_tokenizer.json",
                                                                           "tgt": "tgt_tokenizer.json"}


def save_tokenizers(run_dir: Path, src_tok: Tokenizer, tgt_tok: Tokenizer) -> None:
    files = tokenizer_files(src_tok is tgt_tok)
    src_tok.save(run_dir / files["src"])
    if src_tok is not tgt_tok:
        tgt_tok.save(run_dir / files["tgt"])


def load_tokenizers(run_dir: Path) -> tuple[Tokenizer, Tokenizer]:
    files = tokenizer_files((Path(run_dir) / "tokenizer.json").is_file())
    src = load_tokenizer(Path(run_dir) / files["src"])
    return src, (src if files["tgt"] == files["src"] else load_tokenizer(Path(run_dir) / files["tgt"]))


def init_tokenizers(spec: str) -> tuple[Tokenizer, Tokenizer]:
    """The tokenizers of the translation run ``--init`` names (its weights index their tokens)."""
    from attnlab.checkpoints.rundir import locate, read_record

    found = locate(spec)
    if found is None:
        raise ConfigError(f"--init {spec}: not a run directory; a translation model starts from a translation run "
                          "(RUN_DIR or RUN_DIR:best|last), whose tokenizers come with its weights")
    task = read_record(*found).get("task")
    if task != TASK:
        raise ConfigError(f"--init {spec} is a {task} run; a translation model starts from a translation run")
    return load_tokenizers(found[0])


def _abs(p: str | None) -> str | None:
    return None if p is None else str(Path(p).resolve())


@dataclass
class TranslateData:
    """An encoded parallel corpus, as the run layer sees it (:class:`attnlab.tasks.spec.TaskData`)."""

    config: TranslateDataConfig
    train: EncodedCorpus
    valid: EncodedCorpus
    src_tok: Tokenizer
    tgt_tok: Tokenizer
    title: str
    model_fields: dict = field(default_factory=dict)

    def describe(self) -> str:
        joint = self.src_tok is self.tgt_tok
        tokens = sum(len(t) - 1 for t in self.train.tgt)
        vocab = f"{self.src_tok.vocab_size:,}" + ("" if joint else f" + {self.tgt_tok.vocab_size:,}")
        skipped = f" ({self.train.skipped_long} over-long pairs skipped)" if self.train.skipped_long else ""
        return (f"vocabulary {vocab} ({'joint' if joint else 'separate'}); {len(self.train):,} training pairs "
                f"({tokens:,} target tokens){skipped}, {len(self.valid):,} validation; batches of <= "
                f"{self.config.max_tokens} tokens")

    def write_files(self, run_dir: Path) -> None:
        save_tokenizers(run_dir, self.src_tok, self.tgt_tok)


def load_data(dc: TranslateDataConfig, mcfg=None, run_dir: Path | None = None, progress: bool = True,
              model_name: str = "") -> TranslateData:
    """Read and encode the corpus (tokenizers trained here, or those of the run being resumed)."""
    dc.validate()
    for k in ("src", "tgt", "tsv", "valid_src", "valid_tgt", "valid_tsv"):  # the run records absolute paths
        setattr(dc, k, _abs(getattr(dc, k)))
    train_c, valid_c = read_corpora(dc)
    if run_dir is not None:
        src_tok, tgt_tok = load_tokenizers(run_dir)
    elif dc.init:
        src_tok, tgt_tok = init_tokenizers(dc.init)
    else:
        src_tok, tgt_tok = build_tokenizers(dc, train_c)
    train = encode_corpus(train_c, src_tok, tgt_tok, max_len=dc.max_len, on_long=dc.on_long)
    valid = encode_corpus(valid_c, src_tok, tgt_tok, max_len=dc.max_len, on_long="skip")
    if len(train) == 0 or len(valid) == 0:
        raise DataError(f"no training or validation pairs of at most {dc.max_len} tokens; raise --max-len")
    joint = src_tok is tgt_tok
    fields_ = {"src_vocab_size": src_tok.vocab_size, "tgt_vocab_size": tgt_tok.vocab_size, "share_embeddings": joint,
               "pad_id": src_tok.pad_id, "max_target_len": dc.max_len}
    title = f"translation, {Path(dc.src or dc.tsv).name} -> {Path(dc.tgt or dc.tsv).name}"
    return TranslateData(dc, train, valid, src_tok, tgt_tok, title, fields_)


def make_task(data: TranslateData, model: nn.Module, cfg: TrainConfig) -> TranslateTask:
    data.title = f"{model.name} {data.title}"
    record = {"tokenizers": tokenizer_files(data.src_tok is data.tgt_tok),
              "vocab_size": [data.src_tok.vocab_size, data.tgt_tok.vocab_size],
              "pairs": {"train": len(data.train), "valid": len(data.valid), "skipped_long": data.train.skipped_long}}
    if data.config.init:  # (a resumed run then loads its own weights over these)
        from attnlab.checkpoints import load_checkpoint

        report = load_checkpoint(model, data.config.init)
        record["init"] = {k: report[k] for k in ("source", "loaded")}
    return TranslateTask(data.train, data.valid, pad_id=data.src_tok.pad_id, max_tokens=data.config.max_tokens,
                         nat=decodes_by_mask_predict(model), seed=cfg.seed, record=record)


def finalize_train_config(cfg: TrainConfig) -> TrainConfig:
    """Batches are by token count: the engine's sample batch size only has to divide evenly."""
    from dataclasses import replace

    return replace(cfg, batch_size=cfg.accum_steps * max(1, cfg.batch_size // cfg.accum_steps))


# --- using a trained run -----------------------------------------------------------------------------

def load_extras(run_dir: Path, rec: dict) -> dict:
    src, tgt = load_tokenizers(run_dir)
    return {"src_tokenizer": src, "tgt_tokenizer": tgt, "max_len": rec["data_config"]["max_len"]}


def _progress(total: int, enabled: bool, what: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=what, unit="sentence", leave=False, disable=None if enabled else True,
                dynamic_ncols=True)


def translate_lines(model: nn.Module, src_tok: Tokenizer, tgt_tok: Tokenizer, lines: list[str],
                    opts: DecodeOptions | None = None, *, max_source_len: int | None = None, first_line: int = 1,
                    progress: bool = False) -> list[str]:
    """Translate sentences (batched, sorted by length, returned in input order). Empty lines
    give empty translations; a line of more than ``max_source_len`` tokens is refused (a
    20,000-word line would otherwise decode for hours). ``first_line`` numbers lines in errors."""
    opts = opts or DecodeOptions()
    out = [""] * len(lines)
    todo = []
    for i, s in enumerate(lines):
        if s.strip():
            ids = src_tok.encode(s.strip()) + [src_tok.eos_id]
            if max_source_len is not None and len(ids) > max_source_len:
                raise DataError(f"line {first_line + i} has {len(ids):,} tokens; this model translates at most "
                                f"{max_source_len} (its training sentences had at most a quarter of that): split the "
                                "line into sentences, or pass --max-source-len")
            todo.append((i, ids))
    todo.sort(key=lambda x: len(x[1]))
    nat = decodes_by_mask_predict(model)
    scfg = SearchConfig(bos=tgt_tok.bos_id, eos=tgt_tok.eos_id, pad=src_tok.pad_id, max_len_a=opts.max_len_a,
                        max_len_b=opts.max_len_b, beam=opts.beam, length_penalty=opts.length_penalty)
    device = model_device(model)
    with _progress(len(todo), progress, "translating") as bar:
        for b in range(0, len(todo), opts.batch_size):
            chunk = todo[b:b + opts.batch_size]
            src = pad_to([ids for _, ids in chunk], src_tok.pad_id).to(device)
            if nat:
                hyps = mask_predict(model, src, iterations=opts.iterations, length_beam=opts.length_beam,
                                    forbidden=tuple({tgt_tok.pad_id, tgt_tok.bos_id, tgt_tok.eos_id}))
            else:
                hyps = translate_ids(model, src, scfg)
            for (i, _), h in zip(chunk, hyps):
                out[i] = tgt_tok.decode(h).strip()
            bar.update(len(chunk))
    return out


def read_utf8_lines(stream) -> Iterator[str]:
    """Lines of a binary stream decoded as UTF-8; the first undecodable line stops with its number."""
    for n, raw in enumerate(stream, start=1):
        try:
            yield raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as e:
            raise DataError(f"input line {n} is not UTF-8 text ({e.reason} at byte {e.start}); convert it with "
                            "iconv -t UTF-8") from None


def iter_translations(run: LoadedRun, lines: Iterable[str], opts: DecodeOptions, chunk: int,
                      progress: bool = False) -> Iterator[str]:
    """Translate a stream: ``chunk`` lines at a time (1 = each line as soon as it is read)."""
    model, src_tok, tgt_tok = run.model, run.extras["src_tokenizer"], run.extras["tgt_tokenizer"]
    limit = opts.max_source_len or 4 * run.extras["max_len"]
    buf: list[str] = []
    done = 0
    it = iter(lines)
    while True:
        try:
            line = next(it)
        except StopIteration:
            break
        except DataError:  # unreadable input: what was read before it is still translated
            yield from translate_lines(model, src_tok, tgt_tok, buf, opts, max_source_len=limit, first_line=done + 1)
            raise
        buf.append(line)
        if len(buf) >= chunk:
            yield from translate_lines(model, src_tok, tgt_tok, buf, opts, max_source_len=limit, first_line=done + 1,
                                       progress=progress)
            done += len(buf)
            buf = []
    if buf:
        yield from translate_lines(model, src_tok, tgt_tok, buf, opts, max_source_len=limit, first_line=done + 1,
                                   progress=progress)


def _read_lines(path: str | Path) -> list[str]:
    from attnlab.data.parallel import read_lines

    return read_lines(path)


def evaluate(run: LoadedRun, ec: TranslateEvalConfig, progress: bool = True) -> tuple[dict, dict]:
    """Translate ``ec.src`` (default: the run's validation source) and score against ``ec.ref``."""
    rec = run.record
    src_path, ref_path = ec.src, ec.ref
    if (src_path is None) != (ref_path is None):
        raise ConfigError("give both --src and --ref (or neither, for the run's validation set)")
    if src_path is None:
        d = rec["data_config"]
        if d.get("valid_src") is None:
            raise ConfigError(f"{run.run_dir} was validated on held-out training pairs; give --src FILE --ref FILE")
        src_path, ref_path = d["valid_src"], d["valid_tgt"]
    srcs, refs = _read_lines(src_path), _read_lines(ref_path)
    if len(srcs) != len(refs):
        raise DataError(f"{src_path} has {len(srcs)} lines but {ref_path} has {len(refs)}")
    opts = DecodeOptions(**{f.name: getattr(ec, f.name) for f in fields(DecodeOptions)})
    t0 = time.perf_counter()
    hyps = list(iter_translations(run, srcs, opts, chunk=max(1, len(srcs)), progress=progress))
    seconds = time.perf_counter() - t0
    tgt_tok = run.extras["tgt_tokenizer"]
    nat = decodes_by_mask_predict(run.model)
    res = {"slug": Path(src_path).name.split(".")[0] + ("-mask-predict" if nat else f"-beam{opts.beam}"),
           "run_dir": str(run.run_dir), "checkpoint": run.which, "step": rec.get("step"), "model": run.name,
           "parameters": rec["model"].get("parameters"), "src": str(src_path), "ref": str(ref_path),
           "sentences": len(srcs), "decoder": "mask-predict" if nat else "greedy" if opts.beam == 1 else "beam",
           "decode": asdict(opts), "batch_size": opts.batch_size, "seconds": round(seconds, 2),
           "tokens_per_s": round(sum(len(tgt_tok.encode(h)) for h in hyps) / max(seconds, 1e-9), 1),
           **score(hyps, refs)}
    return res, {"hypotheses.txt": "".join(h + "\n" for h in hyps)}


def score(hyps: list[str], refs: list[str]) -> dict:
    """sacrebleu BLEU and chrF (default signatures), plus BLEU on lowercased text with the 13a
    tokenizer (the variant of many tutorials)."""
    try:
        from sacrebleu.metrics import BLEU, CHRF
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError("scoring translations needs sacrebleu: pip install sacrebleu") from None
    if len(hyps) != len(refs):
        raise DataError(f"{len(hyps)} hypotheses but {len(refs)} references")
    bleu, chrf, lc = BLEU(), CHRF(), BLEU(lowercase=True, tokenize="13a")
    b, c, bl = bleu.corpus_score(hyps, [refs]), chrf.corpus_score(hyps, [refs]), lc.corpus_score(hyps, [refs])
    return {"bleu": round(b.score, 2), "chrf": round(c.score, 2), "bleu_tok_lc": round(bl.score, 2),
            "bleu_signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature()),
            "bleu_tok_lc_signature": str(lc.get_signature()), "bleu_detail": str(b)}


SPEC = TaskSpec(
    name=TASK,
    help="translation: Transformer / GRU + attention / non-autoregressive mask-predict on a parallel corpus",
    data_config=TranslateDataConfig,
    load_data=load_data,
    make_task=make_task,
    model_kinds=(Translator,),
    default_model="transformer_multi30k",
    train_defaults=TRAIN_DEFAULTS,
    finalize_train_config=finalize_train_config,
    load_extras=load_extras,
    eval_config=TranslateEvalConfig,
    evaluate=evaluate,
)
