"""Locust users that call the served models through llmrec's own gRPC client.

    locust -f loadtest/locustfile.py --host 127.0.0.1:8001      (or `llmrec loadtest`, which drives it)

Tasks, weighted 3:5:2 by default (LLMREC_LOAD_TASKS picks others): `rank` (a held-out user's last 10 items and 100 candidates, drawn from the time split's
test side; as texts, or as item ids with LLMREC_LOAD_RANK_BY=ids), `similar` (a random catalogue item, k drawn from 10/20/50/100) and `embed` (one item text).
Every call is reported to locust with its gRPC status: a failed call counts as a failure, never hidden.

The shape of the load comes from the environment (set by llmrec.loadtest.runner):
LLMREC_LOAD_RATE (requests per second offered, all users together) and LLMREC_LOAD_USERS (the overload
spike and the soak use llmrec.loadtest.openloop, which keeps its schedule at rates a one-core locust cannot
and logs every call). With LLMREC_CLIENT_METRICS_PORT set, the calls' latencies
(`llmrec_client_request_seconds`, llmrec.server.metrics) are served on that port for Prometheus (the compose
stack's locust service). With LLMREC_LOAD_TLS_CA (a PEM file: the server's certificate or its CA) the users
talk TLS (deploy/compose.tls.yml).
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import sys
import time

import gevent
import grpc.experimental.gevent as grpc_gevent
from locust import User, events

grpc_gevent.init_gevent()  # grpc's blocking calls yield to gevent, so one process runs many users

from llmrec.loadtest.workload import Workload  # noqa: E402
from llmrec.server.client import RankingClient, ServingError  # noqa: E402

USERS = int(os.environ.get("LLMREC_LOAD_USERS", "8"))
RATE = float(os.environ.get("LLMREC_LOAD_RATE", "4"))
TLS_CA = os.environ.get("LLMREC_LOAD_TLS_CA") or None
WORKLOAD: Workload | None = None


@events.init.add_listener
def _load_workload(environment, **_):
    global WORKLOAD
    WORKLOAD = Workload.load()
    if port := os.environ.get("LLMREC_CLIENT_METRICS_PORT"):
        from llmrec.server.metrics import expose

        expose(int(port), host="0.0.0.0")


@events.quit.add_listener
def _exit_without_grpc_teardown(exit_code: int, **_):
    """Leave without the interpreter's teardown once locust has written everything.

    grpc's teardown under gevent stalled locust after its results were written (often with open
    channels, rarely in CI with closed ones). `quit` fires after the JSON results and before the CSV files
    are closed and sys.exit runs its exit hooks; a hook registered now runs first, after the CSV files are
    closed, and ends the process with locust's exit code."""

    def _exit():
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)

    atexit.register(_exit)


class ServingUser(User):
    """One client connection sending RATE / USERS requests per second, each user at its own random phase.

    Arrival times are scheduled ahead, not counted from the last answer, so users never fall into step
    (locust's constant_throughput counts from the user's start and re-synchronised them into bursts) and a
    slow answer does not lower the offered rate: the next call is due on schedule. Evenly spaced arrivals
    keep the offered count exact in short runs (a Poisson stream of 5 expected calls often brings 3)."""

    per_user_rps = RATE / USERS

    def wait_time(self) -> float:
        self.next_at += 1.0 / self.per_user_rps
        return max(0.0, self.next_at - time.monotonic())

    def on_start(self):
        self.client = RankingClient(
            self.host,
            timeout=float(os.environ.get("LLMREC_LOAD_TIMEOUT", "30")),
            retries=0,
            ssl=TLS_CA is not None,
            root_certificates=TLS_CA,
        )
        self.rng = random.Random()
        self.next_at = time.monotonic() + self.rng.uniform(0, 1.0 / self.per_user_rps)  # the phase
        gevent.sleep(self.next_at - time.monotonic())

    def on_stop(self):
        self.client.close()

    def _call(self, name: str, fn):
        # Yield once before sending. Locust stops a waiting user by killing its greenlet, and the kill is
        # delivered at the user's next switch: a user whose sleep had just ended would otherwise send the call
        # and be killed inside it, so Triton answers a call locust never books (and grpc is left mid-call).
        gevent.sleep(0)
        started = time.perf_counter()
        exception = None
        try:
            fn()
        except ServingError as e:
            exception = e
        elapsed_ms = (time.perf_counter() - started) * 1e3
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=elapsed_ms,
            response_length=0,
            exception=exception,
            context={"status": exception.status if exception else "OK"},
        )


# LLMREC_LOAD_RANK_BY=ids: `rank` names its items by catalogue id (vectors computed at export) instead of
# sending their texts.
RANK_BY = os.environ.get("LLMREC_LOAD_RANK_BY", "texts")
if RANK_BY not in ("texts", "ids"):
    raise ValueError(f"LLMREC_LOAD_RANK_BY must be texts or ids, got {RANK_BY!r}")


def rank(user: ServingUser):
    u = user.rng.choice(WORKLOAD.users)
    if RANK_BY == "ids":
        call = lambda: user.client.rank(history_ids=u["history_ids"], candidate_ids=u["candidate_ids"])  # noqa: E731
    else:
        call = lambda: user.client.rank(u["history"], u["candidate_texts"])  # noqa: E731
    user._call("rank", call)


def similar(user: ServingUser):
    item, k = user.rng.choice(WORKLOAD.item_ids), user.rng.choice(WORKLOAD.ks)
    user._call("similar", lambda: user.client.similar(item_id=item, k=k))


def embed(user: ServingUser):
    text = user.rng.choice(WORKLOAD.texts)
    user._call("embed", lambda: user.client.embed([text]))


# LLMREC_LOAD_TASKS="rank" (or "rank:3,similar:5") picks the tasks and their weights.
WEIGHTS = {"rank": 3, "similar": 5, "embed": 2}
TASKS = {"rank": rank, "similar": similar, "embed": embed}
_chosen = os.environ.get("LLMREC_LOAD_TASKS", "rank,similar,embed")
ServingUser.tasks = {
    TASKS[name]: int(weight or WEIGHTS[name])
    for name, _, weight in (part.partition(":") for part in _chosen.split(",") if part)
}
