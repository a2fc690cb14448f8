"""Query denoising (DN-DETR) against small worked examples: the noised queries, the decoder's
self-attention mask, the reconstruction loss, the split of the outputs, the query embedding."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.detect.denoising import denoising_loss, make_denoising_queries
from attnlab.errors import ConfigError
from attnlab.models.detr_denoising import (
    DenoisingBatch,
    DenoisingQueries,
    box_sine_embedding,
    denoising_attention_mask,
    split_outputs,
)
from attnlab.nn import MultiHeadAttention

K = 5


def two_images():
    """Image 0: two objects; image 1: one. The batch pads to M = 2."""
    return [{"labels": torch.tensor([3, 1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.2, 0.3, 0.1, 0.1]])},
            {"labels": torch.tensor([4]), "boxes": torch.tensor([[0.7, 0.6, 0.3, 0.2]])}]


def test_noise_off_gives_the_ground_truth_in_group_major_layout():
    t = two_images()
    dn = make_denoising_queries(t, num_groups=2, box_noise_scale=0.0, label_noise_ratio=0.0, num_classes=K)
    assert dn.num_dn == 4 and dn.num_groups == 2
    assert dn.valid.tolist() == [[True, True, True, True], [True, False, True, False]]
    assert dn.target_index.tolist() == [[0, 1, 0, 1], [0, -1, 0, -1]]
    assert dn.labels.tolist() == [[3, 1, 3, 1], [4, K, 4, K]]  # padding: label K
    pad = torch.tensor([0.5, 0.5, 0.5, 0.5])
    expected = torch.stack([torch.cat([t[0]["boxes"], t[0]["boxes"]]),
                            torch.stack([t[1]["boxes"][0], pad, t[1]["boxes"][0], pad])])
    torch.testing.assert_close(dn.boxes, expected, atol=0, rtol=0)


def test_box_noise_is_the_papers_formula():
    """Same draws, replayed: cx + u·λ·w/2, cy + u·λ·h/2, w + u·λ·w, h + u·λ·h, clamped to [0, 1]."""
    t, lam = two_images(), 0.4
    dn = make_denoising_queries(t, 3, lam, 0.0, K, generator=torch.Generator().manual_seed(7))
    u = torch.rand((2, 6, 4), generator=torch.Generator().manual_seed(7)) * 2 - 1
    for b, j, d in [(0, 0, 0), (0, 1, 1), (0, 0, 4), (1, 0, 2)]:
        cx, cy, w, h = t[b]["boxes"][j].tolist()
        ux, uy, uw, uh = u[b, d].tolist()
        want = torch.tensor([cx + ux * lam * w / 2, cy + uy * lam * h / 2, w + uw * lam * w, h + uh * lam * h]).clamp(0, 1)
        torch.testing.assert_close(dn.boxes[b, d], want)
    assert not torch.equal(dn.boxes[0, 0], dn.boxes[0, 2]), "each group draws its own noise"


@settings(max_examples=30, deadline=None)
@given(lam=st.floats(0.0, 2.0), groups=st.integers(1, 4), seed=st.integers(0, 10**6))
def test_box_noise_stays_within_its_bounds(lam, groups, seed):
    g = torch.Generator().manual_seed(seed)
    m = 1 + seed % 5
    xy, wh = torch.rand(m, 2, generator=g), torch.rand(m, 2, generator=g) * 0.9 + 0.01
    t = [{"labels": torch.zeros(m, dtype=torch.long), "boxes": torch.cat([xy, wh], 1)}]
    dn = make_denoising_queries(t, groups, lam, 0.0, K, generator=g)
    gt = t[0]["boxes"].repeat(groups, 1)
    reach = torch.cat([gt[:, 2:] / 2, gt[:, 2:]], 1) * lam
    assert ((dn.boxes[0] - gt).abs() <= reach + 1e-6).all()
    assert ((dn.boxes >= 0) & (dn.boxes <= 1)).all()


def test_label_noise_flips_at_its_rate_and_only_real_entries():
    n = 4000
    t = [{"labels": torch.full((n,), 2), "boxes": torch.full((n, 4), 0.5)},
         {"labels": torch.tensor([2]), "boxes": torch.full((1, 4), 0.5)}]
    dn = make_denoising_queries(t, 1, 0.0, 0.2, K, generator=torch.Generator().manual_seed(0))
    changed = (dn.labels[0] != 2).float().mean().item()
    assert changed == pytest.approx(0.2 * (K - 1) / K, abs=0.025)  # a redraw may give the class back
    assert (dn.labels[dn.valid] < K).all(), "never the 'no object' class"
    assert (dn.labels[~dn.valid] == K).all()
    off = make_denoising_queries(t, 1, 0.0, 0.0, K, generator=torch.Generator().manual_seed(0))
    assert (off.labels[off.valid] == 2).all()


def test_attention_mask_two_groups_of_two_and_three_matching_queries():
    T, F = True, False
    want = torch.tensor([
        # group 0  group 1   matching
        [T, T,     F, F,     T, T, T],  # group 0
        [T, T,     F, F,     T, T, T],
        [F, F,     T, T,     T, T, T],  # group 1
        [F, F,     T, T,     T, T, T],
        [F, F,     F, F,     T, T, T],  # matching
        [F, F,     F, F,     T, T, T],
        [F, F,     F, F,     T, T, T],
    ])
    assert torch.equal(denoising_attention_mask(4, 2, 3), want)
    assert denoising_attention_mask(0, 1, 3).all()
    with pytest.raises(ConfigError):
        denoising_attention_mask(5, 2, 3)


def test_attention_mask_hides_what_it_must_in_attention():
    """Through attnlab's attention: the matching outputs do not move when the denoising queries do,
    and group 0's outputs do not move when group 1's queries do."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 2).eval()
    mask = denoising_attention_mask(4, 2, 3)
    x = torch.randn(2, 7, 16)
    y = x.clone()
    y[:, 2:4] = torch.randn(2, 2, 16)  # another group 1
    z = x.clone()
    z[:, :4] = torch.randn(2, 4, 16)  # other denoising queries altogether
    ox, oy, oz = (mha(v, v, v, mask=mask) for v in (x, y, z))
    torch.testing.assert_close(oy[:, :2], ox[:, :2])
    torch.testing.assert_close(oz[:, 4:], ox[:, 4:])
    assert not torch.allclose(oy[:, 2:4], ox[:, 2:4])
    assert not torch.allclose(mha(z, z, z)[:, 4:], ox[:, 4:]), "without the mask they would move"


def perfect(dn, t, margin=100.0):
    """Predictions equal to each denoising query's original object; garbage at padding."""
    b, d = dn.valid.shape
    logits = torch.full((b, d, K + 1), float("nan"))
    boxes = torch.full((b, d, 4), float("nan"))
    for i in range(b):
        for q in range(d):
            if dn.valid[i, q]:
                j = dn.target_index[i, q]
                logits[i, q] = 0.0
                logits[i, q, t[i]["labels"][j]] = margin
                boxes[i, q] = t[i]["boxes"][j]
    return {"logits": logits, "boxes": boxes}


def test_perfect_reconstruction_costs_nothing_and_error_costs_more():
    t = two_images()
    dn = make_denoising_queries(t, 2, 0.4, 1.0, K, generator=torch.Generator().manual_seed(1))  # every label redrawn
    out = perfect(dn, t)
    assert denoising_loss(out, dn, t)["loss"].item() < 1e-6  # the targets are the originals, not the noised
    last = 0.0
    for err in (0.01, 0.05, 0.1):
        worse = {**out, "boxes": out["boxes"] + err}
        loss = denoising_loss(worse, dn, t)["loss"].item()
        assert loss > last
        last = loss
    wrong = out["logits"].clone()
    wrong[..., 0] = 200.0
    assert denoising_loss({**out, "logits": wrong}, dn, t)["ce"].item() > 1.0


def test_loss_of_a_worked_example():
    """One object (0.5, 0.5, 0.2, 0.2), two groups: group 0 exact, group 1 moved right by 0.1.
    V = 2; L1 = 0.1 / 2; 1 - GIoU = 1 - 1/3 (intersection 0.02, union 0.06, hull 0.06), / 2."""
    t = [{"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    dn = make_denoising_queries(t, 2, 0.0, 0.0, K)
    out = perfect(dn, t)
    out["boxes"][0, 1, 0] += 0.1
    parts = denoising_loss(out, dn, t)
    assert parts["l1"].item() == pytest.approx(0.05, abs=1e-6)
    assert parts["giou"].item() == pytest.approx(1 / 3, abs=1e-6)
    assert parts["ce"].item() < 1e-6
    assert parts["loss"].item() == pytest.approx(5 * 0.05 + 2 / 3, abs=1e-5)
    ce = out["logits"].clone()
    ce[0, :, 2] = 0.0  # uniform over K+1 classes: CE = log(K+1) per query
    assert denoising_loss({**out, "logits": ce}, dn, t)["ce"].item() == pytest.approx(math.log(K + 1), abs=1e-6)
    with_aux = denoising_loss({**out, "aux": [dict(out), dict(out)]}, dn, t)
    assert with_aux["loss"].item() == pytest.approx(3 * parts["loss"].item(), abs=1e-5)


def test_padding_never_contributes():
    """NaN predictions at the padding entries leave the loss finite and unchanged; their gradient is 0."""
    t = two_images()
    dn = make_denoising_queries(t, 2, 0.4, 0.2, K, generator=torch.Generator().manual_seed(3))
    out = perfect(dn, t, margin=3.0)
    logits = out["logits"].nan_to_num(0.0).requires_grad_()
    boxes = (out["boxes"].nan_to_num(0.5) + 0.05).requires_grad_()
    clean = denoising_loss({"logits": logits, "boxes": boxes}, dn, t)["loss"]
    clean.backward()
    assert (logits.grad[~dn.valid] == 0).all() and (boxes.grad[~dn.valid] == 0).all()
    assert logits.grad[dn.valid].abs().sum() > 0
    nan_logits, nan_boxes = logits.detach().clone(), boxes.detach().clone()
    nan_logits[~dn.valid], nan_boxes[~dn.valid] = float("nan"), float("nan")
    torch.testing.assert_close(denoising_loss({"logits": nan_logits, "boxes": nan_boxes}, dn, t)["loss"], clean.detach())


def test_no_objects_no_loss():
    t = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    dn = make_denoising_queries(t, 5, 0.4, 0.2, K)
    assert dn.num_dn == 0
    parts = denoising_loss({"logits": torch.zeros(1, 0, K + 1), "boxes": torch.zeros(1, 0, 4)}, dn, t)
    assert parts["loss"].item() == 0.0


def test_split_and_rejoin_round_trip():
    g = torch.Generator().manual_seed(0)
    d, n = 4, 3

    def layer():
        return {"logits": torch.randn(2, d + n, K + 1, generator=g), "boxes": torch.rand(2, d + n, 4, generator=g)}

    out = {**layer(), "aux": [layer(), layer()], "feature_size": (8, 8)}
    dn, match = split_outputs(out, d)
    assert dn["logits"].shape == (2, d, K + 1) and match["boxes"].shape == (2, n, 4)
    assert match["feature_size"] == (8, 8) and "feature_size" not in dn
    for whole, a, b in [(out, dn, match), *zip(out["aux"], dn["aux"], match["aux"])]:
        for key in ("logits", "boxes"):
            assert torch.equal(torch.cat([a[key], b[key]], 1), whole[key])


def test_box_sine_embedding_worked_example():
    """4 features per coordinate: frequencies 1, 1, 1/100, 1/100 (temperature 10^4), order cy, cx, w, h."""
    e = box_sine_embedding(torch.tensor([[0.5, 0.25, 0.0, 1.0]]), 4)
    s = math.pi / 200

    def four(c):
        a = 2 * math.pi * c
        return [math.sin(a), math.cos(a), math.sin(a / 100), math.cos(a / 100)]

    assert e.shape == (1, 16)
    torch.testing.assert_close(e[0], torch.tensor(four(0.25) + four(0.5) + four(0.0) + four(1.0)))
    assert e[0, :4].tolist() == pytest.approx([1.0, 0.0, math.sin(s), math.cos(s)], abs=1e-6)


def test_denoising_queries_content_and_positions():
    torch.manual_seed(0)
    q = DenoisingQueries(K, 16)
    dn = make_denoising_queries(two_images(), 2, 0.4, 0.2, K, generator=torch.Generator().manual_seed(0))
    assert isinstance(dn, DenoisingBatch)
    content, pos = q(dn.labels, dn.boxes, dn.valid)
    assert content.shape == pos.shape == (2, 4, 16)
    assert (content[dn.valid][:, -1] == 1).all(), "indicator 1: a denoising query"
    assert (content[~dn.valid] == 0).all(), "padding: no content"
    torch.testing.assert_close(content[0, 0, :-1], q.label_embed.weight[dn.labels[0, 0]])
    match = q.matching_content(3)
    assert match.shape == (3, 16) and (match[:, -1] == 0).all()
    torch.testing.assert_close(match[0, :-1], q.label_embed.weight[K])
    same_box = q(dn.labels[:, :1], dn.boxes[:, :1], dn.valid[:, :1])[1]
    moved = q(dn.labels[:, :1], dn.boxes[:, :1] + 0.1, dn.valid[:, :1])[1]
    assert not torch.allclose(same_box, moved), "the position follows the box"
    (content.sum() + pos.sum()).backward()
    assert q.label_embed.weight.grad is not None and q.pos_head[0].weight.grad.abs().sum() > 0
