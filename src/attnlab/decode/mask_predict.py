"""Mask-predict: non-autoregressive decoding by iterative refinement (Ghazvininejad et al. 2019).

For each source sentence:

1. predict the target length; keep the ``length_beam`` most probable lengths L;
2. iteration 0: the decoder sees L ``<mask>`` tokens and predicts all L tokens at once;
3. iteration t = 1 .. T-1: re-mask the n = L·(T−t)/T tokens the model is least sure of and
   predict them again (the others keep their tokens and probabilities);
4. among the length candidates keep the one with the highest mean token log-probability plus
   the length's own log-probability.

Every iteration is one parallel decoder pass over the whole target, so the cost grows with T,
not with the target length. Works with :class:`attnlab.models.seq2seq.MaskPredictTransformer`
(``encode``, ``predict_length``, ``decode``, ``mask_id``, ``pad_id``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.errors import ConfigError


@torch.inference_mode()
def mask_predict(model, src: Tensor, *, iterations: int = 10, length_beam: int = 3,
                 forbidden: tuple[int, ...] = (0, 1, 2)) -> list[list[int]]:
    """src (B, Ts) padded with ``model.pad_id`` -> token ids per sentence.

    ``forbidden``: ids never produced (by default pad, start and end tokens, which a
    non-autoregressive target does not contain).
    """
    if iterations < 1 or length_beam < 1:
        raise ConfigError(f"mask-predict needs iterations >= 1 and length_beam >= 1, got {iterations}, {length_beam}")
    b = src.shape[0]
    memory, mem_mask = model.encode(src)
    len_logits = model.predict_length(memory, mem_mask)
    len_logits[:, 0] = float("-inf")  # a translation has at least one token
    k = min(length_beam, len_logits.shape[-1] - 1)
    len_logp, lengths = len_logits.log_softmax(-1).topk(k, dim=-1)
    len_logp, lengths = len_logp.flatten(), lengths.flatten()  # (B*k,)
    rows = torch.arange(b, device=src.device).repeat_interleave(k)
    memory, mem_mask = memory.index_select(0, rows), mem_mask.index_select(0, rows)
    n_rows, t_max = lengths.shape[0], int(lengths.max())
    valid = torch.arange(t_max, device=src.device)[None, :] < lengths[:, None]  # (N, T)
    tokens = torch.full((n_rows, t_max), model.mask_id, dtype=torch.long, device=src.device).masked_fill(~valid, model.pad_id)
    probs = torch.zeros(n_rows, t_max, device=src.device)
    masked = valid.clone()
    for it in range(iterations):
        logits = model.decode(tokens, memory, mem_mask).float()
        if forbidden:
            logits[..., list(forbidden)] = float("-inf")
        p, pred = logits.log_softmax(-1).max(-1)  # (N, T)
        tokens = torch.where(masked, pred, tokens)
        probs = torch.where(masked, p, probs)
        if it == iterations - 1:
            break
        n = (lengths.float() * (iterations - 1 - it) / iterations).long()  # how many to re-mask
        if int(n.max()) == 0:
            break
        order = probs.masked_fill(~valid, float("inf")).argsort(-1)  # least confident first
        ranks = order.argsort(-1)
        masked = (ranks < n[:, None]) & valid
        tokens = tokens.masked_fill(masked, model.mask_id)
    # Mean token log-probability, plus the length predictor's log-probability of the length
    # (the mean alone favours lengths where a short or padded output is easy to be sure of).
    score = (probs * valid).sum(-1) / lengths.float() + len_logp
    best = score.view(b, k).argmax(-1)
    out = []
    for i in range(b):
        r = i * k + int(best[i])
        out.append(tokens[r, : int(lengths[r])].tolist())
    return out
