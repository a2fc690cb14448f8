"""Autoregressive decoding for encoder–decoder models: batched greedy search and beam search.

Both run the encoder once per batch and then the decoder one token at a time through the
model's stepper (:mod:`attnlab.decode.stepper`: ``step(new) -> logits``, ``select(index)``).

Results are lists of token ids without the start and end tokens. Maximum lengths are relative
to each sentence's own source length (``max_len_a * len(src) + max_len_b``), so a sentence
translates the same alone or in a padded batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attnlab.decode.stepper import make_stepper
from attnlab.errors import ConfigError, ShapeError


@dataclass
class SearchConfig:
    """Options shared by greedy and beam search.

    ``max_len_a``/``max_len_b``: at most ``a * source_length + b`` new tokens (the end token
    included); ``max_len`` (if set) is an absolute cap on top. ``eos`` may be ``None`` to always
    generate the maximum (speed measurements). ``length_penalty`` α ranks finished beam
    hypotheses by log P / length^α (0: raw log-probability; 1: per-token average).
    """

    bos: int = 1
    eos: int | None = 2
    pad: int = 0
    max_len_a: float = 1.5
    max_len_b: int = 10
    max_len: int | None = None
    beam: int = 1
    length_penalty: float = 1.0
    use_cache: bool = True


def _limits(src: Tensor, cfg: SearchConfig) -> Tensor:
    """(B,) maximum number of new tokens per sentence."""
    src_len = (src != cfg.pad).sum(1)
    lim = (cfg.max_len_a * src_len.float() + cfg.max_len_b).long().clamp(min=1)
    if cfg.max_len is not None:
        lim = lim.clamp(max=cfg.max_len)
    return lim


def forbid_special(scores: Tensor, cfg: SearchConfig) -> Tensor:
    """``scores`` (N, V) with the start and padding tokens at -inf: a translation contains
    neither, so no decoder (ours, or an exported graph's) may produce them."""
    scores[:, [t for t in (cfg.bos, cfg.pad) if t != cfg.eos]] = float("-inf")
    return scores


def next_scores(stepper, prefix: Tensor, cfg: SearchConfig) -> Tensor:
    """Log-probabilities (N, V) of the token after ``prefix`` (N, t)."""
    return forbid_special(stepper.step(prefix[:, -1:]).float().log_softmax(-1), cfg)


def _check(src: Tensor) -> None:
    if src.dim() != 2:
        raise ShapeError(f"expected source token ids (B, Ts), got shape {tuple(src.shape)}")


@torch.inference_mode()
def greedy_search(model, src: Tensor, cfg: SearchConfig | None = None, **kw) -> list[list[int]]:
    """Pick the most probable token at each step. src (B, Ts) padded with ``cfg.pad``.

    Sentences leave the batch as soon as they emit the end token or reach their limit.
    """
    cfg = SearchConfig(**kw) if cfg is None else cfg
    _check(src)
    b = src.shape[0]
    limits = _limits(src, cfg)
    stepper = make_stepper(model, src, cfg.use_cache)
    prefix = torch.full((b, 1), cfg.bos, dtype=torch.long, device=src.device)
    alive = torch.arange(b, device=src.device)  # original sentence of each row
    out: list[list[int]] = [[] for _ in range(b)]
    for t in range(1, int(limits.max()) + 1):
        nxt = next_scores(stepper, prefix, cfg).argmax(-1)  # (N,)
        prefix = torch.cat([prefix, nxt[:, None]], dim=1)
        done = limits[alive] <= t
        if cfg.eos is not None:
            done |= nxt == cfg.eos
        if bool(done.any()):
            for r in done.nonzero().flatten().tolist():
                toks = prefix[r, 1:].tolist()
                out[int(alive[r])] = toks[:-1] if cfg.eos is not None and toks[-1] == cfg.eos else toks
            keep = (~done).nonzero().flatten()
            if keep.numel() == 0:
                break
            prefix, alive = prefix[keep], alive[keep]
            stepper.select(keep)
    return out


@torch.inference_mode()
def beam_search(model, src: Tensor, cfg: SearchConfig | None = None, **kw) -> list[list[int]]:
    """Keep the ``cfg.beam`` most probable prefixes of each sentence at every step.

    Each step ranks beam × vocabulary extensions by total log-probability and looks at the
    best 2·beam: an end token among the best ``beam`` finishes a hypothesis (scored
    log P / length^α); the best ``beam`` others continue. A sentence is done when it has
    ``beam`` finished hypotheses or reaches its length limit; the best finished one wins.
    With ``beam=1`` this is exactly greedy search.
    """
    cfg = SearchConfig(**kw) if cfg is None else cfg
    _check(src)
    k = cfg.beam
    if k < 1:
        raise ConfigError(f"beam size must be >= 1, got {k}")
    b, dev = src.shape[0], src.device
    limits = _limits(src, cfg).tolist()
    stepper = make_stepper(model, src, cfg.use_cache)  # encoder runs once per sentence...
    stepper.select(torch.arange(b, device=dev).repeat_interleave(k))  # ...then its rows are copied per beam
    prefix = torch.full((b * k, 1), cfg.bos, dtype=torch.long, device=dev)
    scores = torch.full((b, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # all beams start identical: only the first one may expand
    alive = list(range(b))  # original sentence of each group of k rows
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
    for t in range(1, max(limits) + 1):
        logp = next_scores(stepper, prefix, cfg)  # (N*k, V)
        v = logp.shape[-1]
        cand = (scores[:, :, None] + logp.view(-1, k, v)).view(-1, k * v)  # (N, k*V)
        top_s, top_i = cand.topk(min(2 * k, k * v), dim=-1)
        top_beam, top_tok = top_i // v, top_i % v
        rows, toks, new_scores, keep_groups = [], [], [], []
        s_list, b_list, t_list = top_s.tolist(), top_beam.tolist(), top_tok.tolist()
        for g, sent in enumerate(alive):
            at_limit = t >= limits[sent]
            live: list[tuple[int, int, float]] = []
            for rank, (s, bi, tok) in enumerate(zip(s_list[g], b_list[g], t_list[g])):
                if s == float("-inf"):
                    break
                is_eos = cfg.eos is not None and tok == cfg.eos
                if rank < k and (is_eos or at_limit):
                    hyp = prefix[g * k + bi, 1:].tolist() + ([] if is_eos else [tok])
                    finished[sent].append((s / (t ** cfg.length_penalty), hyp))
                elif not is_eos and len(live) < k:
                    live.append((bi, tok, s))
            if at_limit or len(finished[sent]) >= k:
                continue
            while len(live) < k:  # too few finite candidates (tiny vocabularies): pad with dead beams
                live.append((0, cfg.pad, float("-inf")))
            keep_groups.append(sent)
            for bi, tok, s in live:
                rows.append(g * k + bi)
                toks.append(tok)
                new_scores.append(s)
        if not keep_groups:
            break
        index = torch.tensor(rows, device=dev)
        stepper.select(index)
        prefix = torch.cat([prefix.index_select(0, index), torch.tensor(toks, device=dev)[:, None]], dim=1)
        scores = torch.tensor(new_scores, device=dev).view(-1, k)
        alive = keep_groups
    return [max(f, key=lambda x: x[0])[1] if f else [] for f in finished]


def translate_ids(model, src: Tensor, cfg: SearchConfig | None = None, **kw) -> list[list[int]]:
    """Greedy search when ``cfg.beam == 1``, beam search otherwise."""
    cfg = SearchConfig(**kw) if cfg is None else cfg
    return greedy_search(model, src, cfg) if cfg.beam == 1 else beam_search(model, src, cfg)
