"""An open-loop load generator for overload runs: calls leave on a fixed schedule whatever the answers.

    python -m llmrec.loadtest.openloop --url 127.0.0.1:8001 --workload workload.json --model similar \
        --phases 20:186,30:1116,30:186 --log calls.csv

Locust's users run the project's client in gevent greenlets, about 1 ms of CPU a call. At 3x the
saturation rate a one-core locust saturates, offers less than asked, and every answer waits for its own
process before it is timed: in the spike runs of 2026-12-02 the answered calls' p50 was ~400 ms although the
admission proxy held at most 16 calls at the server. Here the requests are serialised once, sent from one
asyncio loop over a few HTTP/2 channels (grpc.aio) and timed on completion, a small fraction of that CPU per
call, so that the figures describe the server.

Each phase `seconds:rate` sends evenly spaced calls (as each locust user does), or with `--arrivals poisson`
the calls of many independent callers (exponential gaps); a call not answered within
`--timeout` counts as DEADLINE_EXCEEDED. Every call is written to `--log` as `t,name,status,ms` (seconds
from the start), the format llmrec.loadtest.calls reads; a JSON summary (calls per status, failures per
message, calls sent late, the wall-clock time of t = 0) is printed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import random
import time
from collections import Counter
from pathlib import Path

import grpc
from tritonclient.grpc import InferRequestedOutput, _utils, service_pb2, service_pb2_grpc

from llmrec.loadtest.workload import Workload
from llmrec.server import contract
from llmrec.server.client import embed_request, rank_request, similar_request

MODELS = tuple(contract.MODELS)


def requests(workload: Workload, model: str, count: int = 500, seed: int = 0, rank_by: str = "texts") -> list:
    """`count` serialised ModelInferRequests for `model`, drawn from the workload as the locust tasks draw
    (rank's items as texts or as catalogue ids, as LLMREC_LOAD_RANK_BY says for locust)."""
    rng = random.Random(seed)
    built = []
    for _ in range(count):
        if model == "similar":
            name, inputs, outputs = similar_request(
                rng.choice(workload.item_ids), None, rng.choice(workload.ks)
            )
        elif model == "rank":
            u = rng.choice(workload.users)
            if rank_by == "ids":
                name, inputs, outputs = rank_request(
                    history_ids=u["history_ids"], candidate_ids=u["candidate_ids"]
                )
            else:
                name, inputs, outputs = rank_request(u["history"], u["candidate_texts"])
        elif model == "embed":
            name, inputs, outputs = embed_request([rng.choice(workload.texts)])
        else:
            raise ValueError(f"unknown model {model!r}: choose from {', '.join(MODELS)}")
        request = _utils._get_inference_request(
            model_name=name, inputs=inputs, model_version="", request_id="",
            outputs=[InferRequestedOutput(o) for o in outputs], sequence_id=0, sequence_start=False,
            sequence_end=False, priority=0, timeout=None, parameters=None,
        )  # fmt: skip
        built.append(request)
    return built


def parse_phases(spec: str) -> list[tuple[float, float]]:
    """'20:186,30:1116' -> [(20.0, 186.0), (30.0, 1116.0)]: seconds and req/s per phase."""
    phases = []
    for part in spec.split(","):
        seconds, _, rate = part.partition(":")
        try:
            phase = (float(seconds), float(rate))
        except ValueError:
            raise ValueError(f"phase {part!r}: expected seconds:rate, e.g. 30:100") from None
        if phase[0] <= 0 or phase[1] <= 0:
            raise ValueError(f"phase {part!r}: seconds and rate must be positive")
        phases.append(phase)
    return phases


ARRIVALS = ("even", "poisson")


def schedule(phases: list[tuple[float, float]], arrivals: str = "even", seed: int = 0) -> list[float]:
    """Send times (s from the start) within each phase: evenly spaced, or a Poisson stream (independent
    callers: exponential gaps at the phase's rate, seeded, so calls sometimes come close together)."""
    if arrivals not in ARRIVALS:
        raise ValueError(f"arrivals {arrivals!r}: choose from {', '.join(ARRIVALS)}")
    rng = random.Random(seed)
    times, start = [], 0.0
    for seconds, rate in phases:
        if arrivals == "even":
            times += [start + i / rate for i in range(int(round(seconds * rate)))]
        else:
            at = start + rng.expovariate(rate)
            while at < start + seconds:
                times.append(at)
                at += rng.expovariate(rate)
        start += seconds
    return times


async def run(
    url: str, model: str, built: list, phases: list[tuple[float, float]], log_path: Path,
    timeout_s: float = 30.0, channels: int = 4, arrivals: str = "even",
) -> dict:  # fmt: skip
    opened = [grpc.aio.insecure_channel(url) for _ in range(channels)]
    connected = [service_pb2_grpc.GRPCInferenceServiceStub(c) for c in opened]
    # Connect before t = 0: the first RPC on a channel stalls the loop while it connects, and the calls due
    # meanwhile then leave in one burst (a soak's first 0.14 s once sent ~50 calls at once, 19 refused as
    # "queue full" by the admission proxy). ServerLive is not an inference: Triton's inference counts and
    # the per-call log stay the scheduled calls only.
    await asyncio.gather(
        *(stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=timeout_s) for stub in connected)
    )
    stubs = itertools.cycle(connected)
    rows: list[tuple[float, str, float]] = []
    pending: set[asyncio.Task] = set()
    messages: Counter[str] = Counter()  # why calls failed: an overload run tells the proxy's refusals apart
    late = 0

    async def call(stub, request, sent_at: float) -> None:
        try:
            await stub.ModelInfer(request, timeout=timeout_s)
            status = "OK"
        except grpc.aio.AioRpcError as e:
            status = e.code().name
            messages[f"{status}: {(e.details() or '')[:200]}"] += 1
        rows.append((sent_at, status, (time.perf_counter() - sent_at) * 1e3))

    # Everything allocated so far (grpc, tritonclient, the built requests) out of the collector's reach: with it
    # tracked, the first full collection of a spike stalled this loop for 45 ms at t = 50 s in every run (no
    # call sent, none answered; then ~90 sent at once and timed with the stall), the peak's worst calls.
    gc.collect()
    gc.freeze()
    start = time.perf_counter()  # the log's t = 0
    started_at = time.time()  # the same moment on the wall clock (the machine's figures are aligned by it)
    for at, request in zip(schedule(phases, arrivals), itertools.cycle(built)):
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.01:
            late += 1  # the generator fell behind its schedule by more than 10 ms
        task = asyncio.ensure_future(call(next(stubs), request, time.perf_counter()))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending)
    for c in opened:
        await c.close()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as f:
        for sent_at, status, ms in sorted(rows):
            f.write(f"{sent_at - start:.3f},{model},{status},{ms:.3f}\n")
    statuses: dict[str, int] = {}
    for _, status, _ in rows:
        statuses[status] = statuses.get(status, 0) + 1
    return {
        "calls": len(rows),
        "statuses": statuses,
        "messages": dict(messages.most_common()),
        "late": late,
        "started_at": started_at,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--workload", type=Path, required=True)
    parser.add_argument("--model", choices=MODELS, required=True)
    parser.add_argument("--phases", required=True, help="seconds:rate per phase, comma-separated")
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--arrivals", choices=ARRIVALS, default="even")
    args = parser.parse_args(argv)
    built = requests(
        Workload.load(args.workload), args.model, rank_by=os.environ.get("LLMREC_LOAD_RANK_BY", "texts")
    )
    summary = asyncio.run(
        run(
            args.url,
            args.model,
            built,
            parse_phases(args.phases),
            args.log,
            args.timeout,
            args.channels,
            args.arrivals,
        )
    )
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
