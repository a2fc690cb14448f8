"""attnlab's compact Transformers (CCT, CVT, ViT-Lite) against a twin in the authors' layout.

    python bench/compact_twin.py --model cct_4_3x2_32 --threads 2 --rounds 4 --batch-size 128

The twin is the model as SHI-Labs/Compact-Transformers builds it (src/utils/tokenizer.py,
transformers.py, stochastic_depth.py), rewritten here with the same module tree, the same
state-dict names and the same operations in the same order, in plain PyTorch eager:

- ``tokenizer``: ``conv_layers``, one [convolution, ReLU or nothing, max-pool or nothing] per
  layer, then ``flattener``; CCT's convolutions have no bias, the patch convolution of CVT and
  ViT-Lite has one.
- ``classifier``: [class token ``class_emb``], ``positional_emb`` added in place, ``dropout``,
  the ``blocks``, ``norm``, then SeqPool (``attention_pool``) or the class token, then ``fc``.
- a block: src = src + DropPath(MSA(pre_norm(src))); src = norm1(src);
  src = src + DropPath(dropout2(linear2(dropout1(GELU(linear1(src)))))).
- MSA: one ``qkv`` projection without bias split into Q, K, V of shape (B, H, N, D), the
  weights written out as softmax(Q Kᵀ · D^-1/2) (no fused kernel), ``attn_drop``, ``proj``,
  ``proj_drop``.

:func:`copy_weights` gives the twin an attnlab model's weights (a rename table as those of
``attnlab.checkpoints``). The benchmark times training steps of both, same weights and inputs,
in alternation (A B A B ...) so a change in the machine's load hits both; it writes
runs/bench-compact-twin-<model>.json and prints a Markdown row.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import command, machine  # noqa: E402
from attnlab.checkpoints.keys import Renames  # noqa: E402
from attnlab.io import atomic_write_json  # noqa: E402
from attnlab.models import create_model, list_models  # noqa: E402
from attnlab.models.compact import CompactConfig, CompactTransformer  # noqa: E402
from attnlab.models.registry import count_parameters  # noqa: E402
from train_image import train_steps_per_s  # noqa: E402

MODELS = [*list_models("cct_*"), *list_models("cvt_*"), *list_models("vitlite_*")]


# ---------------------------------------------------------------------- the twin
class TwinDropPath(nn.Module):
    """Stochastic depth as the authors' code draws it: keep = floor(1 - p + U[0, 1)) per sample,
    out = x / (1 - p) * keep; the identity in eval mode or at p = 0."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        keep = (keep_prob + torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)).floor_()
        return x.div(keep_prob) * keep


class TwinTokenizer(nn.Module):
    """``n_layers`` x [k x k convolution, ReLU or identity, max-pool or identity], then each pixel
    of the last map is a token.  (B, C_in, H, W) -> (B, Gh*Gw, C)"""

    def __init__(self, in_chans: int, out_chans: int, width: int, n_layers: int, kernel: int, stride: int, padding: int,
                 pool: tuple[int, int, int] | None, relu: bool, bias: bool) -> None:
        super().__init__()
        chans = [in_chans] + [width] * (n_layers - 1) + [out_chans]
        self.conv_layers = nn.Sequential(*(
            nn.Sequential(
                nn.Conv2d(chans[i], chans[i + 1], (kernel, kernel), (stride, stride), (padding, padding), bias=bias),
                nn.ReLU() if relu else nn.Identity(),
                nn.MaxPool2d(*pool) if pool is not None else nn.Identity(),
            )
            for i in range(n_layers)
        ))
        self.flattener = nn.Flatten(2, 3)

    def sequence_length(self, in_chans: int, height: int, width: int) -> int:
        """Tokens per image, found as the authors do: by tokenising one blank image."""
        return self.forward(torch.zeros(1, in_chans, height, width)).shape[1]

    def forward(self, x: Tensor) -> Tensor:
        return self.flattener(self.conv_layers(x)).transpose(-2, -1)  # (B, C, Gh*Gw) -> (B, Gh*Gw, C)


class TwinAttention(nn.Module):
    """softmax(Q Kᵀ / √D) V per head, Q, K, V from one ``qkv`` projection without bias.  (B, N, C) -> (B, N, C)"""

    def __init__(self, dim: int, num_heads: int, attention_dropout: float, projection_dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_drop = nn.Dropout(attention_dropout)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(projection_dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (B, H, N, D)
        attn = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, N, N)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)  # heads concatenated
        return self.proj_drop(self.proj(x))


class TwinEncoderLayer(nn.Module):
    """src = src + DropPath(MSA(pre_norm(src))); src = norm1(src); src = src + DropPath(MLP(src))."""

    def __init__(self, dim: int, num_heads: int, hidden: int, dropout: float, attention_dropout: float,
                 drop_path_rate: float) -> None:
        super().__init__()
        self.pre_norm = nn.LayerNorm(dim)
        self.self_attn = TwinAttention(dim, num_heads, attention_dropout, dropout)
        self.linear1 = nn.Linear(dim, hidden)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.linear2 = nn.Linear(hidden, dim)
        self.dropout2 = nn.Dropout(dropout)
        self.drop_path = TwinDropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.activation = F.gelu

    def forward(self, src: Tensor) -> Tensor:
        src = src + self.drop_path(self.self_attn(self.pre_norm(src)))
        src = self.norm1(src)
        src2 = self.linear2(self.dropout1(self.activation(self.linear1(src))))
        return src + self.drop_path(self.dropout2(src2))


def sine_table(length: int, dim: int) -> Tensor:
    """(1, length, dim): angle p / 10000^(2⌊i/2⌋/dim) rounded to float32 first, as the authors'
    table is, then sin on the even channels and cos on the odd ones (in float32)."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    i = torch.arange(dim, dtype=torch.float64)
    table = (pos / 10000 ** (2 * torch.div(i, 2, rounding_mode="floor") / dim)).float()  # (length, dim)
    table[:, 0::2] = torch.sin(table[:, 0::2])
    table[:, 1::2] = torch.cos(table[:, 1::2])
    return table[None]


class TwinClassifier(nn.Module):
    """Tokens (B, N, C) -> logits (B, K): [class token], positions, blocks, norm, pooling, ``fc``."""

    def __init__(self, seq_pool: bool, dim: int, depth: int, num_heads: int, mlp_ratio: float, num_classes: int,
                 dropout: float, attention_dropout: float, stochastic_depth: float, positional_embedding: str,
                 sequence_length: int) -> None:
        super().__init__()
        self.seq_pool = seq_pool
        if seq_pool:
            self.attention_pool = nn.Linear(dim, 1)
        else:
            sequence_length += 1
            self.class_emb = nn.Parameter(torch.zeros(1, 1, dim))
        self.positional_emb = None
        if positional_embedding == "learnable":
            self.positional_emb = nn.Parameter(torch.zeros(1, sequence_length, dim))
            nn.init.trunc_normal_(self.positional_emb, std=0.2)
        elif positional_embedding == "sine":
            self.positional_emb = nn.Parameter(sine_table(sequence_length, dim), requires_grad=False)
        self.dropout = nn.Dropout(dropout)
        rates = [r.item() for r in torch.linspace(0, stochastic_depth, depth)]
        self.blocks = nn.ModuleList(
            TwinEncoderLayer(dim, num_heads, int(dim * mlp_ratio), dropout, attention_dropout, r) for r in rates
        )
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if not self.seq_pool:
            x = torch.cat((self.class_emb.expand(x.shape[0], -1, -1), x), dim=1)  # (B, 1 + N, C)
        if self.positional_emb is not None:
            x += self.positional_emb
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        if self.seq_pool:  # softmax over the sequence of one score per token, (B, 1, N) @ (B, N, C)
            x = torch.matmul(F.softmax(self.attention_pool(x), dim=1).transpose(-1, -2), x).squeeze(-2)
        else:
            x = x[:, 0]
        return self.fc(x)


class CompactTwin(nn.Module):
    """The authors' CCT / CVT / ViTLite: ``tokenizer`` then ``classifier``.  (B, C_in, H, W) -> (B, K)"""

    def __init__(self, tokenizer: TwinTokenizer, classifier: TwinClassifier) -> None:
        super().__init__()
        self.tokenizer, self.classifier = tokenizer, classifier

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.tokenizer(x))


def build_twin(cfg: CompactConfig) -> CompactTwin:
    """The twin of an attnlab config (the authors' arguments for it). Their layers have no
    LayerNorm eps and always a head, so ``norm_eps`` must be 1e-5 and ``num_classes`` > 0."""
    if cfg.norm_eps != 1e-5 or cfg.num_classes < 1:
        raise ValueError(f"the authors' layout has LayerNorm eps 1e-5 and a head; got norm_eps={cfg.norm_eps}, "
                         f"num_classes={cfg.num_classes}")
    if cfg.tokenizer == "conv":
        tokenizer = TwinTokenizer(cfg.in_chans, cfg.embed_dim, cfg.conv_width, cfg.conv_layers, cfg.kernel_size,
                                  cfg.conv_stride, cfg.conv_padding, (cfg.pool_size, cfg.pool_stride, cfg.pool_padding),
                                  relu=True, bias=False)
    else:
        tokenizer = TwinTokenizer(cfg.in_chans, cfg.embed_dim, cfg.embed_dim, 1, cfg.kernel_size, cfg.kernel_size, 0,
                                  None, relu=False, bias=True)
    classifier = TwinClassifier(
        cfg.seq_pool, cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.num_classes, cfg.drop_rate,
        cfg.attn_drop_rate, cfg.drop_path_rate, {"learn": "learnable"}.get(cfg.pos_embed, cfg.pos_embed),
        tokenizer.sequence_length(cfg.in_chans, *cfg.image_hw),
    )
    return CompactTwin(tokenizer, classifier)


#: attnlab's names -> the authors' (first matching pair wins; a name ending in "." is a prefix)
RENAMES = Renames([
    ("tokenizer.layers.{i}.0.", "tokenizer.conv_layers.{i}.0."),  # CCT's convolutions
    ("tokenizer.proj.", "tokenizer.conv_layers.0.0."),  # the patch convolution
    ("cls_token", "classifier.class_emb"),
    ("pos_embed.weight", "classifier.positional_emb"),
    ("blocks.{i}.ff.fc1.", "classifier.blocks.{i}.linear1."),
    ("blocks.{i}.ff.fc2.", "classifier.blocks.{i}.linear2."),
    ("blocks.{i}.", "classifier.blocks.{i}."),  # pre_norm, self_attn.qkv, self_attn.proj, norm1
    ("norm.", "classifier.norm."),
    ("seq_pool.score.", "classifier.attention_pool."),
    ("head.", "classifier.fc."),
])


@torch.no_grad()
def copy_weights(model: CompactTransformer, twin: CompactTwin) -> None:
    """Give ``twin`` every weight of ``model``. The fixed sine table is no weight of attnlab's:
    the twin keeps its own; any other key left over on either side is an error."""
    state = RENAMES.export(model.state_dict(), "the authors' layout")
    missing, unexpected = twin.load_state_dict(state, strict=False)
    allowed = ["classifier.positional_emb"] if model.cfg.pos_embed == "sine" else []
    if missing != allowed or unexpected:
        raise KeyError(f"weights without a counterpart: twin missing {missing}, twin unexpected {unexpected}")


# ---------------------------------------------------------------------- the benchmark
def twins(name: str) -> tuple[CompactTransformer, CompactTwin]:
    """attnlab's registry model ``name`` and its twin with the same weights, both in train mode."""
    model = create_model(name)
    twin = build_twin(model.cfg)
    copy_weights(model, twin)
    return model, twin


@torch.no_grad()
def logit_gap(model: nn.Module, twin: nn.Module, x: Tensor) -> float:
    """max |attnlab - twin| over the logits of ``x`` in eval mode (both are left in train mode)."""
    for m in (model, twin):
        m.eval()
    gap = (model(x) - twin(x)).abs().max().item()
    for m in (model, twin):
        m.train()
    return gap


def speed(name: str, batch_size: int, steps: int, rounds: int, seed: int = 0) -> dict:
    """Training images/s of attnlab's model and of its twin (same weights, same batch, each with
    its own AdamW step and gradient clipping), measured in alternation; medians and their ratio."""
    torch.manual_seed(seed)
    model, twin = twins(name)
    cfg = model.cfg
    x = torch.randn(batch_size, cfg.in_chans, *cfg.image_hw)
    y = torch.randint(0, cfg.num_classes, (batch_size,))
    gap = logit_gap(model, twin, x)
    rates = {"attnlab": [], "twin": []}
    for _ in range(rounds):
        for impl, m in (("attnlab", model), ("twin", twin)):
            rates[impl] += train_steps_per_s(m, x, y, steps)
    med = {impl: statistics.median(r) for impl, r in rates.items()}
    return {
        "model": name, "parameters": count_parameters(model), "batch_size": batch_size, "steps": steps, "rounds": rounds,
        "threads": torch.get_num_threads(), "images_per_s": med, "ratio": med["attnlab"] / med["twin"],
        "rates": rates, "max_abs_logit_diff": gap, "load_average": os.getloadavg()[0],
        "machine": machine(), "command": command(),
    }


def markdown(res: dict) -> str:
    head = "| model | batch | threads | attnlab images/s | twin images/s | attnlab / twin |\n|---|---|---|---|---|---|\n"
    ips = res["images_per_s"]
    return head + (f"| {res['model']} | {res['batch_size']} | {res['threads']} | {ips['attnlab']:.1f} | {ips['twin']:.1f} "
                   f"| {res['ratio']:.2f} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cct_4_3x2_32", choices=MODELS)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="timed steps per model per round")
    p.add_argument("--rounds", type=int, default=4, help="alternations")
    p.add_argument("--out", default="runs", help="where the JSON goes")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = speed(args.model, args.batch_size, args.steps, args.rounds)
    path = Path(args.out) / f"bench-compact-twin-{args.model}.json"
    atomic_write_json(path, res)
    print(f"{res['machine']}; median of {len(res['rates']['attnlab'])} steps each; load average {res['load_average']:.1f}")
    print(markdown(res))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
