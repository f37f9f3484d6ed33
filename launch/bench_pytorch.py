"""PyTorch's side of `launch/compare-pytorch.sh`: times training steps of the original model definition
(Tests/Fixtures/make_fixtures.py, the classes of the released code) on CPU, as `attunet bench train` times
attunet's, and prints one JSON object with the same figures.

A step is what the original training loop does per batch: zero the gradients, forward, attunet's default
Sorensen-Dice loss, backward, Adam. The input is a normalised random patch and the labels a random 4-class
map (speed does not depend on the values). Time per phase, peak resident memory (ru_maxrss) and page faults
per timed step are reported; --infer also times an evaluation-mode forward pass of one patch without
gradients.

    python launch/bench_pytorch.py --model attention-unet --patch 96x96x48 --batch 2 --threads 1
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "Tests", "Fixtures"))
import make_fixtures as mf  # noqa: E402  (the model classes; importing it pins one thread and determinism)
import torch  # noqa: E402

torch.use_deterministic_algorithms(False)   # make_fixtures pins it for fixtures; training runs without it


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["attention-unet", "unet"], default="attention-unet")
    ap.add_argument("--feature-scale", type=float, default=4)
    ap.add_argument("--patch", default="96x96x48", help="X x Y x Z")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--infer", action="store_true", help="time an eval-mode forward of one patch instead of training")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    x, y, z = (int(v) for v in a.patch.lower().split("x"))
    kind = "attention" if a.model == "attention-unet" else "unet"
    torch.manual_seed(0)
    model = mf.build_model(kind, False, feature_scale=a.feature_scale)
    params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(1)

    faults0 = faults1 = None
    walls, phases = [], {"forward": 0.0, "loss": 0.0, "backward": 0.0, "optimizer": 0.0}
    if a.infer:
        model.eval()
        image = torch.randn(1, 1, x, y, z, generator=gen)
        with torch.no_grad():
            for i in range(a.warmup + a.steps):
                if i == a.warmup:
                    faults0 = resource.getrusage(resource.RUSAGE_SELF)
                t0 = time.perf_counter()
                model(image)
                if i >= a.warmup:
                    walls.append(time.perf_counter() - t0)
        batch = 1
    else:
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-6)
        image = torch.randn(a.batch, 1, x, y, z, generator=gen)
        labels = torch.randint(0, mf.N_CLASSES, (a.batch, 1, x, y, z), generator=gen)
        for i in range(a.warmup + a.steps):
            if i == a.warmup:
                faults0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            logits = model(image)
            t1 = time.perf_counter()
            loss = mf.sorensen_dice_loss(logits, labels, mf.N_CLASSES)
            t2 = time.perf_counter()
            loss.backward()
            t3 = time.perf_counter()
            opt.step()
            t4 = time.perf_counter()
            if i >= a.warmup:
                walls.append(t4 - t0)
                for k, v in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    phases[k] += v / a.steps
        batch = a.batch
    faults1 = resource.getrusage(resource.RUSAGE_SELF)
    median = statistics.median(walls)
    out = {
        "framework": f"PyTorch {torch.__version__}", "model": a.model, "parameters": params, "patch": [x, y, z],
        "batch": batch, "threads": torch.get_num_threads(), "mode": "inference" if a.infer else "training",
        "timed_steps": a.steps, "warmup_steps": a.warmup,
        "step_seconds": {"median": median, "fastest": min(walls), "slowest": max(walls)},
        "patches_per_second": batch / median, "voxels_per_second": batch * x * y * z / median,
        "phases": phases if not a.infer else {},
        "peak_resident_bytes": faults1.ru_maxrss * 1024,
        "minor_faults_per_step": (faults1.ru_minflt - faults0.ru_minflt) / a.steps,
        "major_faults_per_step": (faults1.ru_majflt - faults0.ru_majflt) / a.steps,
    }
    print(json.dumps(out, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
