"""Translation: the Transformer, the GRU + additive-attention baseline or the non-autoregressive
mask-predict model on a local parallel corpus (two aligned files or a TSV; e.g. Multi30k).

Training is teacher forcing on shifted targets with label-smoothed cross-entropy, the paper's
warm-up schedule (``--schedule inverse-sqrt``, the default here) or warm-up + cosine, and
batches built by token count with length bucketing (``--max-tokens``). Tokens: byte-level BPE
trained locally, one joint vocabulary (with shared embeddings) or one per language.

Evaluation (``attnlab eval RUN_DIR --src F --ref F``) decodes with greedy or beam search (or
mask-predict) and scores with sacrebleu (BLEU and chrF, with their signatures);
``attnlab translate RUN_DIR`` translates standard input line by line.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.data.parallel import EncodedCorpus, collate, encode_corpus, load_parallel, pad_to, token_batches
from attnlab.data.tokenizers import BPETokenizer, Tokenizer, load_tokenizer
from attnlab.decode.mask_predict import mask_predict
from attnlab.decode.search import SearchConfig, translate_ids
from attnlab.errors import CheckpointError, ConfigError, DataError
from attnlab.models.seq2seq import (
    GRUAttentionConfig,
    GRUAttentionSeq2Seq,
    MaskPredictConfig,
    MaskPredictTransformer,
    build_seq2seq,
)
from attnlab.nn import Transformer, TransformerConfig
from attnlab.train.config import (
    TrainConfig,
    add_arguments,
    from_args,
    nonneg_float,
    nonneg_int,
    opt,
    positive_int,
    to_dict,
    unit_float,
)

TASK = "translate"
HELP = "translation: transformer / gru-attention / non-autoregressive on a parallel corpus (two files or a TSV)"
MODELS = ("transformer", "gru-attention")

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
    max_len: int = opt(128, "longest sentence in tokens (special tokens included)", positive_int, metavar="N")
    on_long: str = opt("skip", "over-long training pairs: skip them (counted, first ones named) or stop with an error",
                       choices=("skip", "error"))
    max_tokens: int = opt(4096, "tokens per batch (padded, source or target side, whichever is longer); "
                                "replaces --batch-size", positive_int, metavar="N")


@dataclass
class TranslateModelConfig:
    """The model; options that do not apply to the chosen model are ignored."""

    model: str = opt("transformer", "the model", choices=MODELS)
    decoder: str = opt("autoregressive", "transformer: autoregressive (left to right) or nat (non-autoregressive "
                                         "mask-predict: target length first, then all tokens refined in parallel)",
                       choices=("autoregressive", "nat"))
    d_model: int = opt(256, "transformer: model width", positive_int, metavar="N")
    num_heads: int = opt(8, "transformer: attention heads", positive_int, metavar="N")
    num_layers: int = opt(3, "transformer: encoder and decoder layers (each)", positive_int, metavar="N")
    d_ff: int = opt(512, "transformer: feed-forward width", positive_int, metavar="N")
    norm_first: bool = opt(False, "transformer: pre-LN instead of the paper's post-LN")
    dropout: float = opt(0.1, "dropout", unit_float, metavar="P")
    embed_dim: int = opt(256, "gru-attention: embedding size", positive_int, metavar="N")
    hidden_dim: int = opt(256, "gru-attention: GRU state size (per direction in the encoder)", positive_int, metavar="N")
    nat_max_len: int = opt(128, "nat: longest target length the length predictor can choose", positive_int, metavar="N")


@dataclass
class DecodeOptions:
    beam: int = 5
    length_penalty: float = 1.0
    max_len_a: float = 1.5
    max_len_b: int = 10
    iterations: int = 10  # mask-predict
    length_beam: int = 3  # mask-predict
    batch_size: int = 64


# --- models ------------------------------------------------------------------------------------------

def kind_of(mc: TranslateModelConfig) -> str:
    return "nat" if mc.model == "transformer" and mc.decoder == "nat" else mc.model


def model_fields(mc: TranslateModelConfig, joint: bool, pad_id: int) -> dict:
    kind = kind_of(mc)
    if kind == "gru-attention":
        return dict(embed_dim=mc.embed_dim, hidden_dim=mc.hidden_dim, attn_dim=mc.hidden_dim, dropout=mc.dropout,
                    share_embeddings=joint, pad_id=pad_id)
    f = dict(d_model=mc.d_model, num_heads=mc.num_heads, num_encoder_layers=mc.num_layers, num_decoder_layers=mc.num_layers,
             d_ff=mc.d_ff, dropout=mc.dropout, norm_first=mc.norm_first, share_embeddings=joint, tie_output=True,
             pad_id=pad_id, max_len=max(512, mc.nat_max_len + 2))
    if kind == "nat":
        f["max_target_len"] = mc.nat_max_len
    return f


def model_config_dict(model: nn.Module) -> dict:
    if isinstance(model, MaskPredictTransformer):
        return {"kind": "nat", "config": {**asdict(model.cfg), "transformer": asdict(model.cfg.transformer)}}
    if isinstance(model, GRUAttentionSeq2Seq):
        return {"kind": "gru-attention", "config": asdict(model.cfg)}
    return {"kind": "transformer", "config": asdict(model.cfg)}


def model_from_dict(d: dict) -> nn.Module:
    kind, c = d["kind"], dict(d["config"])
    if kind == "nat":
        t = TransformerConfig(**c.pop("transformer"))
        return MaskPredictTransformer(MaskPredictConfig(transformer=t, **c))
    if kind == "gru-attention":
        return GRUAttentionSeq2Seq(GRUAttentionConfig(**c))
    if kind == "transformer":
        return Transformer(TransformerConfig(**c))
    raise CheckpointError(f"unknown translation model kind {kind!r} in the run record")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


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
    from attnlab.data.parallel import ParallelCorpus

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


def save_tokenizers(run_dir: Path, src_tok: Tokenizer, tgt_tok: Tokenizer) -> dict:
    if src_tok is tgt_tok:
        src_tok.save(run_dir / "tokenizer.json")
        return {"src": "tokenizer.json", "tgt": "tokenizer.json"}
    src_tok.save(run_dir / "src_tokenizer.json")
    tgt_tok.save(run_dir / "tgt_tokenizer.json")
    return {"src": "src_tokenizer.json", "tgt": "tgt_tokenizer.json"}


def load_tokenizers(run_dir: Path, files: dict) -> tuple[Tokenizer, Tokenizer]:
    src = load_tokenizer(run_dir / files["src"])
    return src, (src if files["tgt"] == files["src"] else load_tokenizer(run_dir / files["tgt"]))


def _abs(p: str | None) -> str | None:
    return None if p is None else str(Path(p).resolve())


def default_run_dir(dc: TranslateDataConfig, mc: TranslateModelConfig) -> Path:
    name = Path(dc.src or dc.tsv or "corpus").name.split(".")[0]
    return Path("runs") / f"translate-{kind_of(mc)}-{name}-{time.strftime('%Y%m%d-%H%M%S')}"


# --- training ----------------------------------------------------------------------------------------

def train_translate(dc: TranslateDataConfig, mc: TranslateModelConfig, cfg: TrainConfig, run_dir: str | Path | None, *,
                    log=print, progress: bool = True, resume: bool = False, overwrite: bool = False,
                    command: list[str] | None = None) -> dict:
    """Train a translation model into ``run_dir`` (None: nothing written); returns the engine's
    summary plus ``params``, ``title`` and ``model``."""
    from attnlab.io import atomic_write_json
    from attnlab.train import checkpoint as ckpt
    from attnlab.train.engine import Trainer
    from attnlab.train.run import open_run_dir, start

    log = log or (lambda s: None)
    info = start(cfg)
    run_dir = None if run_dir is None else Path(run_dir)
    train_c, valid_c = read_corpora(dc)
    if resume:
        rec = ckpt.read_record(run_dir, "last")
        src_tok, tgt_tok = load_tokenizers(run_dir, rec["translate"]["tokenizers"])
    else:
        src_tok, tgt_tok = build_tokenizers(dc, train_c)
    train = encode_corpus(train_c, src_tok, tgt_tok, max_len=dc.max_len, on_long=dc.on_long)
    valid = encode_corpus(valid_c, src_tok, tgt_tok, max_len=dc.max_len, on_long="skip")
    if info.is_main and train.skipped_long:
        log(f"skipped {train.skipped_long} over-long training pair(s) (more than {dc.max_len} tokens), e.g. "
            + "; ".join(train.long_examples))
    ckpt.seed_everything(cfg.seed)
    kind = kind_of(mc)
    joint = src_tok is tgt_tok
    model = build_seq2seq(kind, src_tok.vocab_size, tgt_tok.vocab_size, **model_fields(mc, joint, src_tok.pad_id))
    title = f"{kind} translation, {Path(dc.src or dc.tsv).name} -> {Path(dc.tgt or dc.tsv).name}"
    data = {**to_dict(dc), **{k: _abs(getattr(dc, k)) for k in ("src", "tgt", "tsv", "valid_src", "valid_tgt", "valid_tsv")}}
    tok_files = ({"src": "tokenizer.json", "tgt": "tokenizer.json"} if joint
                 else {"src": "src_tokenizer.json", "tgt": "tgt_tokenizer.json"})
    record = {"translate": {"model": model_config_dict(model), "options": to_dict(mc), "data": data,
                            "tokenizers": tok_files, "vocab_size": [src_tok.vocab_size, tgt_tok.vocab_size],
                            "pairs": {"train": len(train), "valid": len(valid), "skipped_long": train.skipped_long},
                            "params": count_parameters(model)}}
    if run_dir is not None and not resume:
        open_run_dir(run_dir, overwrite=overwrite, task=TASK, cfg=cfg, info=info, command=command,
                     record={"model": kind, "title": title, **record},
                     write_files=lambda d: save_tokenizers(d, src_tok, tgt_tok))
    task = TranslateTask(train, valid, pad_id=src_tok.pad_id, max_tokens=dc.max_tokens, nat=kind == "nat", seed=cfg.seed,
                         record=record)
    trainer = Trainer(model, task, cfg, run_dir, meta={"model": kind, "title": title}, log=log if info.is_main else None,
                      progress=progress)
    if info.is_main:
        tokens = sum(len(t) - 1 for t in train.tgt)
        log(f"{'resuming' if resume else 'training'} {title}: {count_parameters(model):,} parameters, vocabulary "
            f"{src_tok.vocab_size:,}{'' if joint else ' + ' + format(tgt_tok.vocab_size, ',')} "
            f"({'joint' if joint else 'separate'}); "
            f"{len(train):,} training pairs ({tokens:,} target tokens), {len(valid):,} validation; "
            f"{cfg.epochs} epochs x {trainer.steps_per_epoch} batches of <= {dc.max_tokens} tokens")
    summary = trainer.fit(resume_from=run_dir if resume else None)
    if info.is_main and run_dir is not None:
        epochs_done = sum(1 for r in trainer.history.epochs if "val_loss" in r)
        atomic_write_json(run_dir / "translate.json", {"epochs_done": epochs_done, "stopped_by_time": summary["stopped_by_time"],
                                                       "train_seconds": trainer.train_time,
                                                       "elapsed_seconds": summary["elapsed"]})
    summary.update(params=count_parameters(model), title=title, model=model)
    return summary


# --- loading and decoding ----------------------------------------------------------------------------

def load_run(run_dir: str | Path, tag: str = "best"):
    """(model in eval mode, source tokenizer, target tokenizer, record) of a translation run."""
    from attnlab.train import checkpoint as ckpt

    run_dir = Path(run_dir)
    if not ckpt.has_record(run_dir, tag):
        tag = "last"
    rec = ckpt.read_record(run_dir, tag)
    if rec.get("task") != TASK or "translate" not in rec:
        raise CheckpointError(f"{run_dir} is a {rec.get('task')!r} run, not a translation run")
    src_tok, tgt_tok = load_tokenizers(run_dir, rec["translate"]["tokenizers"])
    model = model_from_dict(rec["translate"]["model"])
    ckpt.load_into(model, ckpt.load_weights(run_dir, rec), f"{run_dir}/{rec['path']}")
    return model.eval(), src_tok, tgt_tok, rec


def translate_lines(model: nn.Module, src_tok: Tokenizer, tgt_tok: Tokenizer, lines: list[str],
                    opts: DecodeOptions | None = None) -> list[str]:
    """Translate sentences (batched, sorted by length, returned in input order). Empty lines
    give empty translations."""
    opts = opts or DecodeOptions()
    out = [""] * len(lines)
    todo = [(i, src_tok.encode(s.strip()) + [src_tok.eos_id]) for i, s in enumerate(lines) if s.strip()]
    todo.sort(key=lambda x: len(x[1]))
    nat = isinstance(model, MaskPredictTransformer)
    scfg = SearchConfig(bos=tgt_tok.bos_id, eos=tgt_tok.eos_id, pad=src_tok.pad_id, max_len_a=opts.max_len_a,
                        max_len_b=opts.max_len_b, beam=opts.beam, length_penalty=opts.length_penalty)
    for b in range(0, len(todo), opts.batch_size):
        chunk = todo[b:b + opts.batch_size]
        src = pad_to([ids for _, ids in chunk], src_tok.pad_id)
        if nat:
            hyps = mask_predict(model, src, iterations=opts.iterations, length_beam=opts.length_beam,
                                forbidden=tuple({tgt_tok.pad_id, tgt_tok.bos_id, tgt_tok.eos_id}))
        else:
            hyps = translate_ids(model, src, scfg)
        for (i, _), h in zip(chunk, hyps):
            out[i] = tgt_tok.decode(h).strip()
    return out


def iter_translations(model, src_tok, tgt_tok, lines: Iterable[str], opts: DecodeOptions, chunk: int) -> Iterator[str]:
    """Translate a stream: ``chunk`` lines at a time (1 = each line as soon as it is read)."""
    buf: list[str] = []
    for line in lines:
        buf.append(line.rstrip("\n"))
        if len(buf) >= chunk:
            yield from translate_lines(model, src_tok, tgt_tok, buf, opts)
            buf = []
    if buf:
        yield from translate_lines(model, src_tok, tgt_tok, buf, opts)


def decode_options(args) -> DecodeOptions:
    d = DecodeOptions()
    for k in asdict(d):
        v = getattr(args, k, None)
        if v is not None:
            setattr(d, k, v)
    return d


def add_decode_arguments(parser, *, batch: bool = True) -> None:
    from attnlab.train.config import positive_float

    g = parser.add_argument_group("decoding (translation runs)")
    g.add_argument("--beam", type=positive_int, default=None, metavar="N", help="beam size; 1 = greedy (default: 5)")
    g.add_argument("--length-penalty", type=nonneg_float, default=None, metavar="A",
                   help="beam search ranks finished hypotheses by log P / length^A (default: 1.0)")
    g.add_argument("--max-len-a", type=nonneg_float, default=None, metavar="A",
                   help="at most A x source length + B target tokens (default: A 1.5)")
    g.add_argument("--max-len-b", type=nonneg_int, default=None, metavar="B", help="(default: B 10)")
    g.add_argument("--iterations", type=positive_int, default=None, metavar="T",
                   help="nat runs: mask-predict iterations (default: 10)")
    g.add_argument("--length-beam", type=positive_int, default=None, metavar="L",
                   help="nat runs: target lengths tried (default: 3)")
    del positive_float


# --- scoring -----------------------------------------------------------------------------------------

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


# --- the command line (discovered by `attnlab train` / `attnlab eval`) ------------------------------------

def add_train_arguments(parser) -> None:
    add_arguments(parser, TranslateDataConfig, "data")
    add_arguments(parser, TranslateModelConfig, "model")
    add_arguments(parser, TrainConfig, "training (translation defaults: "
                  + ", ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, tuple) else v}"
                              for k, v in TRAIN_DEFAULTS.items()) + "; --batch-size is replaced by --max-tokens)")


def add_eval_arguments(parser) -> None:
    """Options of ``attnlab eval`` for translation runs."""
    g = parser.add_argument_group("translation runs")
    g.add_argument("--src", metavar="FILE", help="source sentences to translate (default: the run's validation source)")
    g.add_argument("--ref", metavar="FILE", help="reference translations, aligned with --src")
    add_decode_arguments(parser)


def configs_from_args(args, base: dict | None = None):
    dc, _ = from_args(TranslateDataConfig, args, (base or {}).get("data"))
    mc, _ = from_args(TranslateModelConfig, args, (base or {}).get("model"))
    train_base = {**TRAIN_DEFAULTS, **((base or {}).get("train") or {})}
    if getattr(args, "warmup_epochs", None) is not None and getattr(args, "warmup_steps", None) is None:
        train_base.pop("warmup_steps", None)
    cfg, _ = from_args(TrainConfig, args, train_base)
    return dc, mc, replace_batch(cfg)


def replace_batch(cfg: TrainConfig) -> TrainConfig:
    """Batches are by token count: the engine's sample batch size only has to divide evenly."""
    from dataclasses import replace

    return replace(cfg, batch_size=cfg.accum_steps * max(1, cfg.batch_size // cfg.accum_steps))


def train_from_args(args, log=print, progress: bool = True) -> dict:
    """``attnlab train translate``."""
    from attnlab.train import checkpoint as ckpt

    resume = getattr(args, "resume", None)
    base = None
    if resume:
        rec = ckpt.read_record(resume, "last")
        if rec.get("task") != TASK or "translate" not in rec:
            raise CheckpointError(f"{resume} is a {rec.get('task')!r} run, not a translation run")
        base = {"data": rec["translate"]["data"], "model": rec["translate"]["options"], "train": rec["train_config"]}
    dc, mc, cfg = configs_from_args(args, base)
    if not resume and dc.tsv is None and (dc.src is None or dc.tgt is None):
        raise ConfigError("give the parallel corpus: --src FILE --tgt FILE (aligned, one sentence per line) or --tsv FILE")
    run_dir = Path(resume) if resume else Path(args.run_dir) if getattr(args, "run_dir", None) else default_run_dir(dc, mc)
    summary = train_translate(dc, mc, cfg, run_dir, log=log, progress=progress, resume=bool(resume),
                              overwrite=getattr(args, "overwrite", False), command=getattr(args, "argv", None))
    return summary


def _read_lines(path: str | Path) -> list[str]:
    from attnlab.data.parallel import _lines

    return _lines(path)


def evaluate_run(run_dir: str | Path, args=None) -> dict:
    """Translate ``args.src`` (default: the run's validation source) and score against
    ``args.ref``; writes the hypotheses to ``--out`` when given."""
    tag = getattr(args, "which", None) or "best"
    model, src_tok, tgt_tok, rec = load_run(run_dir, tag)
    dev = getattr(args, "device", "cpu") or "cpu"
    model.to("cpu" if dev == "auto" and not torch.cuda.is_available() else ("cuda" if dev == "auto" else dev))
    src_path, ref_path = getattr(args, "src", None), getattr(args, "ref", None)
    if (src_path is None) != (ref_path is None):
        raise ConfigError("give both --src and --ref (or neither, for the run's validation set)")
    if src_path is None:
        d = rec["translate"]["data"]
        if d.get("valid_src") is None:
            raise ConfigError(f"{run_dir} was validated on held-out training pairs; give --src FILE --ref FILE")
        src_path, ref_path = d["valid_src"], d["valid_tgt"]
    srcs, refs = _read_lines(src_path), _read_lines(ref_path)
    if len(srcs) != len(refs):
        raise DataError(f"{src_path} has {len(srcs)} lines but {ref_path} has {len(refs)}")
    opts = decode_options(args)
    if getattr(args, "batch_size", None) and args.batch_size != 500:  # 500: eval's default for images
        opts.batch_size = args.batch_size
    t0 = time.perf_counter()
    hyps = translate_lines(model, src_tok, tgt_tok, srcs, opts)
    seconds = time.perf_counter() - t0
    res = {"run_dir": str(run_dir), "checkpoint": tag, "step": rec.get("step"), "model": rec["translate"]["model"]["kind"],
           "params": rec["translate"].get("params"), "src": str(src_path), "ref": str(ref_path), "sentences": len(srcs),
           "decoder": ("mask-predict" if rec["translate"]["model"]["kind"] == "nat" else "greedy" if opts.beam == 1 else "beam"),
           "decode": asdict(opts), "seconds": round(seconds, 2),
           "tokens_per_s": round(sum(len(tgt_tok.encode(h)) for h in hyps) / max(seconds, 1e-9), 1),
           **score(hyps, refs)}
    out = getattr(args, "out", None)
    if out:
        from attnlab.io import atomic_write, atomic_write_json

        Path(out).mkdir(parents=True, exist_ok=True)
        with atomic_write(Path(out) / "hypotheses.txt", "w") as f:
            f.write("".join(h + "\n" for h in hyps))
        atomic_write_json(Path(out) / "results.json", res)
    return res


def format_eval(res: dict) -> str:
    dec = res["decode"]
    how = (f"mask-predict, {dec['iterations']} iterations, {dec['length_beam']} lengths" if res["decoder"] == "mask-predict"
           else "greedy" if dec["beam"] == 1 else f"beam {dec['beam']}, length penalty {dec['length_penalty']}")
    return "\n".join([
        f"{res['run_dir']} ({res['checkpoint']} checkpoint, step {res['step']}): {res['model']}, "
        f"{res.get('params') or 0:,} parameters; {res['sentences']} sentences, {how}, {res['seconds']:.1f} s "
        f"({res['tokens_per_s']:.0f} tokens/s)",
        f"BLEU = {res['bleu']:.2f}  {res['bleu_signature']}",
        f"chrF = {res['chrf']:.2f}  {res['chrf_signature']}",
        f"BLEU (lowercased, 13a-tokenized) = {res['bleu_tok_lc']:.2f}  {res['bleu_tok_lc_signature']}",
    ])


def run_translate_stream(run_dir, args, stdin=None, stdout=None) -> int:
    """``attnlab translate RUN_DIR``: standard input to standard output, one line per line."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    model, src_tok, tgt_tok, _ = load_run(run_dir, getattr(args, "which", "best") or "best")
    opts = decode_options(args)
    chunk = 1 if stdin.isatty() else (getattr(args, "batch_size", None) or 32)
    try:
        for hyp in iter_translations(model, src_tok, tgt_tok, stdin, opts, chunk):
            stdout.write(hyp + "\n")
            stdout.flush()
    except UnicodeDecodeError as e:
        raise DataError(f"standard input is not UTF-8 text ({e.reason} at byte {e.start})") from None
    return 0
