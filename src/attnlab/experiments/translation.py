"""The translation experiments' shared set-up (``topk-attention``, ``ar-vs-nat``)."""

from __future__ import annotations

from attnlab.experiments.base import Context


def small_translation(ctx: Context, epochs: tuple[int, int]) -> tuple:
    """The translation experiments' shared set-up: Multi30k De->En with a joint BPE vocabulary
    (its first 400/40 pairs at quick budget), a 2+2-layer Transformer of width 128 (64 at quick
    budget) and ``epochs`` (quick, full) at lr 1e-3 with warm-up. Returns (TranslateDataConfig,
    the model's stack fields, TrainConfig fields)."""
    from attnlab.tasks.translate import TranslateDataConfig

    files = ctx.multi30k(ctx.pick(400, None), ctx.pick(40, None))
    dc = TranslateDataConfig(**files, bpe_vocab_size=ctx.pick(300, 4000), max_tokens=ctx.pick(1024, 4096))
    stacks = dict(d_model=ctx.pick(64, 128), num_heads=4, d_ff=ctx.pick(128, 256), dropout=ctx.pick(0.0, 0.1),
                  num_encoder_layers=2, num_decoder_layers=2)
    train = dict(epochs=ctx.pick(*epochs), lr=1e-3, warmup_steps=ctx.pick(20, 400), log_every=ctx.pick(5, 50))
    return dc, stacks, train
