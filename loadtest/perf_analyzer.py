"""Triton's own load generator over the same models, at rising concurrency.

The PyPI `perf-analyzer` package is empty and newer tritonclient wheels need a newer glibc, so the binary
comes out of the tritonclient 2.50.0 wheel (`install()`, fetched from the package registry once) and
borrows libb64 and libcudart from the nvidia-pytriton wheel. Its CSV gives, per concurrency, throughput,
client p50/p90/p95/p99 and the server-side split (queue, compute input / infer / output).
"""

from __future__ import annotations

import csv
import glob
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from llmrec.paths import cache_dir
from llmrec.server import contract
from llmrec.server.contract import GRPC_CONTROL_HEADER
from llmrec.server.launcher import pinned_to

WHEEL = "tritonclient==2.50.0"
MEMBER = "tritonclient-2.50.0.data/data/bin/perf_analyzer"
LIBS = {"libb64.so.0d": "libb64-*.so.0d", "libcudart.so.12": "libcudart-*.so.12*"}


def _pytriton_libs() -> Path:
    import pytriton

    return Path(pytriton.__file__).resolve().parent.parent / "nvidia_pytriton.libs"


def install() -> Path:
    """<cache>/perf_analyzer/{perf_analyzer, lib/}: extracted once; later calls return the binary."""
    root = cache_dir() / "perf_analyzer"
    binary = root / "perf_analyzer"
    if binary.is_file():
        return binary
    wheels = root / "wheel"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            WHEEL,
            "-d",
            str(wheels),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(wheels.glob("tritonclient-2.50.0-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        tmp = root / "perf_analyzer.tmp"
        tmp.write_bytes(z.read(MEMBER))
    tmp.chmod(0o755)
    lib = root / "lib"
    lib.mkdir(exist_ok=True)
    for name, pattern in LIBS.items():
        found = glob.glob(str(_pytriton_libs() / pattern))
        if not found:
            raise FileNotFoundError(f"nvidia-pytriton carries no {pattern} for perf_analyzer")
        link = lib / name
        link.unlink(missing_ok=True)
        link.symlink_to(found[0])
    tmp.rename(binary)
    return binary


def input_data(model: str, workload, path: Path, samples: int = 16) -> Path:
    """perf_analyzer's --input-data JSON: real requests from the workload (no batch dimension)."""
    rows = []
    for i in range(samples):
        if model == "rank":
            u = workload.users[i % len(workload.users)]
            rows.append(
                {
                    contract.HISTORY: {"content": u["history"], "shape": [len(u["history"])]},
                    contract.CANDIDATES: {
                        "content": u["candidate_texts"],
                        "shape": [len(u["candidate_texts"])],
                    },
                }
            )
        elif model == "similar":
            rows.append(
                {
                    contract.ITEM_ID: {
                        "content": [workload.item_ids[(i * 37) % len(workload.item_ids)]],
                        "shape": [1],
                    },
                    contract.K: {
                        "content": [100 if len(workload.item_ids) > 100 else workload.ks[0]],
                        "shape": [1],
                    },
                }
            )
        elif model == "embed":
            rows.append({contract.TEXT: {"content": [workload.texts[i % len(workload.texts)]], "shape": [1]}})
        else:
            raise ValueError(f"unknown model {model!r}")
    path.write_text(json.dumps({"data": rows}))
    return path


def run(
    model: str,
    grpc_url: str,
    workload,
    out_dir: Path,
    concurrency: list[int],
    window_ms: int = 5000,
    timeout_s: int = 600,
    control_key: str | None = None,
    cpus: set[int] | None = None,
) -> list[dict]:
    """One perf_analyzer call per concurrency level (so a slow level cannot starve the others). It reads
    the model's config, which the server gives only with its control key (llmrec.server.launcher).
    `cpus` pins it to those CPUs (apart from the server's)."""
    binary = install()
    out_dir.mkdir(parents=True, exist_ok=True)
    data = input_data(model, workload, out_dir / f"{model}-input.json")
    env = {**os.environ, "LD_LIBRARY_PATH": f"{binary.parent / 'lib'}:{_pytriton_libs()}"}
    results = []
    for c in concurrency:
        csv_path = out_dir / f"{model}-c{c}.csv"
        command = [
            str(binary), "-m", model, "-u", grpc_url, "-i", "grpc", "--input-data", str(data),
            "--concurrency-range", f"{c}:{c}", "--measurement-interval", str(window_ms),
            "--stability-percentage", "50", "--max-trials", "4", "--percentile", "99", "-f", str(csv_path),
        ]  # fmt: skip
        if control_key:
            command += ["-H", f"{GRPC_CONTROL_HEADER}:{control_key}"]
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout_s,
            preexec_fn=pinned_to(cpus),
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(
                f"perf_analyzer failed on {model} at concurrency {c}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
        results.append(parse(csv_path))
    return results


def parse(path: Path) -> dict:
    """One row of perf_analyzer's CSV (-f): microseconds become milliseconds."""
    with path.open(newline="") as f:
        row = next(csv.DictReader(f))

    def ms(key: str) -> float:
        return float(row[key]) / 1e3

    return {
        "concurrency": int(row["Concurrency"]),
        "throughput_rps": float(row["Inferences/Second"]),
        "p50_ms": ms("p50 latency"),
        "p90_ms": ms("p90 latency"),
        "p95_ms": ms("p95 latency"),
        "p99_ms": ms("p99 latency"),
        "queue_ms": ms("Server Queue"),
        "compute_input_ms": ms("Server Compute Input"),
        "compute_infer_ms": ms("Server Compute Infer"),
        "compute_output_ms": ms("Server Compute Output"),
        "compute_ms": ms("Server Compute Input") + ms("Server Compute Infer") + ms("Server Compute Output"),
    }
