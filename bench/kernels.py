"""Kernel benchmark: every kernel x provider (torch eager, torch.compile, ours) on sizes that fill a GPU.

    python -m bench.kernels            # on a CUDA machine: the full suite (a few minutes)
    python -m bench.kernels --smoke    # anywhere: tiny sizes, checks the script end to end

Reports the median time from triton.testing.do_bench (quantiles 0.5/0.2/0.8), achieved GB/s from bytes
counted by hand (inputs read once, outputs written once) next to the measured device copy bandwidth, and for
top-k also TFLOP/s next to the measured fp16 matmul peak. Every result is checked against the reference
first. Writes artifacts/bench/kernels.csv and kernels.png, prints a table and a final JSON line.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from llmrec.kernels.attention_pool import dot_attention_pool
from llmrec.kernels.cosine_topk import cosine_topk
from llmrec.kernels.reference import cosine_topk_reference, dot_attention_pool_reference
from llmrec.runs import git_commit, table


@dataclass
class Row:
    kernel: str
    shape: str
    provider: str
    ms: float
    ms_p20: float
    ms_p80: float
    gbps: float
    pct_copy_bw: float
    tflops: float
    pct_matmul_peak: float


def timer(device: str):
    if device == "cuda":
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8], warmup=25, rep=200)

    def cpu(fn, reps: int = 3):
        fn()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
        times.sort()
        return times[len(times) // 2], times[0], times[-1]

    return cpu


def ceilings(device: str, bench) -> tuple[float, float]:
    """Measured copy bandwidth (GB/s, read + write) and fp16 matmul peak (TFLOP/s) of this device."""
    n = (1 << 28) if device == "cuda" else (1 << 22)
    src = torch.empty(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    copy_ms = bench(lambda: dst.copy_(src))[0]
    m = 8192 if device == "cuda" else 256
    dtype = torch.float16 if device == "cuda" else torch.float32
    a, b = torch.randn(m, m, device=device, dtype=dtype), torch.randn(m, m, device=device, dtype=dtype)
    mm_ms = bench(lambda: a @ b)[0]
    return 2 * src.numel() * 4 / copy_ms / 1e6, 2 * m**3 / mm_ms / 1e9


def topk_cases(smoke: bool):
    if smoke:
        return [(4, 300, 32, 10)]
    return [(q, 1_000_000, d, k) for d in (64, 128, 384) for k in (10, 100) for q in (1, 16, 256)]


def pool_cases(smoke: bool):
    return [(2, 16, 24)] if smoke else [(256, 64, 384), (1024, 128, 384)]


def run(smoke: bool, device: str, out_dir: Path) -> dict:
    bench = timer(device)
    copy_bw, mm_peak = ceilings(device, bench)
    dtype = torch.float16 if device == "cuda" else torch.float32
    # "ours" is always the kernel (on CPU: under the interpreter, a smoke run), whatever auto would pick.
    force = "triton"
    rows: list[Row] = []

    def add(kernel, shape, provider, times, nbytes, flops=0.0):
        ms, lo, hi = times
        gbps = nbytes / ms / 1e6
        tf = flops / ms / 1e9 if flops else 0.0
        rows.append(
            Row(
                kernel,
                shape,
                provider,
                ms,
                lo,
                hi,
                gbps,
                100 * gbps / copy_bw,
                tf,
                100 * tf / mm_peak if flops else 0.0,
            )
        )
        print(f"{kernel:16s} {shape:28s} {provider:14s} {ms:9.4f} ms {gbps:8.1f} GB/s", flush=True)

    for q, n, d, k in topk_cases(smoke):
        x = F.normalize(torch.randn(n, d, device=device), dim=1).to(dtype)
        qs = F.normalize(torch.randn(q, d, device=device), dim=1).to(dtype)
        ours = cosine_topk(qs, x, k, force=force)
        ref = cosine_topk_reference(qs, x, k)
        if not torch.allclose(ours[0], ref[0], atol=1e-2):
            raise AssertionError(f"cosine_topk disagrees with the reference at q={q} n={n} d={d} k={k}")
        nbytes = (n * d + q * d) * x.element_size() + q * k * (4 + 8)
        shape = f"q={q} n={n} d={d} k={k}"

        def eager(qs=qs, x=x, k=k):
            return torch.topk(qs @ x.T, k, dim=1)

        add("cosine_topk", shape, "torch", bench(eager), nbytes, 2 * q * n * d)
        if device == "cuda":
            compiled = torch.compile(eager)
            add("cosine_topk", shape, "torch.compile", bench(compiled), nbytes, 2 * q * n * d)
        add(
            "cosine_topk",
            shape,
            "ours",
            bench(lambda qs=qs, x=x, k=k: cosine_topk(qs, x, k, force=force)),
            nbytes,
            2 * q * n * d,
        )

    for b, length, d in pool_cases(smoke):
        e = torch.randn(b, length, d, device=device, dtype=dtype)
        mask = torch.arange(length, device=device)[None, :] < torch.randint(
            1, length + 1, (b, 1), device=device
        )
        w = torch.randn(d, device=device)
        got = dot_attention_pool(e, mask, w, force=force)
        if not torch.allclose(
            got.float(), dot_attention_pool_reference(e, mask, w).float(), atol=1e-2, rtol=1e-2
        ):
            raise AssertionError(f"attention pooling disagrees with the reference at {(b, length, d)}")
        fwd_bytes = e.numel() * e.element_size() + mask.numel() + b * d * e.element_size()
        shape = f"B={b} L={length} D={d}"
        providers = {
            "torch": dot_attention_pool_reference,
            "ours": lambda *a: dot_attention_pool(*a, force=force),
        }
        if device == "cuda":
            providers["torch.compile"] = torch.compile(dot_attention_pool_reference)
        for name, fn in providers.items():
            add(
                "attn_pool fwd",
                shape,
                name,
                bench(lambda fn=fn, e=e, mask=mask, w=w: fn(e, mask, w)),
                fwd_bytes,
            )
            e_grad = e.clone().requires_grad_(True)
            grad = torch.randn(b, d, device=device, dtype=dtype)

            def fwd_bwd(fn=fn, e_grad=e_grad, grad=grad, mask=mask, w=w):
                fn(e_grad, mask, w).backward(grad)

            # fwd + bwd: E read twice (forward, backward), dE written once, dh read once.
            add(
                "attn_pool fwd+bwd",
                shape,
                name,
                bench(fwd_bwd),
                3 * e.numel() * e.element_size() + 2 * fwd_bytes,
            )

    out_dir.mkdir(parents=True, exist_ok=True)
    device_name = torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)"
    meta = {
        "device": device_name,
        "date": time.strftime("%Y-%m-%d"),
        "commit": git_commit(),
        "copy_gbps": round(copy_bw, 1),
        "matmul_tflops": round(mm_peak, 1),
    }
    with (out_dir / "kernels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*meta, *asdict(rows[0])])
        writer.writeheader()
        writer.writerows({**meta, **asdict(r)} for r in rows)
    plot(rows, meta, out_dir / "kernels.png")
    print(f"\n{device_name}: measured copy bandwidth {copy_bw:.0f} GB/s, matmul peak {mm_peak:.1f} TFLOP/s")
    print(table([{k: v for k, v in asdict(r).items() if k not in ("ms_p20", "ms_p80")} for r in rows], ".3f"))
    summary = {
        **meta,
        "rows": len(rows),
        "csv": str(out_dir / "kernels.csv"),
        "png": str(out_dir / "kernels.png"),
    }
    print(json.dumps(summary))
    return summary


def plot(rows: list[Row], meta: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kernels = sorted({r.kernel for r in rows})
    fig, axes = plt.subplots(len(kernels), 1, figsize=(10, 3.2 * len(kernels)), squeeze=False)
    for ax, kernel in zip(axes[:, 0], kernels, strict=True):
        sel = [r for r in rows if r.kernel == kernel]
        shapes = list(dict.fromkeys(r.shape for r in sel))
        providers = list(dict.fromkeys(r.provider for r in sel))
        width = 0.8 / len(providers)
        for i, p in enumerate(providers):
            vals = [next((r.gbps for r in sel if r.shape == s and r.provider == p), 0) for s in shapes]
            ax.bar([j + i * width for j in range(len(shapes))], vals, width, label=p)
        ax.axhline(meta["copy_gbps"], color="k", ls="--", lw=1, label="measured copy bandwidth")
        ax.set_xticks(
            [j + 0.4 - width / 2 for j in range(len(shapes))], shapes, rotation=20, fontsize=7, ha="right"
        )
        ax.set_ylabel("GB/s")
        ax.set_title(f"{kernel} on {meta['device']} ({meta['date']}, {meta['commit']})", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes; runs on CPU through TRITON_INTERPRET=1"
    )
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench"))
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.smoke:
        raise SystemExit(
            "bench.kernels: no CUDA device here; the full suite needs a GPU (use --smoke to check the script)"
        )
    run(args.smoke, device, args.out)


if __name__ == "__main__":
    main()
