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
character loss / ln 2 for character models. The engine keeps the checkpoint with the lowest
validation perplexity as "best"; ``last`` is the end of training. Models come from the registry
(``--model transformer_lm_char``, ``lstm_lm_small``...; the vocabulary size and, for the
Transformer, the context length ``max_len`` = ``--window`` are set by the data).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.data.text import (
    TextCorpus,
    as_ids,
    batchify,
    bptt_windows,
    check_window,
    load_corpus,
    num_bptt_windows,
    random_windows,
)
from attnlab.data.tokenizers import TOKENIZER_KINDS, Tokenizer, load_tokenizer, train_tokenizer
from attnlab.errors import ConfigError, DataError
from attnlab.models.capabilities import LanguageModel
from attnlab.models.lm import RecurrentLM
from attnlab.tasks.spec import LoadedRun, TaskSpec
from attnlab.train.config import TrainConfig, opt, positive_int, unit_float
from attnlab.train.engine import evaluation_sums, model_device
from attnlab.train.sampler import Plan

TASK = "lm"
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
                           "Transformer (its max_len)", positive_int, metavar="T")
    eval_batch_size: int | None = opt(None, "rows (recurrent) or windows (Transformer) per evaluation batch "
                                            "(default: 10 rows / 32 windows)", positive_int, metavar="N")
    steps_per_epoch: int | None = opt(None, "Transformer: optimizer steps per epoch (default: as many tokens as the "
                                            "training split)", positive_int, metavar="N")

    def validate(self) -> LMDataConfig:
        if self.text is None and self.train is None:
            raise ConfigError("give the text to learn: --text FILE, or --train FILE --valid FILE [--test FILE]")
        return self


@dataclass
class LMEvalConfig:
    """Options of ``attnlab eval`` for language-model runs."""

    batch_size: int | None = opt(None, "rows (recurrent) or windows (Transformer) per batch (default: the run's)",
                                 positive_int, metavar="N")


# --- the task -------------------------------------------------------------------------------------------

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
                 eval_split: str = "valid", eval_batch_size: int | None = None, steps_per_epoch: int | None = None,
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
    def num_eval_batches(self, split: str | None = None) -> int:
        """Batches of :meth:`eval_batches` on one process (for progress bars)."""
        n = self.ids[split or self.eval_split].numel() - 1
        if self.recurrent:  # rows of (n + 1) // rows tokens, read in windows
            rows = min(self.eval_batch_size, max(1, n // 2))
            return -(-((n + 1) // rows - 1) // self.window)
        windows = n // self.window
        return -(-windows // self.eval_batch_size) + (n > windows * self.window)

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


# --- data ----------------------------------------------------------------------------------------

def _abs(p: str | None) -> str | None:
    return None if p is None else str(Path(p).resolve())


def read_corpus(dc: LMDataConfig) -> TextCorpus:
    return load_corpus(dc.text, train=dc.train, valid=dc.valid, test=dc.test, valid_fraction=dc.valid_fraction)


@dataclass
class LMData:
    """A tokenized corpus, as the run layer sees it (:class:`attnlab.tasks.spec.TaskData`)."""

    config: LMDataConfig
    corpus: TextCorpus
    tokenizer: Tokenizer
    ids: dict[str, Tensor]
    title: str
    model_fields: dict = field(default_factory=dict)

    def describe(self) -> str:
        return (f"vocabulary {self.tokenizer.vocab_size:,} ({self.tokenizer.kind}); train {self.ids['train'].numel():,} "
                f"tokens, valid {self.ids['valid'].numel():,}; windows of {self.config.window}")

    def write_files(self, run_dir: Path) -> None:
        self.tokenizer.save(run_dir / TOKENIZER_FILE)


def load_data(dc: LMDataConfig, mcfg=None, run_dir: Path | None = None, progress: bool = True,
              model_name: str = "") -> LMData:
    """Read the corpus, build the tokenizer (or reuse the one of the run being resumed) and
    encode every split. The vocabulary size and the context length become model fields."""
    dc.validate()
    for name in ("text", "train", "valid", "test"):  # the run records absolute paths
        setattr(dc, name, _abs(getattr(dc, name)))
    corpus = read_corpus(dc)
    tok = load_tokenizer(run_dir / TOKENIZER_FILE) if run_dir is not None else build_tokenizer(dc, corpus)
    ids = encode_corpus(tok, corpus.splits())
    return LMData(dc, corpus, tok, ids, title=f"language model, {tok.kind} tokens ({Path(dc.text or dc.train).name})",
                  model_fields={"vocab_size": tok.vocab_size, "max_len": dc.window})


def make_task(data: LMData, model: nn.Module, cfg: TrainConfig) -> LMTask:
    dc, tok = data.config, data.tokenizer
    data.title = f"{model.name} {data.title}"
    record = {"tokenizer": TOKENIZER_FILE, "tokenizer_kind": tok.kind, "vocab_size": tok.vocab_size,
              "corpus": data.corpus.source, "tokens": {k: int(v.numel()) for k, v in data.ids.items()}}
    return LMTask({k: v for k, v in data.ids.items() if k != "test"}, recurrent=getattr(model, "is_recurrent", False),
                  window=dc.window, char_level=tok.kind == "char", eval_batch_size=dc.eval_batch_size,
                  steps_per_epoch=dc.steps_per_epoch, record=record)


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


# --- using a trained run ------------------------------------------------------------------------------

def load_extras(run_dir: Path, rec: dict) -> dict:
    return {"tokenizer": load_tokenizer(Path(run_dir) / rec.get("tokenizer", TOKENIZER_FILE))}


@torch.no_grad()
def evaluate_ids(model: nn.Module, ids: Tensor, window: int, char_level: bool, eval_batch_size: int | None = None,
                 progress: bool = False) -> dict:
    """Loss, perplexity, accuracy (and bits per character) of ``model`` on one token stream."""
    recurrent = getattr(model, "is_recurrent", False)
    task = LMTask({"train": ids, "eval": ids}, recurrent=recurrent, window=window, char_level=char_level,
                  eval_split="eval", eval_batch_size=eval_batch_size, check_train=False)
    t = time.perf_counter()
    device = model_device(model)
    sums = evaluation_sums(task, model, task.eval_batches(Plan()), device, progress=progress,
                           total=task.num_eval_batches("eval"))
    out = task.summarize(sums)
    out["seconds"] = round(time.perf_counter() - t, 3)
    return out




def evaluate(run: LoadedRun, ec: LMEvalConfig, progress: bool = True) -> tuple[dict, dict]:
    """Loss, perplexity, accuracy (and bits per character) on the validation and test texts
    the run was trained with."""
    rec, tok = run.record, run.extras["tokenizer"]
    dc = LMDataConfig(**{k: v for k, v in rec["data_config"].items() if k in LMDataConfig.__dataclass_fields__})
    corpus = read_corpus(dc)
    out = {"slug": "valid-test", "run_dir": str(run.run_dir), "checkpoint": run.which, "step": rec.get("step"),
           "model": run.name, "parameters": rec["model"].get("parameters"), "tokenizer": tok.kind}
    for split in ("valid", "test"):
        text = getattr(corpus, split)
        if text is not None:
            ids = torch.tensor(tok.encode(text), dtype=torch.long)
            out[split] = evaluate_ids(run.model, ids, dc.window, tok.kind == "char", ec.batch_size or dc.eval_batch_size,
                                      progress)
    return out, {}


SPEC = TaskSpec(
    name=TASK,
    help="language modelling: RNN / GRU / LSTM / Transformer LMs on local text (characters, words or BPE)",
    data_config=LMDataConfig,
    load_data=load_data,
    make_task=make_task,
    model_kinds=(LanguageModel,),
    default_model="transformer_lm_char",
    train_defaults=TRAIN_DEFAULTS,
    load_extras=load_extras,
    eval_config=LMEvalConfig,
    evaluate=evaluate,
)
