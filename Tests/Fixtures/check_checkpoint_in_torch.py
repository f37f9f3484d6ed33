#!/usr/bin/env python3
"""Loads an attunet checkpoint into the (re-stated) original PyTorch model with h5py + torch.from_numpy and
compares its logits with the logits attunet computed for the same input.

    python Tests/Fixtures/check_checkpoint_in_torch.py CHECKPOINT.h5 IO.h5

IO.h5 holds `input` and `logits` in attunet's [N][C][Z][Y][X] layout (the Swift test
ModelTests.testCheckpointLoadsIntoPyTorch writes both files). Needs torch, numpy, h5py. Exit 0 when the
largest logit difference is at most 1e-4 of the logits' scale.
"""
import json
import sys

import h5py
import numpy as np
import torch

import make_fixtures as mf


def main(ckpt_path, io_path):
    with h5py.File(ckpt_path, 'r') as f:
        cfg = json.loads(f.attrs['model_config'])
        state = {k: torch.from_numpy(np.array(f['state_dict'][k][()])) for k in f['state_dict']}
    # The U-Net presets are unet_CT_dsv_3D at their feature scale (stored in model_config).
    kind = {'attention-unet': 'attention', 'unet': 'unet', 'unet-capacity-matched': 'unet', 'unet-10m': 'unet'}[cfg['kind']]
    mf.N_CLASSES = cfg['classes']
    model = mf.build_model(kind, cfg['alignCorners'], feature_scale=cfg['featureScale'])
    model.load_state_dict(state, strict=True)  # raises on any missing, unexpected or mis-shaped tensor
    model.eval()
    with h5py.File(io_path, 'r') as f:
        x = np.array(f['input'])       # [N][C][Z][Y][X]
        ours = np.array(f['logits'])
    with torch.no_grad():
        y = model(torch.from_numpy(x.transpose(0, 1, 4, 3, 2).copy())).numpy().transpose(0, 1, 4, 3, 2)
    err = float(np.abs(y - ours).max())
    scale = float(np.abs(y).max())
    print(f'{ckpt_path}: {cfg["kind"]}, {sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k)} '
          f'parameter values, logits {list(y.shape)}: max |torch - attunet| = {err:.3g} (scale {scale:.3g})')
    return 0 if err <= 1e-4 * scale else 1


if __name__ == '__main__':
    sys.exit(main(sys.argv[1], sys.argv[2]))
