"""Peak memory (and time) of one MTT iteration against syn_steps and batch_syn, Fashion-MNIST.

Each (ipc, syn_steps, batch_syn) runs in a fresh process set up as a run is (hpcdd's malloc
tuning, --threads torch threads), with the data loaded and the distiller built. What is measured:

* CPU: the peak resident set of that process during ONE iteration, minus its resident set just
  before it (``VmHWM`` reset through ``/proc/self/clear_refs`` right before the iteration, read
  from ``/proc/self/status`` after it): ``peak_delta_mb``. ``peak_rss_mb`` is the process total
  (what a result row's ``peak_rss_mb`` reports, without the evaluation).
* GPU (``--device cuda``): ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``.

The expert buffer is synthetic (random parameters at two epochs, written as a ``buffer_dir``):
memory and time of an iteration do not depend on trained values. Configurations whose estimate
(``hpcdd.distill.mtt.estimate_memory_gb``) exceeds ``--cap-gb`` are not run (so the bench cannot
take a shared machine's memory) and are listed as skipped. ``--fit`` prints least-squares values
for ``MEMORY_FIT``. Writes results/bench_mtt_memory.csv with provenance.

Usage: python bench/bench_mtt_memory.py [--ipcs 1,10,50] [--syn-steps 5,10,20]
       [--batch-syn 10,100,full] [--cap-gb 8] [--threads 1] [--fit]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from csvrows import append_rows

HERE = Path(__file__).resolve().parent


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def write_buffer(root: Path, dataset: str, net: str) -> Path:
    """A one-expert buffer with random parameters at epochs 0..2 (an mtt_expert dir layout)."""
    import torch

    from hpcdd.data import load_dataset
    from hpcdd.distill.mtt_experts import epoch_path
    from hpcdd.io import atomic_torch_save
    from hpcdd.rundir import PREREQ_KIND, mark_done, write_identity
    from hpcdd.seeding import fresh_net
    from hpcdd.specs.mtt import MttExpertConfig

    info = load_dataset(dataset).info
    d = root / "expert0"
    d.mkdir(parents=True)
    write_identity(d, "bench", MttExpertConfig(dataset=dataset, net=net, epochs=2), PREREQ_KIND, prereq="mtt_expert")
    for e in range(3):
        net_e = fresh_net(net, info, e, "bench-expert")
        atomic_torch_save(epoch_path(d, e), {"epoch": e, "params": {k: v.detach().clone()
                                                                    for k, v in net_e.named_parameters()}})
    mark_done(d, "bench")
    return root


def measure_one(ipc: int, syn_steps: int, batch_syn: int, dataset: str, net: str, device: str) -> dict:
    """One iteration in this (fresh) process; returns the row."""
    import torch

    from hpcdd.catalog import configs_from_flat, resolve
    from hpcdd.data import load_dataset
    from hpcdd.distill.mtt import MTT, estimate_memory_gb
    from hpcdd.runtime.accel import make_accelerator

    with tempfile.TemporaryDirectory() as tmp:
        buffer = write_buffer(Path(tmp), dataset, net)
        run, _ = configs_from_flat({"method": "mtt", "dataset": dataset, "net": net, "ipc": ipc, "iterations": 1,
                                    "syn_steps": syn_steps, "batch_syn": batch_syn, "max_start_epoch": 1,
                                    "expert_epochs": 2, "buffer_dir": str(buffer)}, where="bench")
        cfg = resolve(run)
        data = load_dataset(dataset)
        accel = make_accelerator()
        d = MTT(cfg, data.train, accel, None, {})
        cuda = accel.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            base = _status_kb("VmRSS") * 1024
        t0, c0 = time.perf_counter(), time.process_time()
        loss = d.step(0)["loss"]
        if cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = _status_kb("VmHWM") * 1024
        return {"ipc": ipc, "syn_steps": syn_steps, "batch_syn": batch_syn, "net": net,
                "peak_delta_mb": round((peak - base) / 2**20, 1), "peak_rss_mb": round(peak / 2**20, 1),
                "base_mb": round(base / 2**20, 1), "estimate_gb": round(estimate_memory_gb(cfg, data.info), 2),
                "sec_per_iter": round(time.perf_counter() - t0, 2), "cpu_sec_per_iter": round(time.process_time() - c0, 2),
                "loss": round(loss, 4), "measure": "cuda max_memory_allocated" if cuda else "VmHWM-VmRSS (CPU)",
                "device": torch.cuda.get_device_name() if cuda else f"cpu x{torch.get_num_threads()}"}


def fit(rows: list[dict], act_bytes: int, param_bytes: int) -> dict:
    """Least squares of peak_delta = steps x (a x batch x act + b x params) + c x batch x act."""
    import numpy as np

    X = np.array([[r["syn_steps"] * r["batch_syn"] * act_bytes, r["syn_steps"] * param_bytes,
                   r["batch_syn"] * act_bytes] for r in rows], dtype=float)
    y = np.array([r["peak_delta_mb"] * 2**20 for r in rows])
    (a, b, c), *_ = np.linalg.lstsq(X, y, rcond=None)
    base = float(np.median([r["base_mb"] for r in rows])) / 1024
    return {"per_image_step": round(float(a), 2), "per_param_step": round(float(b), 2),
            "per_image": round(float(c), 2), "base_gb": round(base, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ipcs", default="1,10,50")
    ap.add_argument("--syn-steps", default="5,10,20")
    ap.add_argument("--batch-syn", default="10,100,full", help="'full': the whole synthetic set (ipc x classes)")
    ap.add_argument("--dataset", default="fashionmnist")
    ap.add_argument("--net", default="convnet3")
    ap.add_argument("--cap-gb", type=float, default=8.0, help="skip configurations estimated above this")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--fit", action="store_true", help="print least-squares MEMORY_FIT constants")
    ap.add_argument("--out", default="results/bench_mtt_memory.csv")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # ipc,syn_steps,batch_syn: measure in this process
    args = ap.parse_args()
    if args.one:
        from hpcdd.runtime.process import setup_process

        setup_process(args.threads)
        if args.device == "cpu":
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        ipc, steps, batch = map(int, args.one.split(","))
        print(json.dumps(measure_one(ipc, steps, batch, args.dataset, args.net, args.device)))
        return
    import torch

    from hpcdd.catalog import configs_from_flat, resolve
    from hpcdd.data import load_dataset
    from hpcdd.distill.mtt import activation_elements, estimate_memory_gb
    from hpcdd.runtime.provenance import git_commit
    from hpcdd.seeding import fresh_net

    info = load_dataset(args.dataset).info
    net = fresh_net(args.net, info, 0, "bench")
    act = activation_elements(net, (info.channels, info.im_size, info.im_size)) * 4
    params = sum(p.numel() for p in net.parameters()) * 4
    meta = {"dataset": args.dataset, "commit": git_commit()[:12], "host": platform.node(),
            "threads": args.threads, "torch": torch.__version__, "date": datetime.now(timezone.utc).date().isoformat()}
    rows, skipped = [], []
    for ipc in map(int, args.ipcs.split(",")):
        full = ipc * info.num_classes
        batches = sorted({full if b == "full" else int(b) for b in args.batch_syn.split(",")})
        for batch in [b for b in batches if b <= full]:
            for steps in map(int, args.syn_steps.split(",")):
                run, _ = configs_from_flat({"method": "mtt", "dataset": args.dataset, "net": args.net, "ipc": ipc,
                                            "syn_steps": steps, "batch_syn": batch, "buffer_epochs": 50}, "bench")
                est = estimate_memory_gb(resolve(run), info)
                if est > args.cap_gb:
                    skipped.append((ipc, steps, batch, est))
                    print(f"skip ipc {ipc} syn_steps {steps} batch_syn {batch}: estimate {est:.1f} GB > cap", flush=True)
                    continue
                proc = subprocess.run([sys.executable, str(HERE / "bench_mtt_memory.py"), "--one", f"{ipc},{steps},{batch}",
                                       "--dataset", args.dataset, "--net", args.net, "--threads", str(args.threads),
                                       "--device", args.device], capture_output=True, text=True, timeout=3600)
                if proc.returncode != 0:
                    raise SystemExit(f"ipc {ipc} syn_steps {steps} batch_syn {batch} failed:\n{proc.stderr[-2000:]}")
                row = {**json.loads(proc.stdout.strip().splitlines()[-1]), "load_avg": round(os.getloadavg()[0], 1),
                       **meta}
                rows.append(row)
                print(f"ipc {ipc:3d} syn_steps {steps:3d} batch_syn {batch:4d}: +{row['peak_delta_mb']:8.1f} MB "
                      f"(estimate {row['estimate_gb']:.2f} GB total), {row['sec_per_iter']:.1f} s", flush=True)
    if rows:
        append_rows(args.out, rows)
    if args.fit and rows:
        print("MEMORY_FIT =", fit(rows, act, params), f"(activation bytes/image {act}, parameter bytes {params})")


if __name__ == "__main__":
    main()
