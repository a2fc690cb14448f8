"""DETR on a padded batch: an image padded at the right and bottom (with its pixel mask) gives the
same detections as the image alone, within 1e-4, with the small backbone, with DETR's dense
cross-attention and with the deformable one (whose reference points are scaled by the valid
ratios of the padded feature map, as Deformable DETR's, and whose padded values read as zeros,
as the unpadded map's outside does).

Why it holds: the small CNN zeroes the padding after every stage and takes GroupNorm's statistics
over real pixels only (attnlab.models.resnet.SmallCNN), so each convolution reads beyond the real
pixels the zeros the unpadded image's convolution reads as its own padding; the transformer's key
mask and sine positions count only real cells. ResNet-50 as DETR and Hugging Face run it (and as
tests/test_detr.py checks it, exact to them) is not invariant: after frozen BN and ReLU the padding
is no longer 0 and its 3x3 convolutions carry it into the border features. Zeroing the padding
before each 3x3/7x7 convolution would make it invariant by the same argument (1x1 convolutions,
frozen BN and ReLU act per pixel; max pooling follows a ReLU), but DETR's checkpoints were trained
with the padding in, so attnlab's ResNet path keeps their behaviour.
"""

import pytest
import torch

from attnlab.detect.batching import pad_batch
from attnlab.errors import ShapeError
from attnlab.models import create_model
from attnlab.models.resnet import SmallCNN

TOL = 1e-4


def small_detr(cross_attention: str = "dense"):
    torch.manual_seed(0)
    model = create_model("detr_digits", in_chans=3, d_model=32, num_heads=4, num_encoder_layers=2,
                         num_decoder_layers=2, d_ff=64, num_queries=5, cross_attention=cross_attention).eval()
    with torch.no_grad():  # GroupNorm's affine away from 1 and 0, so that wrong statistics would show
        for n, p in model.backbone.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn(p.shape) * 0.5 + (1.0 if n.endswith("weight") else 0.0))
        for n, p in model.decoder.named_parameters():  # deformable: points off whole pixels, some beyond the image
            if "sampling_offsets" in n or "attention_weights" in n:
                p.add_(torch.randn(p.shape))
    return model


@pytest.mark.parametrize("cross_attention", ["dense", "deformable"])  # deformable: reference points x valid ratios
@pytest.mark.parametrize("sizes, padded", [([(40, 56), (64, 64)], (64, 64)),  # multiples of the stride 8
                                            ([(44, 60), (37, 29)], (48, 64))])  # not: padded up to one
def test_a_padded_image_gives_the_unpadded_detections(sizes, padded, cross_attention, one_thread):
    model = small_detr(cross_attention)
    images = [torch.randn(3, h, w) for h, w in sizes]
    x, mask = pad_batch(images, multiple=model.backbone.stride)
    assert x.shape[-2:] == padded
    with torch.no_grad():
        batch = model(x, mask)
        for i, im in enumerate(images):
            alone = model(im[None])
            torch.testing.assert_close(batch["logits"][i], alone["logits"][0], atol=TOL, rtol=0)
            torch.testing.assert_close(batch["boxes"][i], alone["boxes"][0], atol=TOL, rtol=0)


def test_the_backbone_without_the_mask_lets_padding_in(one_thread):
    """The failure the mask fixes: plain GroupNorm over a padded image changes the real features."""
    torch.manual_seed(0)
    cnn = SmallCNN(3, (16, 32)).eval()
    im = torch.randn(1, 3, 20, 24)
    x, mask = pad_batch([im[0]], multiple=4)
    x = torch.nn.functional.pad(x, (0, 8, 0, 8))
    mask = torch.nn.functional.pad(mask, (0, 8, 0, 8))
    with torch.no_grad():
        alone = cnn(im)
        torch.testing.assert_close(cnn(x, mask)[..., :5, :6], alone, atol=1e-5, rtol=0)
        assert (cnn(x)[..., :5, :6] - alone).abs().max() > 1e-2


def test_a_padded_size_off_the_stride_is_refused():
    cnn = SmallCNN(3, (16, 32))
    with pytest.raises(ShapeError, match="multiple of the backbone's stride 4"):
        cnn(torch.zeros(1, 3, 10, 12), torch.ones(1, 10, 12, dtype=torch.bool))
