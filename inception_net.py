"""The two Inception-v3 networks IS/FID are measured with, as architectures without weights.

- 'torchvision': torchvision's ImageNet Inception-v3, the 2019 release's default.
- 'tf': the TensorFlow FID Inception (2015-12-05 weights) as ported by `pytorch_fid`: its
  pooling blocks differ from torchvision's, and it has 1008-way logits.
`InceptionNet` wraps either into images in [-1, 1] -> (pool [B, 2048], logits), resizing and
normalising as each network's reference code does. Loading the weights (and checking they are
the published ones) is inception_utils.py's job.

Example:
    arch = inception_v3('tf')
    arch.load_state_dict(torch.load('pt_inception-2015-12-05-6726825d.pth'))
    pool, logits = InceptionNet(arch, 'tf').eval()(images)  # [B, 2048], [B, 1008]
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2

INCEPTIONS = ('torchvision', 'tf')
POOL_DIM = 2048


def check_network(inception: str) -> None:
    """Refuse a network name other than those in INCEPTIONS."""
    if inception not in INCEPTIONS:
        raise ValueError(f'unknown Inception network {inception!r}: use one of {INCEPTIONS}')


def inception_v3(inception: str) -> torchvision.models.Inception3:
    """The bare architecture (no weights); init skipped since weights are loaded next."""
    if inception == 'torchvision':
        return torchvision.models.inception_v3(weights=None, aux_logits=True,
                                               init_weights=False)
    # pytorch_fid.inception.fid_inception_v3() downloads on construction, so patch the
    # blocks here the way it does: TF's pooling differs from torchvision's in these.
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008,
                                          init_weights=False)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE_1(1280)
    net.Mixed_7c = FIDInceptionE_2(2048)
    return net


# Inception3's layers from the image to the 2048-d average pool, in order.
TRUNK = ('Conv2d_1a_3x3', 'Conv2d_2a_3x3', 'Conv2d_2b_3x3', 'maxpool1', 'Conv2d_3b_1x1',
         'Conv2d_4a_3x3', 'maxpool2', 'Mixed_5b', 'Mixed_5c', 'Mixed_5d', 'Mixed_6a',
         'Mixed_6b', 'Mixed_6c', 'Mixed_6d', 'Mixed_6e', 'Mixed_7a', 'Mixed_7b', 'Mixed_7c',
         'avgpool')


class InceptionNet(nn.Module):
    """Images in [-1, 1] [B, 3, H, W] -> (pool [B, 2048], logits [B, 1000 or 1008])."""

    def __init__(self, net: torchvision.models.Inception3, inception: str):
        super().__init__()
        check_network(inception)
        self.net, self.inception = net, inception
        self.register_buffer('mean', torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer('std', torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pool features, logits) of a batch of images in [-1, 1]."""
        x = x.float()
        if self.inception == 'torchvision':
            # As the 2019 release: ImageNet normalisation, corner-aligned bilinear resize.
            x = ((x + 1) / 2 - self.mean) / self.std
            if x.shape[-2:] != (299, 299):
                x = F.interpolate(x, size=(299, 299), mode='bilinear', align_corners=True)
        elif x.shape[-2:] != (299, 299):
            # As pytorch_fid; the TF network takes [-1, 1] as it is.
            x = F.interpolate(x, size=(299, 299), mode='bilinear', align_corners=False)
        for name in TRUNK:
            x = getattr(self.net, name)(x)
        pool = torch.flatten(x, 1)  # [B, 2048]
        if self.inception == 'torchvision':
            return pool, self.net.fc(pool)
        # The TF IS code (openai/improved-gan, the 2019 inception_tf13.py) multiplies pool_3
        # by the softmax layer's weight without its bias; do the same for comparable IS.
        return pool, F.linear(pool, self.net.fc.weight)
