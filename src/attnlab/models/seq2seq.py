"""Sequence-to-sequence models for translation.

- ``transformer``: :class:`attnlab.nn.Transformer` itself (no wrapper): ``model(src, tgt_in)``
  gives teacher-forced logits, ``encode``/``decode`` serve greedy and beam search.
- ``gru-attention``: :class:`GRUAttentionSeq2Seq`, the RNN encoder–decoder with additive
  attention of Bahdanau, Cho & Bengio (2015) — the baseline whose recurrence the Transformer
  removed.
- ``nat``: :class:`MaskPredictTransformer`, a non-autoregressive conditional masked LM
  (Ghazvininejad et al. 2019, "Mask-Predict"): the same encoder and decoder stacks, the decoder
  without its causal mask, plus a target-length predictor.

All take ``(src, tgt_in)`` token ids (B, Ts), (B, Tt) padded with ``pad_id`` and return logits
(B, Tt, V), so one loss and one training loop serve all three. Each declares how it decodes
(``decoding``, :class:`attnlab.models.capabilities.Translator`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from attnlab.errors import ConfigError
from attnlab.models.capabilities import AUTOREGRESSIVE, MASK_PREDICT
from attnlab.models.registry import config_from, register_model
from attnlab.nn import AdditiveAttention, Transformer, TransformerConfig

MODEL_TYPES = ("transformer", "gru-attention", "nat")


# --- GRU + additive attention -------------------------------------------------------------------

@dataclass
class GRUAttentionConfig:
    src_vocab_size: int
    tgt_vocab_size: int
    embed_dim: int = 256
    hidden_dim: int = 512  # per direction in the encoder; the decoder's state size
    attn_dim: int = 512
    num_layers: int = 1  # encoder layers
    dropout: float = 0.3
    share_embeddings: bool = False
    tie_output: bool = False
    pad_id: int = 0

    def __post_init__(self) -> None:
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ConfigError("share_embeddings needs one joint vocabulary: src_vocab_size == tgt_vocab_size")


class GRUAttentionSeq2Seq(nn.Module):
    """Bahdanau et al. (2015). Encoder: bidirectional GRU, annotations h_j = [→h_j; ←h_j].
    Decoder, at step i with state s_{i-1} and previous word y_{i-1}:

        c_i = Σ_j α_ij h_j,  α_i = softmax_j(vᵀ tanh(W s_{i-1} + U h_j))   (additive attention)
        s_i = GRU([E y_{i-1}; c_i], s_{i-1})
        p(y_i | ...) = softmax(W_o tanh(L [s_i; c_i; E y_{i-1}]))

    s_0 = tanh(W_s ←h_1) as in the paper. Padding is packed away, so a sentence encodes the
    same alone or in a padded batch.
    """

    decoding = AUTOREGRESSIVE  # through stepper(src, cached) (attnlab.models.capabilities.Translator)

    def __init__(self, cfg: GRUAttentionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        e, h = cfg.embed_dim, cfg.hidden_dim
        self.src_embed = nn.Embedding(cfg.src_vocab_size, e, padding_idx=cfg.pad_id)
        self.tgt_embed = self.src_embed if cfg.share_embeddings else nn.Embedding(cfg.tgt_vocab_size, e, padding_idx=cfg.pad_id)
        self.encoder = nn.GRU(e, h, num_layers=cfg.num_layers, batch_first=True, bidirectional=True,
                              dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        self.init_state = nn.Linear(h, h)
        self.attention = AdditiveAttention(query_dim=h, key_dim=2 * h, hidden_dim=cfg.attn_dim)
        self.cell = nn.GRUCell(e + 2 * h, h)
        self.pre_out = nn.Linear(h + 2 * h + e, e)
        self.out = nn.Linear(e, cfg.tgt_vocab_size)
        if cfg.tie_output:
            self.out.weight = self.tgt_embed.weight
        self.drop = nn.Dropout(cfg.dropout)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """src (B, Ts) -> annotations (B, Ts, 2H), valid (B, Ts) bool, initial state s_0 (B, H)."""
        valid = src != self.cfg.pad_id
        lengths = valid.sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(self.drop(self.src_embed(src)), lengths, batch_first=True, enforce_sorted=False)
        out, last = self.encoder(packed)
        annotations, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
        s0 = torch.tanh(self.init_state(last[-1]))  # last layer's backward state: ←h_1
        return annotations, valid, s0

    def step(self, y_prev: Tensor, state: Tensor, annotations: Tensor, keys_proj: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """One decoder step: y_prev (N,), state (N, H) -> logits (N, V), new state (N, H)."""
        emb = self.drop(self.tgt_embed(y_prev))
        context, _ = self.attention(state, annotations, mask=valid, keys_proj=keys_proj)  # (N, 2H)
        state = self.cell(torch.cat([emb, context], -1), state)
        hidden = torch.tanh(self.pre_out(self.drop(torch.cat([state, context, emb], -1))))
        return self.out(self.drop(hidden)), state

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        annotations, valid, state = self.encode(src)
        keys_proj = self.attention.project_keys(annotations)
        logits = []
        for i in range(tgt_in.shape[1]):  # teacher forcing
            lg, state = self.step(tgt_in[:, i], state, annotations, keys_proj, valid)
            logits.append(lg)
        return torch.stack(logits, 1)

    def stepper(self, src: Tensor, cached: bool = True) -> _GRUStepper:
        """The decoding stepper (:mod:`attnlab.decode.stepper`); a recurrent state is its own cache."""
        return _GRUStepper(self, src)


class _GRUStepper:
    """Decoding state of :class:`GRUAttentionSeq2Seq`: annotations, projected keys, the state."""

    def __init__(self, model: GRUAttentionSeq2Seq, src: Tensor) -> None:
        self.model = model
        self.annotations, self.valid, self.state = model.encode(src)
        self.keys_proj = model.attention.project_keys(self.annotations)

    def step(self, new: Tensor) -> Tensor:
        for i in range(new.shape[1]):
            logits, self.state = self.model.step(new[:, i], self.state, self.annotations, self.keys_proj, self.valid)
        return logits.float()

    def select(self, index: Tensor) -> None:
        self.state = self.state.index_select(0, index)
        self.annotations = self.annotations.index_select(0, index)
        self.keys_proj = self.keys_proj.index_select(0, index)
        self.valid = self.valid.index_select(0, index)


# --- non-autoregressive: mask-predict -------------------------------------------------------------

@dataclass
class MaskPredictConfig:
    """A conditional masked LM on the Transformer's stacks. ``transformer`` holds the stack
    sizes (its vocabulary sizes are the real ones; one ``<mask>`` id is added on top)."""

    transformer: TransformerConfig
    max_target_len: int = 128
    length_loss_weight: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.transformer, dict):  # read back from a checkpoint's record
            self.transformer = TransformerConfig(**self.transformer)
        if self.transformer.max_len < self.max_target_len + 2:
            raise ConfigError(f"max_target_len {self.max_target_len} needs position encodings for "
                              f"{self.max_target_len + 2} tokens; the Transformer's max_len is {self.transformer.max_len}")


class MaskPredictTransformer(nn.Module):
    """Ghazvininejad et al. (2019). The decoder sees the source memory and a partly masked
    target, attends without a causal mask, and predicts every masked token at once. The target
    length comes from a classifier on the mean-pooled encoder memory.

    ``mask_id`` = the target vocabulary size (an extra embedding row, never predicted).
    """

    decoding = MASK_PREDICT  # attnlab.decode.mask_predict (attnlab.models.capabilities.Translator)

    def __init__(self, cfg: MaskPredictConfig) -> None:
        super().__init__()
        self.cfg = cfg
        t = cfg.transformer
        self.vocab_size = t.tgt_vocab_size
        self.mask_id = t.tgt_vocab_size
        src_v = t.src_vocab_size + 1 if t.share_embeddings else t.src_vocab_size
        core_cfg = {**asdict(t), "src_vocab_size": src_v, "tgt_vocab_size": t.tgt_vocab_size + 1}
        self.core = Transformer(TransformerConfig(**core_cfg))
        self.length_head = nn.Linear(t.d_model, cfg.max_target_len + 1)

    @property
    def pad_id(self) -> int:
        return self.cfg.transformer.pad_id

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        return self.core.encode(src)

    def predict_length(self, memory: Tensor, mask: Tensor) -> Tensor:
        """Length logits (B, max_target_len + 1) from the masked mean of the memory."""
        valid = mask[:, 0, 0, :, None].to(memory.dtype)  # (B, Ts, 1)
        pooled = (memory * valid).sum(1) / valid.sum(1).clamp(min=1)
        return self.length_head(pooled)

    def decode(self, tgt: Tensor, memory: Tensor, memory_mask: Tensor) -> Tensor:
        """tgt (B, Tt): target tokens with some set to ``mask_id`` -> logits (B, Tt, V)."""
        return self.core.decode(tgt, memory, memory_mask, causal=False)[..., : self.vocab_size]

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        memory, mask = self.encode(src)
        return self.decode(tgt, memory, mask)

    def loss(self, src: Tensor, target: Tensor, label_smoothing: float = 0.0, generator=None) -> tuple[Tensor, dict]:
        """Training loss on target (B, Tt) (no start/end tokens, padded): mask a uniformly random
        number of each sentence's tokens, predict them; plus the length loss."""
        pad = self.pad_id
        valid = target != pad
        lengths = valid.sum(1)
        # n ~ U{1..len} tokens masked per sentence, chosen by random scores.
        n = (torch.rand(lengths.shape, generator=generator, device=target.device) * lengths).long() + 1
        scores = torch.rand(target.shape, generator=generator, device=target.device).masked_fill(~valid, 2.0)
        ranks = scores.argsort(1).argsort(1)
        masked = (ranks < n[:, None]) & valid
        tgt_in = target.masked_fill(masked, self.mask_id)
        memory, mask = self.encode(src)
        logits = self.decode(tgt_in, memory, mask)
        tok_loss = F.cross_entropy(logits[masked], target[masked], label_smoothing=label_smoothing)
        len_logits = self.predict_length(memory, mask)
        len_loss = F.cross_entropy(len_logits, lengths.clamp(max=self.cfg.max_target_len))
        stats = {"token_loss": float(tok_loss.detach()), "length_loss": float(len_loss.detach())}
        return tok_loss + self.cfg.length_loss_weight * len_loss, stats


def build_seq2seq(kind: str, src_vocab_size: int, tgt_vocab_size: int, **fields) -> nn.Module:
    """Build a translation model by kind (:data:`MODEL_TYPES`); ``fields`` are config fields."""
    if kind == "transformer":
        return Transformer(TransformerConfig(src_vocab_size, tgt_vocab_size, **fields))
    if kind == "gru-attention":
        return GRUAttentionSeq2Seq(GRUAttentionConfig(src_vocab_size, tgt_vocab_size, **fields))
    if kind == "nat":
        nat_keys = {"max_target_len", "length_loss_weight"}
        nat = {k: fields.pop(k) for k in list(fields) if k in nat_keys}
        return MaskPredictTransformer(MaskPredictConfig(TransformerConfig(src_vocab_size, tgt_vocab_size, **fields), **nat))
    raise ConfigError(f"unknown translation model {kind!r}; choose one of {', '.join(MODEL_TYPES)}")


# --- named configurations (create_model / list_models) ---------------------------------------------
# The paper's Table 3 (WMT14 En-De, one shared BPE vocabulary of about 37,000 tokens, embeddings
# shared by the encoder, the decoder and the output layer), and the sizes of our Multi30k runs.


def _transformer(base: dict, overrides: dict) -> Transformer:
    return Transformer(config_from(TransformerConfig, base, overrides, "Transformer"))


@register_model("transformer_base")
def transformer_base(**overrides) -> Transformer:
    """The base model: d_model 512, 6+6 layers, 8 heads, FFN 2048, dropout 0.1, post-LN (63M
    parameters with the 37,000-token shared vocabulary; the paper's table says 65M)."""
    return _transformer(dict(src_vocab_size=37_000, tgt_vocab_size=37_000, share_embeddings=True), overrides)


@register_model("transformer_big")
def transformer_big(**overrides) -> Transformer:
    """The big model: d_model 1024, 16 heads, FFN 4096, dropout 0.3."""
    return _transformer(dict(src_vocab_size=37_000, tgt_vocab_size=37_000, share_embeddings=True, d_model=1024,
                             num_heads=16, d_ff=4096, dropout=0.3), overrides)


_MULTI30K = dict(src_vocab_size=8000, tgt_vocab_size=8000, share_embeddings=True)


@register_model("transformer_multi30k")
def transformer_multi30k(**overrides) -> Transformer:
    """What ``attnlab train translate`` builds by default: d_model 256, 3+3 layers, 8 heads,
    FFN 512, joint 8,000-token vocabulary."""
    return _transformer(dict(**_MULTI30K, d_model=256, num_heads=8, num_encoder_layers=3, num_decoder_layers=3,
                             d_ff=512), overrides)


@register_model("gru_attention_multi30k")
def gru_attention_multi30k(**overrides) -> GRUAttentionSeq2Seq:
    """Bahdanau et al.'s model at our Multi30k size (``attnlab train translate --model
    gru_attention_multi30k``): embeddings 256, bidirectional GRU encoder and GRU decoder of 256, additive attention."""
    base = dict(**_MULTI30K, embed_dim=256, hidden_dim=256, attn_dim=256, dropout=0.1)
    return GRUAttentionSeq2Seq(config_from(GRUAttentionConfig, base, overrides, "gru_attention_multi30k"))


@register_model("mask_predict_multi30k")
def mask_predict_multi30k(**overrides) -> MaskPredictTransformer:
    """The non-autoregressive mask-predict model (Ghazvininejad et al. 2019) on the Multi30k stacks.
    Overrides are fields of :class:`MaskPredictConfig` or of its Transformer (flat), or a whole
    ``transformer`` config (as a checkpoint records it)."""
    nat = {k: overrides.pop(k) for k in ("max_target_len", "length_loss_weight") if k in overrides}
    base = dict(**_MULTI30K, d_model=256, num_heads=8, num_encoder_layers=3, num_decoder_layers=3, d_ff=512)
    if "transformer" in overrides:
        base = {**base, **dict(overrides.pop("transformer"))}
    core = config_from(TransformerConfig, base, overrides, "mask_predict_multi30k")
    return MaskPredictTransformer(MaskPredictConfig(core, **nat))
