#!/usr/bin/env bash
# Writes the fuzz targets' seed corpus, Fuzz/corpus/<target>/ (committed; well under 1 MB): small real files
# written by attunet (synth, prepare, train, import-weights) and by the Python libraries the tests compare
# with (nibabel, h5py, safetensors). Needs the release build and the test .venv (launch/test.sh makes it).
#   bash Fuzz/make_corpus.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${ATTUNET_BIN:-$PWD/.build/release/attunet}
PY=${ATTUNET_PYTHON:-$PWD/.venv/bin/python}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
C=Fuzz/corpus
rm -rf "$C"
mkdir -p "$C"/{nifti,casestore,checkpoint,safetensors,splits,config}

# attunet: one small phantom (image and label .nii.gz), a store at 12 mm, a one-step run at feature scale 64.
"$BIN" synth --cases 2 --seed 1 --resolution 0.25 --threads 1 --out "$W/nii" >/dev/null
cp "$(ls "$W"/nii/imagesTr/*.nii.gz | head -1)" "$C/nifti/attunet-image.nii.gz"
cp "$(ls "$W"/nii/labelsTr/*.nii.gz | head -1)" "$C/nifti/attunet-label.nii.gz"
"$BIN" prepare --input "$W/nii" --out "$W/store.h5" --spacing 12 --threads 1 >/dev/null
cp "$W/store.h5" "$C/casestore/attunet-store.h5"
"$BIN" train --store "$W/store.h5" --feature-scale 64 --patch 32x32x16 --batch 1 --epochs 1 --samples-per-case 1 \
  --val-every 100 --out "$W/run" >/dev/null
cp "$W/run/config.json" "$C/config/attunet-train-config.json"
"$BIN" import-weights "$W/run/checkpoint_latest.h5" --out "$W/weights.h5" >/dev/null

"$PY" - "$W" "$C" <<'PY'
import json, sys
import h5py, nibabel as nib, numpy as np
from safetensors.numpy import save_file
w, c = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
aff = np.diag([2.0, 2.0, 3.0, 1.0]); aff[:3, 3] = [-10, 5, 7]

# NIfTI from nibabel: int16 and float32 (with scaling), little and big endian, gzip'ed, a single-volume 4D.
img = rng.integers(-1000, 1000, (6, 5, 4)).astype(np.int16)
nib.save(nib.Nifti1Image(img, aff), f"{c}/nifti/nibabel-int16.nii")
nib.save(nib.Nifti1Image(img, aff), f"{c}/nifti/nibabel-int16.nii.gz")
f = nib.Nifti1Image(rng.normal(size=(5, 4, 3)).astype(np.float32), aff)
f.header.set_slope_inter(2.0, -1.0)
nib.save(f, f"{c}/nifti/nibabel-float32-scaled.nii")
be = nib.Nifti1Image(img.astype(">i2"), aff)
nib.save(be, f"{c}/nifti/nibabel-bigendian.nii")
nib.save(nib.Nifti1Image(rng.integers(0, 4, (4, 4, 3, 1)).astype(np.uint8), aff), f"{c}/nifti/nibabel-uint8-4d.nii")

# A case store written by h5py in CaseStoreFormat's layout (variable-length string attributes, Fletcher-32).
vstr = h5py.string_dtype()
with h5py.File(f"{c}/casestore/h5py-store.h5", "w") as s:
    s.attrs.create("format", "attunet-case-store", dtype=vstr)
    s.attrs["format_version"] = np.array([1], np.int64)
    s.attrs.create("class_names", json.dumps(["background", "spleen", "pancreas", "kidney"]), dtype=vstr)
    s.attrs.create("modality", "CT", dtype=vstr)
    s.attrs["spacing_mm"] = np.array([4.0, 4.0, 4.0])
    s.attrs["foreground_intensity"] = np.array([-50.0, 40.0, 200.0, 45.0, 30.0])
    for n, shape in (("case_a", (6, 5, 4)), ("case_b", (3, 9, 2))):
        g = s.create_group(f"cases/{n}")
        g.create_dataset("image", data=rng.integers(-100, 300, shape).astype(np.int16), chunks=shape, fletcher32=True, compression="gzip")
        lab = rng.integers(0, 4, shape).astype(np.uint8)
        g.create_dataset("label", data=lab, chunks=shape, fletcher32=True)
        fg = np.array([[1, 1, 1, 1], [2, 0, 2, 1]], np.int32)
        g.create_dataset("foreground", data=fg, fletcher32=True)
        g.attrs["spacing_mm"] = np.array([4.0, 4.0, 4.0])
        g.attrs["affine"] = np.eye(4).ravel() * 4
        g.attrs["intensity_stats"] = np.array([-100.0, 299.0, 100.0, 80.0])
        g.attrs["class_voxels"] = np.bincount(lab.ravel(), minlength=4).astype(np.int64)
        g.attrs.create("source", f"{n}.nii.gz", dtype=vstr)
        g.attrs["original_shape"] = np.array(shape[::-1], np.int64)

# attunet's training and weights-only checkpoints (feature scale 64), rewritten by h5py with the same groups,
# attributes and values in contiguous datasets: attunet's own files are about 1 MB each, mostly the chunk
# index of each of their ~110 chunked datasets (the store seeds carry that layout, Fletcher-32 included).
def copy(src, dst):
    for k, v in src.attrs.items():
        if isinstance(v, str): dst.attrs.create(k, v, dtype=vstr)
        else: dst.attrs[k] = v
    for k, v in src.items():
        if isinstance(v, h5py.Group): copy(v, dst.create_group(k))
        else: dst.create_dataset(k, data=v[()])
for name, path in (("training", f"{w}/run/checkpoint_latest.h5"), ("weights", f"{w}/weights.h5")):
    with h5py.File(path, "r") as src, h5py.File(f"{c}/checkpoint/attunet-{name}-h5py.h5", "w") as dst:
        copy(src, dst)
with h5py.File(f"{w}/weights.h5", "r") as src:
    sd = {k: np.array(src["state_dict"][k]) for k in src["state_dict"]}
save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, f"{c}/safetensors/attunet-fs64.safetensors")
save_file({"conv1.conv1.0.weight": rng.normal(size=(4, 1, 3, 3, 3)).astype(np.float32),
           "final.weight": rng.normal(size=(2, 4, 1, 1, 1)).astype(np.float16),
           "final.bias": np.zeros(2, np.float64), "x.num_batches_tracked": np.array(3, np.int64)},
          f"{c}/safetensors/small-mixed-dtypes.safetensors", metadata={"format": "pt"})

# splits: attunet's layout and nnU-Net's splits_final.json over case_00 ... case_09; a --group-by map.
ids = [f"case_0{i}" for i in range(10)]
parts = [ids[k::5] for k in range(5)]
folds = [{"train": sorted(set(ids) - set(p)), "test": p} for p in parts]
json.dump({"protocol": "k-fold", "folds": folds}, open(f"{c}/splits/attunet-5fold.json", "w"), indent=2, sort_keys=True)
json.dump([{"train": ids[5:], "val": ids[:5]}, {"train": ids[:5], "val": ids[5:]}],
          open(f"{c}/splits/nnunet-2fold.json", "w"))
json.dump({i: f"patient{int(i[-1]) // 2}" for i in ids}, open(f"{c}/splits/groups.json", "w"))
open(f"{c}/splits/groups.csv", "w").write("case,patient\n" + "".join(f"{i},p{int(i[-1]) // 2}\n" for i in ids))

# config: the training state a checkpoint stores.
with h5py.File(f"{w}/run/checkpoint_latest.h5", "r") as ck:
    open(f"{c}/config/training-state.json", "w").write(ck.attrs["training_state"])
PY
du -sh "$C"; find "$C" -type f | sort
