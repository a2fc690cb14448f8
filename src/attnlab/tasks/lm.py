"""Language modelling: RNN, GRU, LSTM and Transformer language models trained on local text by
the shared engine (``attnlab train lm``), evaluated (``attnlab eval RUN_DIR``) and sampled
(``attnlab generate RUN_DIR``).

Data: a corpus (:func:`attnlab.data.text.load_corpus`), a tokenizer trained on its training
split (:mod:`attnlab.data.tokenizers`, saved as ``tokenizer.json`` in the run directory), and
the token streams of each split.

Batches (one optimizer step = ``batch_size`` sequences of ``window`` tokens):

- recurrent models, **truncated back-propagation through time**: the training stream is laid
  out as ``batch_size`` parallel rows and read in consecutive windows; the hidden state at the
  end of a window starts the next window of the same row, *detached* so gradients stop at the
  window boundary (the graph never grows across windows). The state is reset at each epoch.
- the Transformer, **contiguous windows** at random offsets (drawn from (seed, epoch, step)
  so that a resumed run retraces the same batches); an epoch is as many tokens as the
  training split unless ``--steps-per-epoch`` says otherwise.

Evaluation reads the whole split once: recurrent models over ``eval_batch_size`` rows with
the state carried across windows, the Transformer over non-overlapping windows (each window
starts without context, as in training).

Metrics: loss (nats per token), perplexity exp(loss), next-token accuracy, and bits per
character loss / ln 2 for character models. The engine keeps the checkpoint with the best
validation *accuracy* as "best" (its rule is larger-is-better); ``last`` is the end of training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.data.text import as_ids, batchify, bptt_windows, check_window, load_corpus, num_bptt_windows, random_windows
from attnlab.data.tokenizers import TOKENIZER_KINDS, Tokenizer, load_tokenizer, train_tokenizer
from attnlab.errors import CheckpointError, ConfigError, DataError
from attnlab.models.lm import (
    LM_MODELS,
    RECURRENT_CELLS,
    RecurrentLM,
    build_lm,
    count_parameters,
    lm_config,
    lm_config_from_dict,
    lm_config_to_dict,
)
from attnlab.train.config import (
    TrainConfig,
    add_arguments,
    from_args,
    nonneg_int,
    opt,
    positive_int,
    to_dict,
    unit_float,
)

TASK = "lm"
HELP = "language modelling: rnn / gru / lstm / transformer on local text (characters, words or BPE)"
TOKENIZER_FILE = "tokenizer.json"

#: The engine defaults that differ for language models (command-line options still win).
TRAIN_DEFAULTS = {"epochs": 5, "batch_size": 32, "lr": 2e-3, "min_lr": 1e-4, "warmup_steps": 100,
                  "weight_decay": 0.01, "clip_grad": 1.0, "log_every": 20}


@dataclass
class LMDataConfig:
    """Which text, how it is tokenized and cut into windows."""

    text: str | None = opt(None, "one text file (gzip read transparently), split by --valid-fraction: the last "
                                 "fraction of its characters is the validation text", metavar="FILE")
    train: str | None = opt(None, "training text file (with --valid, and optionally --test)", metavar="FILE")
    valid: str | None = opt(None, "validation text file", metavar="FILE")
    test: str | None = opt(None, "test text file (attnlab eval reports it)", metavar="FILE")
    valid_fraction: float = opt(0.1, "with --text: the fraction of characters, at the end, used for validation",
                                unit_float, metavar="X")
    tokenizer: str = opt("char", "char (one id per character), word (whitespace words, <unk>/<eos>, vocabulary "
                                 "from the training split) or bpe (byte-level BPE trained on the training split)",
                         choices=TOKENIZER_KINDS)
    bpe_vocab_size: int = opt(2000, "vocabulary size of the BPE tokenizer", positive_int, metavar="N")
    min_freq: int = opt(1, "word tokenizer: keep words seen at least this often in training", positive_int, metavar="N")
    window: int = opt(128, "tokens per window: the truncated-BPTT length of recurrent models, the context of the "
                           "Transformer", positive_int, metavar="T")
    eval_batch_size: int = opt(0, "rows (recurrent) or windows (Transformer) per evaluation batch "
                                  "(0 = 10 rows / 32 windows)", nonneg_int, metavar="N")
    steps_per_epoch: int = opt(0, "Transformer: optimizer steps per epoch (0 = as many tokens as the training split)",
                               nonneg_int, metavar="N")


@dataclass
class LMModelConfig:
    """The model; options that do not apply to the chosen model are ignored."""

    model: str = opt("transformer", "the language model", choices=LM_MODELS)
    num_layers: int | None = opt(None, "layers (default 2 recurrent, 4 Transformer)", positive_int, metavar="N")
    hidden_dim: int = opt(256, "rnn/gru/lstm: hidden units per layer", positive_int, metavar="N")
    embed_dim: int = opt(0, "rnn/gru/lstm: embedding size (0 = --hidden-dim)", nonneg_int, metavar="N")
    d_model: int = opt(128, "transformer: model width", positive_int, metavar="N")
    num_heads: int = opt(4, "transformer: attention heads", positive_int, metavar="N")
    d_ff: int = opt(0, "transformer: feed-forward width (0 = 4 x --d-model)", nonneg_int, metavar="N")
    position: str = opt("learned", "transformer: position encoding",
                        choices=("learned", "sinusoidal", "rotary", "relative", "none"))
    dropout: float = opt(0.0, "dropout (recurrent: embeddings, between layers, read-out; transformer: "
                              "residual branches and attention)", unit_float, metavar="P")
    tie_weights: bool = opt(True, "share the input embedding and the output read-out")
    cell_nonlinearity: str = opt("tanh", "rnn: tanh or relu", choices=("tanh", "relu"))


def model_config_from(mc: LMModelConfig, vocab_size: int, window: int):
    """The model's own config dataclass from the command-line options."""
    if mc.model in RECURRENT_CELLS:
        return lm_config(mc.model, vocab_size=vocab_size, hidden_dim=mc.hidden_dim,
                         embed_dim=mc.embed_dim or mc.hidden_dim, num_layers=mc.num_layers or 2,
                         dropout=mc.dropout, tie_weights=mc.tie_weights, nonlinearity=mc.cell_nonlinearity)
    return lm_config("transformer", vocab_size=vocab_size, d_model=mc.d_model, num_layers=mc.num_layers or 4,
                     num_heads=mc.num_heads, d_ff=mc.d_ff or None, max_len=window, position=mc.position,
                     dropout=mc.dropout, tie_weights=mc.tie_weights)


# --- the task ----------------------------------------------------------------------------------------

def lm_sums(logits: Tensor, y: Tensor, label_smoothing: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """(mean loss to back-propagate, sums: summed NLL "loss", "count" tokens, "correct")."""
    flat, target = logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
    nll = F.cross_entropy(flat.float(), target, reduction="sum")
    n = target.numel()
    loss = nll / n
    if label_smoothing > 0:
        loss = F.cross_entropy(flat.float(), target, label_smoothing=label_smoothing)
    correct = (flat.argmax(-1) == target).sum()
    return loss, {"loss": nll.detach(), "count": torch.tensor(float(n)), "correct": correct.detach().float()}


def summarize_lm(sums: dict[str, Tensor], char_level: bool) -> dict[str, float]:
    n = float(sums.get("count", torch.tensor(0.0)))
    if n == 0:
        return {}
    loss = float(sums["loss"]) / n
    out = {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "acc": float(sums["correct"]) / n}
    if char_level:
        out["bpc"] = loss / math.log(2)
    out["tokens"] = n
    return out


class LMTask:
    """The engine's :class:`~attnlab.train.engine.Task` for language models."""

    name = TASK
    main_metric = "ppl"  # the best checkpoint is the one of lowest validation perplexity
    higher_is_better = False
    metric_label = "perplexity"
    metric_percent = False

    def __init__(self, ids: dict[str, Tensor], *, recurrent: bool, window: int, char_level: bool = False,
                 eval_split: str = "valid", eval_batch_size: int = 0, steps_per_epoch: int = 0,
                 record: dict | None = None, check_train: bool = True) -> None:
        self.ids = {k: as_ids(v) for k, v in ids.items()}
        self.recurrent, self.window, self.char_level = recurrent, window, char_level
        self.eval_split = eval_split
        self.eval_batch_size = eval_batch_size or (10 if recurrent else 32)
        self._steps_per_epoch = steps_per_epoch
        self._record = dict(record or {})
        self.hidden: dict[int, object] = {}   # training state per micro-batch slot (truncated BPTT)
        self.eval_hidden = None
        if check_train:
            check_window(self.ids["train"], window, "the training split")
        if eval_split in self.ids:  # evaluation reads partial windows: two tokens are enough
            check_window(self.ids[eval_split], 1, f"the {eval_split} split")

    # --- training ------------------------------------------------------------------------------
    def steps_per_epoch(self, plan) -> int:
        n = self.ids["train"].numel()
        if self.recurrent:
            return num_bptt_windows(batchify(self.ids["train"], plan.batch_size, self.window, "the training split"),
                                    self.window)
        return self._steps_per_epoch or max(1, n // (plan.batch_size * self.window))

    def train_batches(self, plan) -> Iterator[list]:
        if self.recurrent:
            yield from self._bptt_batches(plan)
        else:
            yield from self._window_batches(plan)

    def _bptt_batches(self, plan) -> Iterator[list]:
        rows = batchify(self.ids["train"], plan.batch_size, self.window, "the training split")  # (B, N)
        if plan.start_step == 0:
            self.hidden = {}  # a new epoch starts from the zero state
        for s, (x, y) in enumerate(bptt_windows(rows, self.window)):
            if s < plan.start_step:
                continue
            micro = []
            for j, (xj, yj) in enumerate(zip(x.tensor_split(plan.accum_steps), y.tensor_split(plan.accum_steps))):
                micro.append((xj[plan.rank::plan.world_size], yj[plan.rank::plan.world_size], j))
            yield micro

    def _window_batches(self, plan) -> Iterator[list]:
        for s in range(plan.start_step, self.steps_per_epoch(plan)):
            g = torch.Generator().manual_seed(plan.step_seed(s))
            x, y = random_windows(self.ids["train"], plan.batch_size, self.window, g)
            yield [(xj[plan.rank::plan.world_size], yj[plan.rank::plan.world_size])
                   for xj, yj in zip(x.tensor_split(plan.accum_steps), y.tensor_split(plan.accum_steps))]

    def train_step(self, model: nn.Module, batch, cfg) -> tuple[Tensor, dict[str, Tensor]]:
        if self.recurrent:
            x, y, slot = batch
            logits, h = model(x, self.hidden.get(slot))
            self.hidden[slot] = RecurrentLM.detach_hidden(h)  # truncated BPTT: keep the values, cut the graph
        else:
            x, y = batch
            logits = model(x)
        return lm_sums(logits, y, getattr(cfg, "label_smoothing", 0.0))

    # --- evaluation ----------------------------------------------------------------------------
    def eval_batches(self, plan, split: str | None = None) -> Iterator:
        ids = self.ids[split or self.eval_split]
        if self.recurrent:
            rows = min(self.eval_batch_size, max(1, (ids.numel() - 1) // 2))
            data = batchify(ids, rows, 1, f"the {split or self.eval_split} split")[plan.rank::plan.world_size]
            self.eval_hidden = None
            for x, y in bptt_windows(data, self.window):
                yield x, y, "eval"
            return
        n = (ids.numel() - 1) // self.window
        x = ids[: n * self.window].view(n, self.window)
        y = ids[1 : n * self.window + 1].view(n, self.window)
        mine = torch.arange(plan.rank, n, plan.world_size)
        for idx in mine.split(self.eval_batch_size):
            yield x[idx], y[idx]
        tail = ids.numel() - 1 - n * self.window
        if tail > 0 and plan.rank == 0:  # the last partial window
            yield ids[n * self.window : -1][None], ids[n * self.window + 1 :][None]

    def eval_step(self, model: nn.Module, batch, cfg) -> dict[str, Tensor]:
        if self.recurrent:
            x, y, _ = batch
            logits, self.eval_hidden = model(x, self.eval_hidden)
        else:
            x, y = batch
            logits = model(x)
        return lm_sums(logits, y)[1]

    def summarize(self, sums: dict[str, Tensor]) -> dict[str, float]:
        return summarize_lm(sums, self.char_level)

    def record(self) -> dict:
        return dict(self._record)

    def state_dict(self) -> dict:
        return {"hidden": {int(k): v for k, v in self.hidden.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.hidden = {int(k): v for k, v in state.get("hidden", {}).items()}


# --- building a run ----------------------------------------------------------------------------------

def encode_corpus(tok: Tokenizer, splits: dict[str, str]) -> dict[str, Tensor]:
    out = {}
    for name, text in splits.items():
        ids = tok.encode(text)
        if len(ids) < 2:
            raise DataError(f"the {name} split has {len(ids)} token(s); a language model needs at least 2")
        out[name] = torch.tensor(ids, dtype=torch.long)
    return out


def build_tokenizer(dc: LMDataConfig, corpus) -> Tokenizer:
    if dc.tokenizer == "char":
        # The alphabet is the set of characters of all the given files (a set, not statistics).
        return train_tokenizer("char", *corpus.splits().values())
    if dc.tokenizer == "word":
        return train_tokenizer("word", corpus.train, min_freq=dc.min_freq)
    return train_tokenizer("bpe", corpus.train, vocab_size=dc.bpe_vocab_size)


def prepare(dc: LMDataConfig, mc: LMModelConfig):
    """(tokenizer, ids per split, model config, corpus) from the data and model options."""
    corpus = load_corpus(dc.text, train=dc.train, valid=dc.valid, test=dc.test, valid_fraction=dc.valid_fraction)
    tok = build_tokenizer(dc, corpus)
    ids = encode_corpus(tok, corpus.splits())
    return tok, ids, model_config_from(mc, tok.vocab_size, dc.window), corpus


def _abs(p: str | None) -> str | None:
    return None if p is None else str(Path(p).resolve())


def default_run_dir(dc: LMDataConfig, mc: LMModelConfig) -> Path:
    src = Path(dc.text or dc.train or "text").name.split(".")[0]
    return Path("runs") / f"lm-{mc.model}-{src}-{dc.tokenizer}-{time.strftime('%Y%m%d-%H%M%S')}"


def train_lm(dc: LMDataConfig, mc: LMModelConfig, cfg: TrainConfig, run_dir: str | Path | None, *,
             log=print, progress: bool = True, resume: bool = False, overwrite: bool = False,
             command: list[str] | None = None) -> dict:
    """Train a language model into ``run_dir`` (None: nothing written); returns the engine's
    summary plus ``params``, ``title`` and ``model``."""
    from attnlab.train import checkpoint as ckpt
    from attnlab.train.engine import Trainer
    from attnlab.train.run import open_run_dir, start

    log = log or (lambda s: None)
    info = start(cfg)
    run_dir = None if run_dir is None else Path(run_dir)
    if resume:
        if run_dir is None:
            raise ConfigError("resuming needs the run directory")
        tok = load_tokenizer(run_dir / TOKENIZER_FILE)
        corpus = load_corpus(dc.text, train=dc.train, valid=dc.valid, test=dc.test, valid_fraction=dc.valid_fraction)
        ids = encode_corpus(tok, corpus.splits())
        mcfg = model_config_from(mc, tok.vocab_size, dc.window)
    else:
        tok, ids, mcfg, corpus = prepare(dc, mc)
    ckpt.seed_everything(cfg.seed)
    model = build_lm(mcfg)
    title = f"{mc.model} language model, {tok.kind} tokens ({Path(dc.text or dc.train).name})"
    data = {**to_dict(dc), "text": _abs(dc.text), "train": _abs(dc.train), "valid": _abs(dc.valid),
            "test": _abs(dc.test)}
    record = {
        "lm": {"model_config": lm_config_to_dict(mcfg), "options": to_dict(mc), "data": data,
               "tokenizer": TOKENIZER_FILE, "tokenizer_kind": tok.kind, "vocab_size": tok.vocab_size,
               "corpus": corpus.source, "tokens": {k: int(v.numel()) for k, v in ids.items()},
               "params": count_parameters(model)},
    }
    if run_dir is not None and not resume:
        open_run_dir(run_dir, overwrite=overwrite, task=TASK, cfg=cfg, info=info, command=command,
                     record={"model": mc.model, "title": title, **record},
                     write_files=lambda d: tok.save(d / TOKENIZER_FILE))
    task = LMTask({k: v for k, v in ids.items() if k != "test"}, recurrent=mc.model in RECURRENT_CELLS,
                  window=dc.window, char_level=tok.kind == "char", eval_batch_size=dc.eval_batch_size,
                  steps_per_epoch=dc.steps_per_epoch, record=record)
    meta = {"model": mc.model, "title": title}
    trainer = Trainer(model, task, cfg, run_dir, meta=meta, log=log if info.is_main else None, progress=progress)
    if info.is_main:
        log(f"{'resuming' if resume else 'training'} {title}: {count_parameters(model):,} parameters, "
            f"vocabulary {tok.vocab_size:,}; train {ids['train'].numel():,} tokens, valid {ids['valid'].numel():,}; "
            f"{cfg.epochs} epochs x {trainer.steps_per_epoch} steps of {cfg.batch_size} x {dc.window} tokens")
    summary = trainer.fit(resume_from=run_dir if resume else None)
    summary.update(params=count_parameters(model), title=title, model=model)
    return summary


# --- loading a run -----------------------------------------------------------------------------------

def _read_record(run_dir: str | Path, tag: str) -> dict:
    from attnlab.train import checkpoint as ckpt

    rec = ckpt.read_record(run_dir, tag)
    if rec.get("task") != TASK or "lm" not in rec:
        raise CheckpointError(f"{run_dir} is not a language-model run (task {rec.get('task')!r})")
    return rec


def load_run(run_dir: str | Path, tag: str = "last"):
    """(model in eval mode, tokenizer, record) of a language-model run directory."""
    from attnlab.train import checkpoint as ckpt

    run_dir = Path(run_dir)
    rec = _read_record(run_dir, tag)
    tok = load_tokenizer(run_dir / rec["lm"].get("tokenizer", TOKENIZER_FILE))
    model = build_lm(lm_config_from_dict(rec["lm"]["model_config"]))
    ckpt.load_into(model, ckpt.load_weights(run_dir, rec), f"{run_dir}/{rec['path']}")
    return model.eval(), tok, rec


@torch.no_grad()
def evaluate_ids(model: nn.Module, ids: Tensor, window: int, char_level: bool, eval_batch_size: int = 0) -> dict:
    """Loss, perplexity, accuracy (and bits per character) of ``model`` on one token stream."""
    from attnlab.train.engine import Plan

    recurrent = getattr(model, "is_recurrent", False)
    task = LMTask({"train": ids, "eval": ids}, recurrent=recurrent, window=window, char_level=char_level,
                  eval_split="eval", eval_batch_size=eval_batch_size, check_train=False)
    was = model.training
    model.eval()
    sums: dict[str, Tensor] = {}
    t = time.perf_counter()
    for batch in task.eval_batches(Plan()):
        for k, v in task.eval_step(model, batch, None).items():
            sums[k] = sums.get(k, 0) + v.double()
    model.train(was)
    out = task.summarize(sums)
    out["seconds"] = round(time.perf_counter() - t, 3)
    return out


# --- the command line (discovered by `attnlab train` / `attnlab eval`) --------------------------------

def add_train_arguments(parser) -> None:
    add_arguments(parser, LMDataConfig, "data")
    add_arguments(parser, LMModelConfig, "model")
    add_arguments(parser, TrainConfig, "training (language-model defaults: "
                  + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in TRAIN_DEFAULTS.items()) + ")")


def configs_from_args(args, base: dict | None = None):
    dc, _ = from_args(LMDataConfig, args, (base or {}).get("data"))
    mc, _ = from_args(LMModelConfig, args, (base or {}).get("model"))
    train_base = {**TRAIN_DEFAULTS, **((base or {}).get("train") or {})}
    if getattr(args, "warmup_epochs", None) is not None and getattr(args, "warmup_steps", None) is None:
        train_base.pop("warmup_steps", None)
    cfg, _ = from_args(TrainConfig, args, train_base)
    return dc, mc, cfg


def evaluate_run(run_dir: str | Path, args=None) -> dict:
    """Validation (and test) metrics of a run's checkpoint, from the files it was trained on."""
    from attnlab.train import checkpoint as ckpt

    tag = getattr(args, "which", None) or "last"
    if not ckpt.has_record(run_dir, tag):
        tag = "last"
    model, tok, rec = load_run(run_dir, tag)
    d = rec["lm"]["data"]
    corpus = load_corpus(d.get("text"), train=d.get("train"), valid=d.get("valid"), test=d.get("test"),
                         valid_fraction=d.get("valid_fraction", 0.1))
    out = {"run_dir": str(run_dir), "checkpoint": tag, "step": rec.get("step"), "model": rec["lm"]["model_config"]["model"],
           "params": rec["lm"].get("params"), "tokenizer": tok.kind}
    for split in ("valid", "test"):
        text = getattr(corpus, split)
        if text is None:
            continue
        ids = torch.tensor(tok.encode(text), dtype=torch.long)
        out[split] = evaluate_ids(model, ids, d["window"], tok.kind == "char", d.get("eval_batch_size", 0))
    return out


def format_eval(res: dict) -> str:
    lines = [f"{res['run_dir']} ({res['checkpoint']} checkpoint, step {res['step']}): {res['model']}, "
             f"{res.get('params') or 0:,} parameters, {res['tokenizer']} tokens"]
    for split in ("valid", "test"):
        if split in res:
            r = res[split]
            extra = f"  bits/char {r['bpc']:.4f}" if "bpc" in r else ""
            lines.append(f"  {split:5s}  loss {r['loss']:.4f} nats/token  perplexity {r['ppl']:.2f}  "
                         f"accuracy {100 * r['acc']:.2f}%{extra}  ({int(r['tokens']):,} tokens, {r['seconds']:.1f}s)")
    return "\n".join(lines)


RESUMABLE_CHANGES = {"device", "threads", "eval_batch_size", "epochs"}


def train_from_args(args, log=print, progress: bool = True) -> dict:
    """``attnlab train lm``: build everything from the parsed options and train."""
    from attnlab.train import checkpoint as ckpt

    resume = getattr(args, "resume", None)
    base = None
    if resume:
        rec = ckpt.read_record(resume, "last")
        if rec.get("task") != TASK or "lm" not in rec:
            raise CheckpointError(f"{resume} is a {rec.get('task')!r} run, not a language-model run")
        base = {"data": rec["lm"]["data"], "model": rec["lm"]["options"], "train": rec["train_config"]}
    dc, mc, cfg = configs_from_args(args, base)
    if resume:
        given = {k for k in (vars(args)) if getattr(args, k) is not None}
        changed = sorted(k for k in given if k not in RESUMABLE_CHANGES and k in base["data"] | base["model"] | base["train"]
                         and _norm(getattr(dc if k in base["data"] else mc if k in base["model"] else cfg, k))
                         != _norm((base["data"] if k in base["data"] else base["model"] if k in base["model"]
                                   else base["train"]).get(k)))
        if changed:
            raise ConfigError(f"--resume continues {resume} with its own settings; these options differ from the run's: "
                              + ", ".join("--" + k.replace("_", "-") for k in changed))
    elif dc.text is None and dc.train is None:
        raise ConfigError("give the text to learn: --text FILE, or --train FILE --valid FILE [--test FILE]")
    run_dir = Path(resume) if resume else Path(args.run_dir) if getattr(args, "run_dir", None) else default_run_dir(dc, mc)
    return train_lm(dc, mc, cfg, run_dir, log=log, progress=progress, resume=bool(resume),
                    overwrite=getattr(args, "overwrite", False), command=getattr(args, "argv", None))


def _norm(v):
    return list(v) if isinstance(v, (tuple, list)) else v
