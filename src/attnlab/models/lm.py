"""Language models: recurrent (RNN, GRU, LSTM) and the decoder-only causal Transformer.

Both predict token t+1 from tokens ≤ t: ``model(idx (B, T)) -> logits (B, T, V)``.

- :class:`RecurrentLM` (Zaremba et al. 2014; Press & Wolf 2017 for weight tying): embedding →
  dropout → ``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` → dropout → linear read-out. ``forward`` takes
  and returns the hidden state so training can carry it across windows (truncated BPTT).
- :class:`TransformerLM` (the GPT layout, Radford et al. 2018): token embedding, a position
  encoding (learned, sinusoidal, rotary, ...), pre-LN :class:`~attnlab.nn.layers.EncoderLayer`
  blocks run with ``causal=True``, a final LayerNorm and the read-out tied to the embedding.
  Training runs the fused causal attention kernel; generation passes one
  :class:`~attnlab.nn.attention.KVCache` per block.

:func:`build_lm` makes either from a config; :func:`lm_config_from_dict` reads one back.
Both models expose ``stepper(cached=...)``, their decoding stepper (:mod:`attnlab.decode.stepper`),
and ``is_recurrent``: what :class:`attnlab.models.capabilities.LanguageModel` asks of a family.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor, nn

from attnlab.errors import ConfigError, ShapeError
from attnlab.models.registry import count_parameters, register_model  # noqa: F401 (count_parameters: re-exported)
from attnlab.nn.attention import KVCache
from attnlab.nn.layers import EncoderLayer
from attnlab.nn.position import POSITION_KINDS, make_position

RECURRENT_CELLS = ("rnn", "gru", "lstm")
LM_MODELS = RECURRENT_CELLS + ("transformer",)


@dataclass
class RecurrentLMConfig:
    cell: str = "lstm"            # rnn | gru | lstm
    vocab_size: int = 65
    embed_dim: int = 200
    hidden_dim: int = 200
    num_layers: int = 2
    dropout: float = 0.0          # on the embeddings, between layers and before the read-out
    tie_weights: bool = False     # share the embedding and the read-out (needs embed_dim == hidden_dim)
    nonlinearity: str = "tanh"    # for cell="rnn": tanh | relu
    init_range: float = 0.1       # uniform(-r, r) initialisation of all weights, as in Zaremba et al.
    forget_bias: float | None = None  # LSTM: the forget gate's initial bias (Jozefowicz et al. 2015: 1); None: uniform

    def __post_init__(self) -> None:
        if self.cell not in RECURRENT_CELLS:
            raise ConfigError(f"unknown recurrent cell {self.cell!r}; choose one of {', '.join(RECURRENT_CELLS)}")
        if min(self.vocab_size, self.embed_dim, self.hidden_dim, self.num_layers) < 1:
            raise ConfigError("vocab_size, embed_dim, hidden_dim and num_layers must all be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.tie_weights and self.embed_dim != self.hidden_dim:
            raise ConfigError(f"weight tying needs embed_dim == hidden_dim, got {self.embed_dim} and {self.hidden_dim}")
        if self.nonlinearity not in ("tanh", "relu"):
            raise ConfigError(f"nonlinearity must be tanh or relu, got {self.nonlinearity!r}")
        if self.forget_bias is not None and self.cell != "lstm":
            raise ConfigError(f"forget_bias is an LSTM setting; cell {self.cell!r} has no forget gate")


EMBEDDINGS = ("scaled", "gpt")


@dataclass
class TransformerLMConfig:
    vocab_size: int = 65
    d_model: int = 128
    num_layers: int = 4
    num_heads: int = 4
    d_ff: int | None = None       # default 4 * d_model
    max_len: int = 128            # the context length (window) the model is trained with
    position: str = "learned"     # learned | sinusoidal | rotary | relative | none
    dropout: float = 0.0
    activation: str = "gelu"
    tie_weights: bool = True
    bias: bool = True
    embedding: str | None = None  # token embeddings: scaled | gpt (default: scaled with sinusoids, else gpt)
    position_std: float = 0.02    # learned positions: the table's initial std (truncated normal, cut at ±2)

    def __post_init__(self) -> None:
        if self.embedding is None:  # the record names the recipe the model uses
            self.embedding = "scaled" if self.position == "sinusoidal" else "gpt"
        if self.embedding not in EMBEDDINGS:
            raise ConfigError(f"unknown embedding recipe {self.embedding!r}; choose one of {', '.join(EMBEDDINGS)}")
        if min(self.vocab_size, self.d_model, self.num_layers, self.num_heads, self.max_len) < 1:
            raise ConfigError("vocab_size, d_model, num_layers, num_heads and max_len must all be >= 1")
        if self.d_model % self.num_heads:
            raise ConfigError(f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}")
        if self.position not in POSITION_KINDS:
            raise ConfigError(f"unknown position encoding {self.position!r}; choose one of {', '.join(POSITION_KINDS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.position_std > 0:
            raise ConfigError(f"position_std must be > 0, got {self.position_std}")
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model


def _last_logits(logits: Tensor) -> Tensor:
    return logits[:, -1]


class RecurrentLM(nn.Module):
    """Embedding → dropout → stacked nn.RNN/GRU/LSTM → dropout → linear read-out."""

    def __init__(self, config: RecurrentLMConfig) -> None:
        super().__init__()
        self.cfg = c = config
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim)
        self.drop = nn.Dropout(c.dropout)
        kw = dict(num_layers=c.num_layers, batch_first=True, dropout=c.dropout if c.num_layers > 1 else 0.0)
        if c.cell == "rnn":
            self.rnn = nn.RNN(c.embed_dim, c.hidden_dim, nonlinearity=c.nonlinearity, **kw)
        else:
            self.rnn = (nn.GRU if c.cell == "gru" else nn.LSTM)(c.embed_dim, c.hidden_dim, **kw)
        self.head = nn.Linear(c.hidden_dim, c.vocab_size)
        for p in self.parameters():
            nn.init.uniform_(p, -c.init_range, c.init_range)
        nn.init.zeros_(self.head.bias)
        if c.forget_bias is not None:  # b_f = b_if + b_hf: the second quarter of PyTorch's gate order (i, f, g, o)
            h = c.hidden_dim
            for k in range(c.num_layers):
                nn.init.constant_(getattr(self.rnn, f"bias_ih_l{k}")[h:2 * h], c.forget_bias)
                nn.init.zeros_(getattr(self.rnn, f"bias_hh_l{k}")[h:2 * h])
        if c.tie_weights:
            self.head.weight = self.embed.weight

    @property
    def is_recurrent(self) -> bool:
        return True

    @staticmethod
    def detach_hidden(hidden):
        """Cut the graph at a window boundary: same values, no history (truncated BPTT)."""
        if hidden is None:
            return None
        return tuple(h.detach() for h in hidden) if isinstance(hidden, tuple) else hidden.detach()

    def embed_tokens(self, idx: Tensor) -> Tensor:
        return self.embed(idx)

    def forward_embeddings(self, x: Tensor, hidden=None) -> tuple[Tensor, object]:
        """Embedded tokens (B, T, E) → logits (B, T, V), final hidden state."""
        out, hidden = self.rnn(self.drop(x), hidden)
        return self.head(self.drop(out)), hidden

    def forward(self, idx: Tensor, hidden=None) -> tuple[Tensor, object]:
        """idx (B, T) → logits (B, T, V) and the hidden state after the last token."""
        if idx.dim() != 2:
            raise ShapeError(f"expected token ids (B, T), got shape {tuple(idx.shape)}")
        return self.forward_embeddings(self.embed(idx), hidden)

    def stepper(self, cached: bool = True) -> RecurrentStepper:
        """The decoding stepper (:mod:`attnlab.decode.stepper`): the hidden state is carried
        between calls (a recurrent model has nothing to recompute; ``cached`` changes nothing)."""
        return RecurrentStepper(self)


class RecurrentStepper:
    """``step(new (B, t)) -> logits (B, V)`` of the next token, carrying the hidden state."""

    def __init__(self, model: RecurrentLM) -> None:
        self.model, self.hidden = model, None

    @torch.no_grad()
    def step(self, new: Tensor) -> Tensor:
        logits, self.hidden = self.model(new, self.hidden)
        return _last_logits(logits)

    def select(self, index: Tensor) -> None:
        if self.hidden is not None:  # (L, B, H), or a pair of them for the LSTM
            pick = lambda h: h.index_select(1, index)  # noqa: E731
            self.hidden = tuple(map(pick, self.hidden)) if isinstance(self.hidden, tuple) else pick(self.hidden)


def context_start(total: int, max_len: int) -> int:
    """Where the visible context starts once ``total`` tokens exceed ``max_len``: the window
    jumps forward by half its length at a time (so a key/value cache is rebuilt only every
    max_len/2 tokens), keeping between max_len/2 + 1 and max_len tokens in view."""
    if total <= max_len:
        return 0
    half = max(1, max_len // 2)
    return math.ceil((total - max_len) / half) * half


class TransformerLM(nn.Module):
    """Decoder-only Transformer: x = E[idx] (+ positions); pre-LN causal blocks; LN; logits = x Eᵀ.

    Two token-embedding recipes (``embedding``): ``scaled``, x = √d_model · E[idx] (+ PE) with
    E ~ N(0, 1/d_model) (Vaswani et al. §3.4, fairseq), which brings the tokens to the unit amplitude
    of fixed sinusoids; ``gpt``, E ~ N(0, 0.02²) and no scale (a learned table starts at the
    embeddings' scale, rotary / relative encodings act inside attention). The default is ``scaled``
    with sinusoids and ``gpt`` otherwise; an experiment comparing position encodings sets one
    recipe for all of them."""

    def __init__(self, config: TransformerLMConfig) -> None:
        super().__init__()
        self.cfg = c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.embed_scale = math.sqrt(c.d_model) if c.embedding == "scaled" else 1.0
        self.pos = make_position(c.position, dim=c.d_model, num_heads=c.num_heads, max_len=c.max_len,
                                 learned_std=c.position_std)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            EncoderLayer(c.d_model, c.num_heads, c.d_ff, dropout=c.dropout, activation=c.activation,
                         norm_first=True, bias=c.bias)
            for _ in range(c.num_layers)
        )
        self.norm = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.apply(self._init)
        # GPT-2's scaled init of the residual projections: std 0.02 / sqrt(2 L).
        for b in self.blocks:
            for lin in (b.self_attn.proj, b.ff.fc2):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * c.num_layers))
        if c.tie_weights:
            self.head.weight = self.embed.weight

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02 if self.embed_scale == 1.0 else self.cfg.d_model ** -0.5)

    @property
    def is_recurrent(self) -> bool:
        return False

    def new_cache(self) -> list[KVCache]:
        return [KVCache() for _ in self.blocks]

    def embed_tokens(self, idx: Tensor) -> Tensor:
        return self.embed(idx) * self.embed_scale

    def forward_embeddings(self, x: Tensor, cache: list[KVCache] | None = None) -> Tensor:
        """Token embeddings (B, T, C) → logits (B, T, V); with ``cache`` the T tokens follow the
        cached ones."""
        offset = 0 if cache is None else len(cache[0])
        x = self.drop(self.pos.add(x, offset))
        for i, block in enumerate(self.blocks):
            x = block(x, causal=True, pos=self.pos, cache=None if cache is None else cache[i])
        return self.head(self.norm(x))

    def forward(self, idx: Tensor, cache: list[KVCache] | None = None) -> Tensor:
        """idx (B, T) → logits (B, T, V)."""
        if idx.dim() != 2:
            raise ShapeError(f"expected token ids (B, T), got shape {tuple(idx.shape)}")
        return self.forward_embeddings(self.embed_tokens(idx), cache)

    def stepper(self, cached: bool = True) -> TransformerLMStepper:
        """The decoding stepper (:mod:`attnlab.decode.stepper`); see :class:`TransformerLMStepper`."""
        return TransformerLMStepper(self, cached)


class TransformerLMStepper:
    """``step(new (B, t)) -> logits (B, V)`` of the next token.

    The context is at most ``max_len`` tokens (:func:`context_start`). With ``cached`` each call
    runs only the new tokens against the key/value cache; without it each call reruns the whole
    visible context. Both see exactly the same context, so greedy decoding agrees.
    """

    def __init__(self, model: TransformerLM, cached: bool = True) -> None:
        self.model, self.cached = model, cached
        self.tokens: Tensor | None = None
        self.cache: list[KVCache] | None = None
        self.start = 0

    @torch.no_grad()
    def step(self, new: Tensor) -> Tensor:
        m = self.model
        self.tokens = new if self.tokens is None else torch.cat([self.tokens, new], dim=1)
        start = context_start(self.tokens.shape[1], m.cfg.max_len)
        if not self.cached:
            return _last_logits(m(self.tokens[:, start:]))
        if self.cache is None or start != self.start:  # (re)fill the cache with the visible context
            self.cache, self.start = m.new_cache(), start
            return _last_logits(m(self.tokens[:, start:], cache=self.cache))
        return _last_logits(m(new, cache=self.cache))

    def select(self, index: Tensor) -> None:
        if self.tokens is not None:
            self.tokens = self.tokens.index_select(0, index)
        for c in self.cache or ():
            c.reorder(index)


LMConfig = RecurrentLMConfig | TransformerLMConfig


def build_lm(config: LMConfig) -> RecurrentLM | TransformerLM:
    if isinstance(config, RecurrentLMConfig):
        return RecurrentLM(config)
    if isinstance(config, TransformerLMConfig):
        return TransformerLM(config)
    raise ConfigError(f"not a language-model config: {type(config).__name__}")


def lm_config(model: str, **fields_) -> LMConfig:
    """A config by model name ("rnn", "gru", "lstm", "transformer"); unknown fields are an error."""
    if model in RECURRENT_CELLS:
        cls, fields_ = RecurrentLMConfig, {**fields_, "cell": model}
    elif model == "transformer":
        cls = TransformerLMConfig
    else:
        raise ConfigError(f"unknown language model {model!r}; choose one of {', '.join(LM_MODELS)}")
    names = {f.name for f in fields(cls)}
    bad = sorted(set(fields_) - names)
    if bad:
        raise ConfigError(f"{model} has no option(s) {', '.join(bad)}; its options are {', '.join(sorted(names))}")
    return cls(**fields_)


def lm_config_to_dict(config: LMConfig) -> dict:
    model = config.cell if isinstance(config, RecurrentLMConfig) else "transformer"
    return {"model": model, **asdict(config)}


def lm_config_from_dict(d: dict) -> LMConfig:
    d = dict(d)
    model = d.pop("model", None) or d.get("cell", "transformer")
    return lm_config(model, **d)


# --- named configurations (create_model / list_models) ---------------------------------------------
# Zaremba et al. (2014) on Penn Treebank (10,000 words, 35-step BPTT): "small" 2x200 without
# dropout, "medium" 2x650 with 0.5, "large" 2x1500 with 0.65. Ours add optional weight tying.

_PTB = dict(vocab_size=10_000, num_layers=2)


@register_model("lstm_lm_small")
def lstm_lm_small(**overrides) -> RecurrentLM:
    """2 LSTM layers of 200 units, 10,000-word vocabulary (4.65M parameters untied)."""
    return build_lm(lm_config("lstm", **{**_PTB, "embed_dim": 200, "hidden_dim": 200, **overrides}))


@register_model("lstm_lm_medium")
def lstm_lm_medium(**overrides) -> RecurrentLM:
    """2 LSTM layers of 650 units, dropout 0.5 (19.8M parameters untied)."""
    return build_lm(lm_config("lstm", **{**_PTB, "embed_dim": 650, "hidden_dim": 650, "dropout": 0.5, **overrides}))


@register_model("lstm_lm_large")
def lstm_lm_large(**overrides) -> RecurrentLM:
    """2 LSTM layers of 1500 units, dropout 0.65 (66M parameters untied)."""
    return build_lm(lm_config("lstm", **{**_PTB, "embed_dim": 1500, "hidden_dim": 1500, "dropout": 0.65, **overrides}))


@register_model("gru_lm_small")
def gru_lm_small(**overrides) -> RecurrentLM:
    """The small configuration with GRU cells."""
    return build_lm(lm_config("gru", **{**_PTB, "embed_dim": 200, "hidden_dim": 200, **overrides}))


@register_model("rnn_lm_small")
def rnn_lm_small(**overrides) -> RecurrentLM:
    """The small configuration with plain tanh RNN cells (Elman)."""
    return build_lm(lm_config("rnn", **{**_PTB, "embed_dim": 200, "hidden_dim": 200, **overrides}))


@register_model("transformer_lm_char")
def transformer_lm_char(**overrides) -> TransformerLM:
    """A causal Transformer for characters (Tiny Shakespeare, 65 symbols): 4 pre-LN layers of 128,
    4 heads, rotary positions, context 64, tied embeddings (0.80M parameters; the 3-minute CPU
    configuration of BENCHMARKS.md)."""
    return build_lm(lm_config("transformer", **{"vocab_size": 65, "d_model": 128, "num_layers": 4, "num_heads": 4,
                                                "position": "rotary", "max_len": 64, **overrides}))
