#!/usr/bin/env python3
"""Loads attunet weights into the (re-stated) original PyTorch model and compares its logits with the logits
attunet computed for the same input.

    python Tests/Fixtures/check_checkpoint_in_torch.py CHECKPOINT.h5 IO.h5
    python Tests/Fixtures/check_checkpoint_in_torch.py --safetensors MODEL.safetensors IO.h5

A checkpoint is read with h5py + torch.from_numpy. A safetensors file (`attunet export-weights`) is read with
the safetensors package (`safetensors.torch.load_file`), its model configuration taken from the header's
`__metadata__` (`attunet_model_config`), and its header checked against the class's `state_dict()`: the same
names in the same order, float32 everywhere but the int64 `num_batches_tracked`, the same shapes, contiguous
data. Both load with `load_state_dict(strict=True)`.

IO.h5 (or IO.safetensors) holds `input` and `logits` in attunet's [N][C][Z][Y][X] layout (the Swift tests
ModelTests.testCheckpointLoadsIntoPyTorch and ExportWeightsTests write them). Needs torch, numpy, h5py and,
for --safetensors, safetensors. Exit 0 when the largest logit difference is at most 1e-4 of the logits' scale.
"""
import json
import struct
import sys

import h5py
import numpy as np
import torch

import make_fixtures as mf


def build(cfg):
    """The original class for an attunet `model_config`; the U-Net presets are unet_CT_dsv_3D at their
    feature scale (stored in model_config)."""
    cls = mf.unet_CT_multi_att_dsv_3D if cfg['kind'] == 'attention-unet' else mf.unet_CT_dsv_3D
    assert cfg['kind'] in ('attention-unet', 'unet', 'unet-capacity-matched', 'unet-10m'), cfg['kind']
    # snake_case keys; checkpoints written before attunet used snake_case have camelCase ones.
    def key(snake, camel):
        return cfg[snake] if snake in cfg else cfg[camel]
    return cls(feature_scale=key('feature_scale', 'featureScale'), n_classes=cfg['classes'],
               in_channels=key('in_channels', 'inChannels'), align_corners=key('align_corners', 'alignCorners'))


def read_checkpoint(path):
    with h5py.File(path, 'r') as f:
        cfg = json.loads(f.attrs['model_config'])
        state = {k: torch.from_numpy(np.array(f['state_dict'][k][()])) for k in f['state_dict']}
    return cfg, state, build(cfg)


def read_safetensors(path):
    from safetensors import safe_open
    from safetensors.torch import load_file
    with open(path, 'rb') as f:
        (n,) = struct.unpack('<Q', f.read(8))
        header = json.loads(f.read(n), object_pairs_hook=lambda pairs: pairs)   # keeps the header's order
        size = f.seek(0, 2) - 8 - n
    with safe_open(path, framework='pt') as f:
        meta = f.metadata()
    assert meta['format'] == 'pt', meta
    cfg = json.loads(meta['attunet_model_config'])
    model = build(cfg)
    expected = model.state_dict()
    entries = [(k, dict(v)) for k, v in header if k != '__metadata__']
    names = [k for k, _ in entries]
    assert names == list(expected), f'{path}: header order differs from state_dict(): {names[:5]}... vs {list(expected)[:5]}...'
    spans = []
    for k, e in entries:
        want = expected[k]
        dtype = {torch.float32: 'F32', torch.int64: 'I64'}[want.dtype]
        assert e['dtype'] == dtype and e['shape'] == list(want.shape), f'{k}: {e} but the class has {dtype} {list(want.shape)}'
        spans.append(tuple(e['data_offsets']))
    spans.sort()
    assert spans[0][0] == 0 and spans[-1][1] == size and all(a[1] == b[0] for a, b in zip(spans, spans[1:])), \
        f'{path}: data not contiguous'
    state = load_file(path)
    for k, v in state.items():
        assert v.dtype == expected[k].dtype and v.shape == expected[k].shape, k
    return cfg, state, model


def read_io(path):
    if path.endswith('.safetensors'):
        from safetensors.numpy import load_file
        io = load_file(path)
        return io['input'], io['logits']
    with h5py.File(path, 'r') as f:
        return np.array(f['input']), np.array(f['logits'])   # [N][C][Z][Y][X]


def main(args):
    safetensors = args[0] == '--safetensors'
    weights_path, io_path = args[1:3] if safetensors else args[0:2]
    cfg, state, model = (read_safetensors if safetensors else read_checkpoint)(weights_path)
    model.load_state_dict(state, strict=True)  # raises on any missing, unexpected or mis-shaped tensor
    model.eval()
    x, ours = read_io(io_path)
    with torch.no_grad():
        y = model(torch.from_numpy(x.transpose(0, 1, 4, 3, 2).copy())).numpy().transpose(0, 1, 4, 3, 2)
    err = float(np.abs(y - ours).max())
    scale = float(np.abs(y).max())
    print(f'{weights_path}: {cfg["kind"]}, {sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k)} '
          f'parameter values, logits {list(y.shape)}: max |torch - attunet| = {err:.3g} (scale {scale:.3g})')
    return 0 if err <= 1e-4 * scale else 1


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
