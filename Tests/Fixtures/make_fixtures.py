#!/usr/bin/env python3
"""Writes the PyTorch reference fixtures for attunet's Swift tests.

    .venv/bin/python Tests/Fixtures/make_fixtures.py [--out DIR]

Needs torch, numpy and h5py. The original repository (ozan-oktay/Attention-Gated-Networks) is NOT needed:
the model classes below are a re-statement, written for modern PyTorch, of the original
`unet_CT_multi_att_dsv_3D`, `unet_CT_dsv_3D` and their building blocks (`UnetConv3`, `UnetUp3_CT`,
`UnetGridGatingSignal3`, `UnetDsv3`, `GridAttentionBlock3D` in mode 'concatenation', `MultiAttentionBlock`)
and of its `SoftDiceLoss` / `cross_entropy_3D`. Module names are the original ones, so `state_dict()` names
and shapes match the original exactly. See README.md in this folder for the file layout.

Everything is seeded; the output is deterministic (single-threaded CPU torch).
"""
import argparse
import json
import math
import os
import sys

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

HERE = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------------------------------------
# Model re-statement (modern PyTorch). Tensor layout inside torch: (B, C, X, Y, Z).
# ----------------------------------------------------------------------------------------------------------

def trilinear(scale_factor=None, align_corners=False):
    """nn.Upsample as the original uses it (mode='trilinear'); align_corners made explicit."""
    return nn.Upsample(scale_factor=scale_factor, mode='trilinear', align_corners=align_corners)


class UnetConv3(nn.Module):
    """Two x (Conv3d 3x3x3 pad 1 with bias -> BatchNorm3d -> ReLU)."""

    def __init__(self, in_size, out_size):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv3d(in_size, out_size, 3, 1, 1),
                                   nn.BatchNorm3d(out_size), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(nn.Conv3d(out_size, out_size, 3, 1, 1),
                                   nn.BatchNorm3d(out_size), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.conv2(self.conv1(x))


class UnetGridGatingSignal3(nn.Module):
    """Conv3d 1x1x1 (bias) -> BN -> ReLU."""

    def __init__(self, in_size, out_size):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv3d(in_size, out_size, 1, 1, 0),
                                   nn.BatchNorm3d(out_size), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.conv1(x)


class UnetUp3_CT(nn.Module):
    """Upsample the coarse input x2 (trilinear), concat [skip, upsampled], UnetConv3."""

    def __init__(self, in_size, out_size, align_corners=False):
        super().__init__()
        self.conv = UnetConv3(in_size + out_size, out_size)
        self.up = trilinear(2, align_corners)

    def forward(self, skip, coarse):
        up = self.up(coarse)
        # The original pads `skip` by an offset computed from dim 2; for the sizes the model accepts
        # (every spatial dim divisible by 16) the offset is 0 and the pad is a no-op.
        assert up.shape[2:] == skip.shape[2:], "spatial dims must be divisible by 16"
        return self.conv(torch.cat([skip, up], 1))


class UnetDsv3(nn.Module):
    """Deep-supervision head: Conv3d 1x1x1 (bias) to n_classes, then trilinear x scale_factor."""

    def __init__(self, in_size, out_size, scale_factor, align_corners=False):
        super().__init__()
        self.dsv = nn.Sequential(nn.Conv3d(in_size, out_size, 1, 1, 0), trilinear(scale_factor, align_corners))

    def forward(self, x):
        return self.dsv(x)


class GridAttentionBlock3D(nn.Module):
    """Additive attention gate, mode 'concatenation', sub-sample factor (2,2,2).

    theta: 2x2x2 stride-2 conv on x (no bias); phi: 1x1x1 conv on g (bias), resized to theta's size;
    f = relu(theta_x + phi_g); alpha = sigmoid(psi(f)) resized (trilinear) to x's size;
    returns (W(alpha * x), alpha) with W = Conv3d 1x1x1 (bias) -> BN (no ReLU).
    """

    def __init__(self, in_channels, gating_channels, inter_channels, align_corners=False):
        super().__init__()
        self.align_corners = align_corners
        self.W = nn.Sequential(nn.Conv3d(in_channels, in_channels, 1, 1, 0), nn.BatchNorm3d(in_channels))
        self.theta = nn.Conv3d(in_channels, inter_channels, 2, 2, 0, bias=False)
        self.phi = nn.Conv3d(gating_channels, inter_channels, 1, 1, 0, bias=True)
        self.psi = nn.Conv3d(inter_channels, 1, 1, 1, 0, bias=True)

    def forward(self, x, g):
        theta_x = self.theta(x)
        phi_g = F.interpolate(self.phi(g), size=theta_x.shape[2:], mode='trilinear',
                              align_corners=self.align_corners)
        f = F.relu(theta_x + phi_g, inplace=True)
        alpha = torch.sigmoid(self.psi(f))
        alpha = F.interpolate(alpha, size=x.shape[2:], mode='trilinear', align_corners=self.align_corners)
        y = alpha.expand_as(x) * x
        return self.W(y), alpha


class MultiAttentionBlock(nn.Module):
    """Two independent gates on the same (x, g); outputs concatenated -> Conv 1x1x1 -> BN -> ReLU."""

    def __init__(self, in_size, gate_size, inter_size, align_corners=False):
        super().__init__()
        self.gate_block_1 = GridAttentionBlock3D(in_size, gate_size, inter_size, align_corners)
        self.gate_block_2 = GridAttentionBlock3D(in_size, gate_size, inter_size, align_corners)
        self.combine_gates = nn.Sequential(nn.Conv3d(in_size * 2, in_size, 1, 1, 0),
                                           nn.BatchNorm3d(in_size), nn.ReLU(inplace=True))

    def forward(self, x, g):
        gate_1, attention_1 = self.gate_block_1(x, g)
        gate_2, attention_2 = self.gate_block_2(x, g)
        return self.combine_gates(torch.cat([gate_1, gate_2], 1)), torch.cat([attention_1, attention_2], 1)


def filters_for(feature_scale):
    return [int(x / feature_scale) for x in [64, 128, 256, 512, 1024]]


class unet_CT_dsv_3D(nn.Module):
    """The paper's U-Net baseline (no attention), with the fused deep-supervision head."""

    def __init__(self, feature_scale=4, n_classes=4, in_channels=1, align_corners=False):
        super().__init__()
        f = filters_for(feature_scale)
        self.conv1 = UnetConv3(in_channels, f[0])
        self.maxpool1 = nn.MaxPool3d(2)
        self.conv2 = UnetConv3(f[0], f[1])
        self.maxpool2 = nn.MaxPool3d(2)
        self.conv3 = UnetConv3(f[1], f[2])
        self.maxpool3 = nn.MaxPool3d(2)
        self.conv4 = UnetConv3(f[2], f[3])
        self.maxpool4 = nn.MaxPool3d(2)
        self.center = UnetConv3(f[3], f[4])
        self._decoder(f, n_classes, align_corners)

    def _decoder(self, f, n_classes, ac):
        self.up_concat4 = UnetUp3_CT(f[4], f[3], ac)
        self.up_concat3 = UnetUp3_CT(f[3], f[2], ac)
        self.up_concat2 = UnetUp3_CT(f[2], f[1], ac)
        self.up_concat1 = UnetUp3_CT(f[1], f[0], ac)
        self.dsv4 = UnetDsv3(f[3], n_classes, 8, ac)
        self.dsv3 = UnetDsv3(f[2], n_classes, 4, ac)
        self.dsv2 = UnetDsv3(f[1], n_classes, 2, ac)
        self.dsv1 = nn.Conv3d(f[0], n_classes, 1)
        self.final = nn.Conv3d(n_classes * 4, n_classes, 1)

    def _head(self, up4, up3, up2, up1):
        return self.final(torch.cat([self.dsv1(up1), self.dsv2(up2), self.dsv3(up3), self.dsv4(up4)], 1))

    def forward(self, x):
        conv1 = self.conv1(x)
        conv2 = self.conv2(self.maxpool1(conv1))
        conv3 = self.conv3(self.maxpool2(conv2))
        conv4 = self.conv4(self.maxpool3(conv3))
        center = self.center(self.maxpool4(conv4))
        up4 = self.up_concat4(conv4, center)
        up3 = self.up_concat3(conv3, up4)
        up2 = self.up_concat2(conv2, up3)
        up1 = self.up_concat1(conv1, up2)
        return self._head(up4, up3, up2, up1)


class unet_CT_multi_att_dsv_3D(nn.Module):
    """The paper's Attention U-Net (released graph): gates at levels 2, 3, 4 (two gates each)."""

    def __init__(self, feature_scale=4, n_classes=4, in_channels=1, align_corners=False):
        super().__init__()
        f = filters_for(feature_scale)
        # Registration order as in the original (state_dict order follows it).
        self.conv1 = UnetConv3(in_channels, f[0])
        self.maxpool1 = nn.MaxPool3d(2)
        self.conv2 = UnetConv3(f[0], f[1])
        self.maxpool2 = nn.MaxPool3d(2)
        self.conv3 = UnetConv3(f[1], f[2])
        self.maxpool3 = nn.MaxPool3d(2)
        self.conv4 = UnetConv3(f[2], f[3])
        self.maxpool4 = nn.MaxPool3d(2)
        self.center = UnetConv3(f[3], f[4])
        self.gating = UnetGridGatingSignal3(f[4], f[4])
        self.attentionblock2 = MultiAttentionBlock(f[1], f[2], f[1], align_corners)
        self.attentionblock3 = MultiAttentionBlock(f[2], f[3], f[2], align_corners)
        self.attentionblock4 = MultiAttentionBlock(f[3], f[4], f[3], align_corners)
        unet_CT_dsv_3D._decoder(self, f, n_classes, align_corners)

    def forward(self, x):
        conv1 = self.conv1(x)
        conv2 = self.conv2(self.maxpool1(conv1))
        conv3 = self.conv3(self.maxpool2(conv2))
        conv4 = self.conv4(self.maxpool3(conv3))
        center = self.center(self.maxpool4(conv4))
        gating = self.gating(center)
        g_conv4, att4 = self.attentionblock4(conv4, gating)
        up4 = self.up_concat4(g_conv4, center)
        g_conv3, att3 = self.attentionblock3(conv3, up4)
        up3 = self.up_concat3(g_conv3, up4)
        g_conv2, att2 = self.attentionblock2(conv2, up3)
        up2 = self.up_concat2(g_conv2, up3)
        up1 = self.up_concat1(conv1, up2)
        return unet_CT_dsv_3D._head(self, up4, up3, up2, up1)


GATE_NAMES = [f"attentionblock{k}.gate_block_{j}" for k in (2, 3, 4) for j in (1, 2)]


def init_like_original(model, gen):
    """The original's init: Conv3d weight ~ Kaiming normal (fan_in, a=0): N(0, 2/fan_in); conv biases keep
    PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)); BatchNorm weight ~ N(1, 0.02), bias = 0.
    Drawn from `gen` in module order (the original draws several times; only the distribution matters),
    then each tensor is rounded to 12 significant bits (quantize) so the stored weights compress."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv3d):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=gen)
                if m.bias is not None:
                    b = 1.0 / math.sqrt(fan_in)
                    m.bias.uniform_(-b, b, generator=gen)
            elif isinstance(m, nn.BatchNorm3d):
                m.weight.normal_(1.0, 0.02, generator=gen)
                m.bias.zero_()
        for p in model.parameters():
            p.copy_(quantize(p))


def soft_dice_loss(logits, target, n_classes):
    """The original SoftDiceLoss. target: int64 (B, 1, X, Y, Z) as the original loader gives it.
    p = softmax over channels; t = one-hot over all classes (background included); smooth = 0.01 added to
    both the intersection (before doubling) and the union; loss = 1 - sum_{b,c} 2 I/U / (B*C)."""
    smooth = 0.01
    b = logits.size(0)
    p = F.softmax(logits, dim=1).reshape(b, n_classes, -1)
    t = F.one_hot(target[:, 0], n_classes).permute(0, 4, 1, 2, 3).float().reshape(b, n_classes, -1)
    inter = torch.sum(p * t, 2) + smooth
    union = torch.sum(p, 2) + torch.sum(t, 2) + smooth
    score = torch.sum(2.0 * inter / union)
    return 1.0 - score / (float(b) * float(n_classes))


def sorensen_dice_loss(logits, target, n_classes, smooth=1e-5):
    """attunet's default loss (not in the original code): the Sorensen-Dice loss over all classes, per sample
    and class D = (2 sum p g + s) / (sum p^2 + sum g^2 + s), loss = 1 - mean over (b, c) of D."""
    b = logits.size(0)
    p = F.softmax(logits, dim=1).reshape(b, n_classes, -1)
    t = F.one_hot(target[:, 0], n_classes).permute(0, 4, 1, 2, 3).float().reshape(b, n_classes, -1)
    d = (2 * torch.sum(p * t, 2) + smooth) / (torch.sum(p * p, 2) + torch.sum(t * t, 2) + smooth)
    return 1.0 - d.mean()


def cross_entropy_3d(logits, target):
    """The original cross_entropy_3D: NLL of log_softmax over channels, mean over all voxels.
    target: int64 (B, 1, X, Y, Z) or (B, X, Y, Z)."""
    t = target.reshape(target.size(0), *logits.shape[2:])
    return F.nll_loss(F.log_softmax(logits, dim=1), t, reduction='mean')


# ----------------------------------------------------------------------------------------------------------
# Layout helpers and HDF5 writing
# ----------------------------------------------------------------------------------------------------------

def ours(t):
    """torch (B, C, X, Y, Z) activation, or a conv weight (Cout, Cin, kx, ky, kz) -> our [N][C][Z][Y][X]."""
    t = t.detach()
    assert t.dim() == 5, t.shape
    return t.permute(0, 1, 4, 3, 2).contiguous().numpy()


def put(group, name, array):
    a = np.asarray(array)
    if a.dtype == np.float64:
        a = a.astype(np.float32)
    assert a.dtype in (np.float32, np.int64), (name, a.dtype)
    kw = {}
    if a.size >= 2048:  # small datasets stay contiguous: a chunk index costs more than gzip saves
        kw = dict(compression='gzip', compression_opts=9, shuffle=True)
    group.create_dataset(name, data=a, track_times=False, **kw)


def tnp(t):
    return t.detach().contiguous().numpy()


def set_config(group, cfg):
    group.attrs['config'] = json.dumps(cfg, sort_keys=True)


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def quantize(t, bits=12):
    """Round to a power-of-two grid with `bits` significant bits relative to max|t|. The rounded values are
    what the fixtures use (exactly representable, so nothing is lost); their low mantissa bits are zero,
    which lets gzip+shuffle store random data at about half the size."""
    m = float(t.abs().max()) if t.numel() else 0.0
    if m == 0.0:
        return t
    step = 2.0 ** (math.ceil(math.log2(m)) - bits)
    return torch.round(t / step) * step


def randn(gen, *shape, scale=1.0, shift=0.0):
    """Seeded normal draws, quantized (see quantize)."""
    return quantize(torch.randn(*shape, generator=gen) * scale + shift)


# ----------------------------------------------------------------------------------------------------------
# Layer fixtures
# ----------------------------------------------------------------------------------------------------------

def backward_with_r(y, gen, inputs):
    """L = sum(y * r) with r ~ N(0,1); returns r and the grads of `inputs`."""
    r = randn(gen, *y.shape)
    grads = torch.autograd.grad((y * r).sum(), inputs)
    return r, grads


def conv_case(f, name, gen, n, cin, cout, xyz, k, stride, pad, bias):
    conv = nn.Conv3d(cin, cout, k, stride, pad, bias=bias)
    with torch.no_grad():
        conv.weight.copy_(randn(gen, *conv.weight.shape, scale=1.0 / math.sqrt(cin * k ** 3)))
        if bias:
            conv.bias.copy_(randn(gen, cout, scale=0.5))
    x = randn(gen, n, cin, *xyz).requires_grad_(True)
    y = conv(x)
    params = [x, conv.weight] + ([conv.bias] if bias else [])
    r, grads = backward_with_r(y, gen, params)
    g = f.create_group(name)
    set_config(g, dict(op='conv3d', kernel=[k] * 3, stride=[stride] * 3, padding=[pad] * 3, bias=bias,
                       n=n, cin=cin, cout=cout, torch_xyz=list(xyz), torch_out_xyz=list(y.shape[2:]),
                       weight_layout='[Cout][Cin][kz][ky][kx]'))
    put(g, 'x', ours(x)); put(g, 'weight', ours(conv.weight))
    if bias:
        put(g, 'bias', tnp(conv.bias))
    put(g, 'y', ours(y)); put(g, 'dy', ours(r)); put(g, 'dx', ours(grads[0])); put(g, 'dweight', ours(grads[1]))
    if bias:
        put(g, 'dbias', tnp(grads[2]))


def unary_case(f, name, gen, fn, cfg, x):
    x = x.requires_grad_(True)
    y = fn(x)
    r, (dx,) = backward_with_r(y, gen, [x])
    g = f.create_group(name)
    cfg = dict(cfg, torch_in_shape=list(x.shape), torch_out_shape=list(y.shape))
    set_config(g, cfg)
    put(g, 'x', ours(x)); put(g, 'y', ours(y)); put(g, 'dy', ours(r)); put(g, 'dx', ours(dx))


def bn_case(f, name, gen, train):
    c = 5
    bn = nn.BatchNorm3d(c)  # eps 1e-5, momentum 0.1
    with torch.no_grad():
        bn.weight.copy_(randn(gen, c, scale=0.3, shift=1.0))
        bn.bias.copy_(randn(gen, c, scale=0.5))
        bn.running_mean.copy_(randn(gen, c, scale=0.5))
        bn.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
        bn.num_batches_tracked.fill_(7)
    rm0, rv0 = bn.running_mean.clone(), bn.running_var.clone()
    bn.train(train)
    x = (randn(gen, 2, c, 6, 5, 4, scale=2.0) + randn(gen, 1, c, 1, 1, 1, scale=1.5)).requires_grad_(True)
    y = bn(x)
    r, (dx, dw, db) = backward_with_r(y, gen, [x, bn.weight, bn.bias])
    g = f.create_group(name)
    set_config(g, dict(op='batchnorm3d', train=train, eps=bn.eps, momentum=bn.momentum, channels=c,
                       torch_in_shape=list(x.shape),
                       note='train: normalise with the biased batch variance; running_var is updated with '
                            'the unbiased one (n/(n-1)); running = (1-momentum)*running + momentum*batch'))
    put(g, 'x', ours(x)); put(g, 'weight', tnp(bn.weight)); put(g, 'bias', tnp(bn.bias))
    if train:
        put(g, 'running_mean_before', tnp(rm0)); put(g, 'running_var_before', tnp(rv0))
        put(g, 'running_mean_after', tnp(bn.running_mean)); put(g, 'running_var_after', tnp(bn.running_var))
    else:
        put(g, 'running_mean', tnp(rm0)); put(g, 'running_var', tnp(rv0))
    put(g, 'y', ours(y)); put(g, 'dy', ours(r)); put(g, 'dx', ours(dx))
    put(g, 'dweight', tnp(dw)); put(g, 'dbias', tnp(db))


def upsample_case(f, name, gen, in_shape, align_corners, scale_factor=None, size=None):
    if scale_factor is not None:
        fn = nn.Upsample(scale_factor=scale_factor, mode='trilinear', align_corners=align_corners)
        how = f'nn.Upsample(scale_factor={scale_factor}, mode="trilinear", align_corners={align_corners})'
    else:
        fn = lambda t: F.interpolate(t, size=size, mode='trilinear', align_corners=align_corners)
        how = f'F.interpolate(size={tuple(size)} (torch X,Y,Z), mode="trilinear", align_corners={align_corners})'
    unary_case(f, name, gen, fn, dict(op='trilinear', align_corners=align_corners, scale_factor=scale_factor,
                                      torch_size=list(size) if size else None, torch_call=how),
               randn(gen, *in_shape))


def make_layers(path):
    gen = seeded(1234)
    with h5py.File(path, 'w') as f:
        f.attrs['format'] = 'attunet-fixtures-layers v1'
        f.attrs['generator'] = f'make_fixtures.py, torch {torch.__version__}'
        conv_case(f, 'conv3', gen, 2, 3, 5, (7, 6, 5), 3, 1, 1, True)
        conv_case(f, 'conv3_wide', gen, 1, 16, 16, (20, 9, 6), 3, 1, 1, True)
        conv_case(f, 'conv1', gen, 2, 6, 4, (5, 4, 3), 1, 1, 0, True)
        conv_case(f, 'conv2s2_even', gen, 2, 3, 4, (8, 6, 4), 2, 2, 0, False)
        conv_case(f, 'conv2s2_odd', gen, 2, 3, 4, (7, 5, 9), 2, 2, 0, False)
        bn_case(f, 'bn_train', gen, True)
        bn_case(f, 'bn_eval', gen, False)
        # Keep ReLU inputs away from 0 so the (sub)gradient at 0 never matters.
        xr = randn(gen, 2, 3, 5, 4, 3)
        xr = xr + 0.05 * torch.sign(xr)
        unary_case(f, 'relu', gen, F.relu, dict(op='relu'), xr)
        unary_case(f, 'sigmoid', gen, torch.sigmoid, dict(op='sigmoid'), randn(gen, 2, 3, 5, 4, 3, scale=3.0))
        unary_case(f, 'softmax', gen, lambda t: F.softmax(t, dim=1), dict(op='softmax', dim='channel (1)'),
                   randn(gen, 2, 4, 5, 4, 3, scale=3.0))
        unary_case(f, 'maxpool', gen, nn.MaxPool3d(2),
                   dict(op='maxpool3d', kernel=[2, 2, 2], stride=[2, 2, 2], padding=0,
                        note='odd sizes: the last row/column/slice is dropped (floor)'),
                   randn(gen, 2, 3, 7, 5, 9))
        upsample_case(f, 'trilinear_x2_ac0', gen, (2, 3, 5, 4, 3), False, scale_factor=2)
        upsample_case(f, 'trilinear_x2_ac1', gen, (2, 3, 5, 4, 3), True, scale_factor=2)
        upsample_case(f, 'trilinear_size_ac0', gen, (2, 3, 5, 6, 7), False, size=(9, 11, 13))
        upsample_case(f, 'trilinear_size_ac1', gen, (2, 3, 5, 6, 7), True, size=(9, 11, 13))
        upsample_case(f, 'trilinear_x4', gen, (1, 3, 3, 4, 2), False, scale_factor=4)
        upsample_case(f, 'trilinear_x8', gen, (1, 2, 3, 4, 2), False, scale_factor=8)
        upsample_case(f, 'trilinear_x4_ac1', gen, (1, 3, 3, 4, 2), True, scale_factor=4)
        upsample_case(f, 'trilinear_x8_ac1', gen, (1, 2, 3, 4, 2), True, scale_factor=8)

        # gate: y = alpha (N,1,...) broadcast over channels * x (N,C,...)
        alpha = torch.sigmoid(randn(gen, 2, 1, 6, 5, 4, scale=2.0)).requires_grad_(True)
        x = randn(gen, 2, 3, 6, 5, 4).requires_grad_(True)
        y = alpha.expand_as(x) * x
        r, (dalpha, dx) = backward_with_r(y, gen, [alpha, x])
        g = f.create_group('gate')
        set_config(g, dict(op='gate', formula='y = alpha.expand_as(x) * x', torch_alpha_shape=list(alpha.shape),
                           torch_x_shape=list(x.shape)))
        for k, v in dict(alpha=alpha, x=x, y=y, dy=r, dalpha=dalpha, dx=dx).items():
            put(g, k, ours(v))

        # concat on channels: y = cat([a, b], 1)
        a = randn(gen, 2, 3, 5, 4, 3).requires_grad_(True)
        b = randn(gen, 2, 2, 5, 4, 3).requires_grad_(True)
        y = torch.cat([a, b], 1)
        r, (da, db) = backward_with_r(y, gen, [a, b])
        g = f.create_group('concat')
        set_config(g, dict(op='concat', formula='y = cat([a, b], dim=1)', torch_a_shape=list(a.shape),
                           torch_b_shape=list(b.shape)))
        for k, v in dict(a=a, b=b, y=y, dy=r, da=da, db=db).items():
            put(g, k, ours(v))

        # losses on logits (B=2, 4 classes); sample 1 has no voxel of class 3 in its target.
        logits = randn(gen, 2, 4, 6, 5, 4, scale=2.0)
        target = torch.randint(0, 4, (2, 1, 6, 5, 4), generator=gen)
        target[1][target[1] == 3] = 1
        for name, fn, desc in [
            ('softmax_dice', lambda lg: soft_dice_loss(lg, target, 4),
             'SoftDiceLoss(4): softmax over channels, one-hot incl. background, smooth 0.01 on I and U, '
             'loss = 1 - sum_{b,c} 2*I/U / (B*C); sample 1 lacks class 3'),
            ('cross_entropy', lambda lg: cross_entropy_3d(lg, target),
             'cross_entropy_3D: mean over all voxels of -log softmax(logits)[target]'),
            ('sorensen_dice', lambda lg: sorensen_dice_loss(lg, target, 4),
             "attunet's default Dice loss: 1 - mean_{b,c} (2 sum pg + 1e-5) / (sum p^2 + sum g^2 + 1e-5)")]:
            lg = logits.clone().requires_grad_(True)
            loss = fn(lg)
            (dl,) = torch.autograd.grad(loss, [lg])
            g = f.create_group(name)
            set_config(g, dict(op=name, n_classes=4, description=desc, torch_logits_shape=list(lg.shape),
                               target_layout='int64 [N][1][Z][Y][X]'))
            put(g, 'logits', ours(lg)); put(g, 'target', ours(target))
            put(g, 'loss', np.float32(loss.item())); put(g, 'dlogits', ours(dl))

        # optimizers: 4 steps of torch.optim on a flat vector with given gradients (weight decay 1e-6 as the
        # paper's configs); params after each step. Own generator, so the groups above do not change.
        og = seeded(4242)
        p0 = randn(og, 64)
        grads = randn(og, 4, 64, scale=0.5)
        for name, make in [('adam', lambda prm: torch.optim.Adam([prm], lr=1e-2, weight_decay=1e-6)),
                           ('sgd_nesterov', lambda prm: torch.optim.SGD([prm], lr=1e-2, momentum=0.9, nesterov=True,
                                                                        weight_decay=1e-6))]:
            prm = torch.nn.Parameter(p0.clone())
            opt = make(prm)
            after = []
            for k in range(4):
                opt.zero_grad()
                prm.grad = grads[k].clone()
                opt.step()
                after.append(prm.detach().clone())
            g = f.create_group('optim_' + name)
            set_config(g, dict(op='optimizer', optimizer=name, lr=1e-2, weight_decay=1e-6, momentum=0.9,
                               note='params[k] = parameters after step k+1, with grads[k] as the gradient'))
            put(g, 'params0', p0.numpy()); put(g, 'grads', grads.numpy()); put(g, 'params', torch.stack(after).numpy())


# ----------------------------------------------------------------------------------------------------------
# Model fixtures
# ----------------------------------------------------------------------------------------------------------

FIXTURE_FEATURE_SCALE = 16
N_CLASSES = 4


def build_model(kind, align_corners, feature_scale=FIXTURE_FEATURE_SCALE):
    cls = dict(attention=unet_CT_multi_att_dsv_3D, unet=unet_CT_dsv_3D)[kind]
    return cls(feature_scale=feature_scale, n_classes=N_CLASSES, in_channels=1, align_corners=align_corners)


# The U-Net presets (`--model unet-capacity-matched`, `--model unet-10m`): unet_CT_dsv_3D at a fixed feature
# scale, 4 classes. ModelTests.testPresetsMatchTheOriginalClass pins these counts; `python make_fixtures.py
# --presets` prints them (and the search for the 10.40 M scale) without writing any fixture.
UNET_PRESETS = [('unet-capacity-matched', 3.82, 6444328), ('unet-10m', 3, 10403190)]


def preset_parameter_count(feature_scale):
    return sum(p.numel() for p in build_model('unet', False, feature_scale=feature_scale).parameters())


def print_presets():
    for name, scale, want in UNET_PRESETS:
        n = preset_parameter_count(scale)
        print(f'{name}: feature_scale {scale}, filters {filters_for(scale)}: {n:,} parameters (pinned {want:,})')
        assert n == want
    # The paper's 10.40 M row: the filter sets of unet_CT_dsv_3D between feature scales 2.5 and 3.8 whose
    # count rounds to 10.40 M (only one: [21, 42, 85, 170, 341], feature scales (2.9942, 3.0029]).
    seen = {}
    for i in range(2500, 3800):
        scale = i / 1000
        f = tuple(filters_for(scale))
        if f not in seen:
            seen[f] = (scale, preset_parameter_count(scale))
    for f, (scale, n) in seen.items():
        if round(n / 1e4) == 1040:
            print(f'10.40 M: filters {list(f)} from feature_scale {scale}: {n:,} parameters')


def seeded_model(kind, seed):
    """Original-style init, then 3 no-grad train-mode passes on random inputs to give the BN running stats
    realistic values, then a multiplicative/additive perturbation so eval mode differs from train mode."""
    gen = seeded(seed)
    model = build_model(kind, False)
    init_like_original(model, gen)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(randn(gen, 2, 1, 32, 32, 16))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.add_(randn(gen, *m.running_mean.shape, scale=0.1))
                m.running_var.mul_(torch.rand(m.running_var.shape, generator=gen) * 0.6 + 0.7)
    return model


def state_dict_numpy(model):
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().clone()
        out[k] = v.numpy().astype(np.int64) if k.endswith('num_batches_tracked') else v.numpy().astype(np.float32)
    return out


def model_case(f, kind, base_state, case, cfg_extra, gen, with_param_grads=True):
    train, ac, shape = case['train'], case['align_corners'], case['torch_input_shape']
    model = build_model(kind, ac)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in base_state.items()})
    model.train(train)
    alphas = {}
    hooks = []
    if kind == 'attention':
        for name in GATE_NAMES:
            mod = model.get_submodule(name)
            hooks.append(mod.register_forward_hook(lambda m, i, o, name=name: alphas.__setitem__(name, o[1])))
    x = randn(gen, *shape).requires_grad_(True)
    target = torch.randint(0, N_CLASSES, (shape[0], 1, *shape[2:]), generator=gen)
    logits = model(x)
    loss = soft_dice_loss(logits, target, N_CLASSES)
    params = [p for _, p in model.named_parameters()]
    grads = torch.autograd.grad(loss, [x] + params)
    for h in hooks:
        h.remove()

    g = f.create_group(case['name'])
    cfg = dict(model=dict(attention='unet_CT_multi_att_dsv_3D', unet='unet_CT_dsv_3D')[kind],
               feature_scale=FIXTURE_FEATURE_SCALE, filters=filters_for(FIXTURE_FEATURE_SCALE), in_channels=1,
               n_classes=N_CLASSES, align_corners=ac, bn_mode='train' if train else 'eval',
               torch_input_shape=list(shape), loss='SoftDiceLoss(4)', weights='/state_dict',
               param_grads=with_param_grads, activation_layout='[N][C][Z][Y][X] = torch (B,C,X,Y,Z).permute(0,1,4,3,2)',
               state_dict_layout='PyTorch shape and axis order (checkpoint format)', **cfg_extra)
    set_config(g, cfg)
    put(g, 'input', ours(x))
    put(g, 'target', ours(target))
    put(g, 'logits', ours(logits))
    put(g, 'loss', np.float32(loss.item()))
    put(g, 'dinput', ours(grads[0]))
    if kind == 'attention':
        ga = g.create_group('attention')
        for name in GATE_NAMES:
            put(ga, name, ours(alphas[name]))
    if train:
        gb = g.create_group('buffers_after')
        for k, v in state_dict_numpy(model).items():
            if 'running_' in k or k.endswith('num_batches_tracked'):
                put(gb, k, v)
    if with_param_grads:
        gg = g.create_group('grad')
        for (k, _), d in zip(model.named_parameters(), grads[1:]):
            put(gg, k, tnp(d))
    return loss.item()


SHAPE_A = (1, 1, 48, 64, 32)  # torch (B, C, X, Y, Z)
SHAPE_B = (2, 1, 32, 48, 16)
SHAPE_C = (1, 1, 16, 32, 48)  # small, with the aspect reversed (X smallest, Z largest)


def model_cases(kind, full):
    """The committed set (full=False) is sized for the ~8 MB budget (it lands near 9.5 MB):
      train_b      (2,1,32,48,16) BN train, align_corners False, with all parameter gradients;
      eval_c       (1,1,16,32,48) BN eval,  align_corners False, no parameter gradients;
      train_c_ac1  (1,1,16,32,48) BN train, align_corners True,  no parameter gradients (attention model only).
    Every case has input, target, logits, loss, dL/dinput (+ attention maps, + BN buffers after train mode).
    full=True writes the whole matrix instead (shapes A and B x train/eval, + train_b_ac1 for the attention
    model), all with parameter gradients: about 30 MB, not committed."""
    c = lambda name, train, ac, shape, pg: dict(name=name, train=train, align_corners=ac,
                                                torch_input_shape=shape, param_grads=pg)
    if full:
        cases = [c('train_a', True, False, SHAPE_A, True), c('eval_a', False, False, SHAPE_A, True),
                 c('train_b', True, False, SHAPE_B, True), c('eval_b', False, False, SHAPE_B, True)]
        if kind == 'attention':
            cases.append(c('train_b_ac1', True, True, SHAPE_B, True))
    else:
        cases = [c('train_b', True, False, SHAPE_B, True), c('eval_c', False, False, SHAPE_C, False)]
        if kind == 'attention':
            cases.append(c('train_c_ac1', True, True, SHAPE_C, False))
    return cases


def make_model_file(path, kind, seed, full):
    model = seeded_model(kind, seed)
    base = state_dict_numpy(model)
    summary = []
    with h5py.File(path, 'w') as f:
        f.attrs['format'] = 'attunet-fixtures-model v1'
        f.attrs['generator'] = f'make_fixtures.py, torch {torch.__version__}'
        f.attrs['model'] = dict(attention='unet_CT_multi_att_dsv_3D', unet='unet_CT_dsv_3D')[kind]
        gs = f.create_group('state_dict')
        for k, v in base.items():
            put(gs, k, v)
        n_params = sum(p.numel() for p in model.parameters())
        f.attrs['n_parameters'] = n_params
        for i, case in enumerate(model_cases(kind, full)):
            # Each case draws its input/target from its own seed, so the committed and the full set agree
            # on the cases they share.
            gen = seeded(seed * 100 + sum(map(ord, case['name'])))
            loss = model_case(f, kind, base, case, dict(seed=seed), gen, with_param_grads=case['param_grads'])
            summary.append((case['name'], loss))
    return n_params, summary


# ----------------------------------------------------------------------------------------------------------
# Trainer steps: a few optimizer steps of the whole model, in the way of llm.c's test_gpt2.c
# ----------------------------------------------------------------------------------------------------------

TRAINER_STEPS = 5
TRAINER_LR = 1e-3
TRAINER_WEIGHT_DECAY = 1e-6
TRAINER_SEED = 2020
TRAINER_INPUT_SHAPE = (2, 1, 32, 32, 16)  # torch (B, C, X, Y, Z): batch 2, patch 32x32x16 (X x Y x Z)


def make_trainer_steps(path):
    """TRAINER_STEPS optimizer steps of the attention model (feature_scale 16, 4 classes, BN in train mode) on
    one fixed batch, fed again at every step: zero_grad, forward, attunet's default Sorensen-Dice loss,
    backward, torch.optim.Adam(lr=TRAINER_LR, weight_decay=1e-6). Writes the initial state_dict, the batch,
    the loss of every step (computed before that step's update), the gradient of the first step and the
    state_dict after the last step. The labels are a fixed function of the input intensity (thresholds near
    its 40/70/90 % quantiles), so the steps make visible progress."""
    gen = seeded(TRAINER_SEED)
    model = build_model('attention', False)
    init_like_original(model, gen)  # BN running stats stay at PyTorch's initial 0 / 1, num_batches_tracked 0
    model.train()
    base = state_dict_numpy(model)
    x = randn(gen, *TRAINER_INPUT_SHAPE)
    target = torch.bucketize(x, torch.tensor([-0.25, 0.5, 1.25]))  # int64 in 0..3, shape (B, 1, X, Y, Z)
    opt = torch.optim.Adam(model.parameters(), lr=TRAINER_LR, weight_decay=TRAINER_WEIGHT_DECAY)
    losses, grads = [], None
    for step in range(TRAINER_STEPS):
        opt.zero_grad()
        loss = sorensen_dice_loss(model(x), target, N_CLASSES)
        loss.backward()
        if step == 0:
            grads = {k: tnp(p.grad) for k, p in model.named_parameters()}
        opt.step()
        losses.append(loss.item())
    with h5py.File(path, 'w') as f:
        f.attrs['format'] = 'attunet-fixtures-trainer-steps v1'
        f.attrs['generator'] = f'make_fixtures.py, torch {torch.__version__}'
        set_config(f, dict(model='unet_CT_multi_att_dsv_3D', feature_scale=FIXTURE_FEATURE_SCALE,
                           filters=filters_for(FIXTURE_FEATURE_SCALE), in_channels=1, n_classes=N_CLASSES,
                           align_corners=False, bn_mode='train', torch_input_shape=list(TRAINER_INPUT_SHAPE),
                           batch=TRAINER_INPUT_SHAPE[0], patch_xyz=list(TRAINER_INPUT_SHAPE[2:]),
                           loss='dice (Sorensen-Dice, smooth 1e-5)', optimizer='adam', lr=TRAINER_LR,
                           betas=[0.9, 0.999], eps=1e-8, weight_decay=TRAINER_WEIGHT_DECAY, steps=TRAINER_STEPS,
                           seed=TRAINER_SEED, labels='bucketize(input, [-0.25, 0.5, 1.25])',
                           activation_layout='[N][C][Z][Y][X] = torch (B,C,X,Y,Z).permute(0,1,4,3,2)',
                           state_dict_layout='PyTorch shape and axis order (checkpoint format)'))
        gs = f.create_group('state_dict')
        for k, v in base.items():
            put(gs, k, v)
        put(f, 'image', ours(x))
        put(f, 'target', ours(target))
        put(f, 'losses', np.array(losses, dtype=np.float32))
        gg = f.create_group('grad')
        for k, v in grads.items():
            put(gg, k, v)
        ga = f.create_group('state_dict_after')
        for k, v in state_dict_numpy(model).items():
            put(ga, k, v)
    return losses


# ----------------------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--out', default=HERE)
    ap.add_argument('--full', action='store_true',
                    help='write the full case matrix with all parameter gradients (~30 MB; not committed)')
    ap.add_argument('--presets', action='store_true',
                    help="print the U-Net presets' parameter counts with the original class and exit")
    args = ap.parse_args()
    if args.presets:
        print_presets()
        return 0
    os.makedirs(args.out, exist_ok=True)

    for kind, want in [('attention', 6473322), ('unet', 5888004)]:
        n = sum(p.numel() for p in build_model(kind, False, feature_scale=4).parameters())
        print(f'{kind}: {n:,} parameters at feature_scale 4 (expected {want:,})')
        assert n == want
    for name, scale, want in UNET_PRESETS:
        n = preset_parameter_count(scale)
        print(f'{name}: unet_CT_dsv_3D at feature_scale {scale}: {n:,} parameters (pinned in ModelTests: {want:,})')
        assert n == want

    p = os.path.join(args.out, 'layers.h5')
    make_layers(p)
    print(f'wrote {p}')
    for kind, fname, seed in [('attention', 'model_attention_unet.h5', 2018), ('unet', 'model_unet.h5', 2019)]:
        p = os.path.join(args.out, fname)
        n, summary = make_model_file(p, kind, seed, args.full)
        print(f'wrote {p}: {kind}, feature_scale {FIXTURE_FEATURE_SCALE}, {n:,} parameters')
        for name, loss in summary:
            print(f'  {name}: SoftDice loss {loss:.6f}')
    p = os.path.join(args.out, 'trainer_steps.h5')
    losses = make_trainer_steps(p)
    print(f'wrote {p}: {TRAINER_STEPS} Adam steps, Sorensen-Dice losses ' + ', '.join(f'{v:.7f}' for v in losses))
    for fn in ['layers.h5', 'model_attention_unet.h5', 'model_unet.h5', 'trainer_steps.h5']:
        q = os.path.join(args.out, fn)
        print(f'{fn}: {os.path.getsize(q) / 1e6:.2f} MB')


if __name__ == '__main__':
    sys.exit(main())
