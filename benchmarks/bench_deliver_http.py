"""Benchmark: contacts/s delivered by YespoClient to the Yespo stand-in, bulk and single mode.

The stand-in runs as a subprocess (`yespo-connector stand-in`, its own interpreter and GIL) unless
`--in-process`. Baselines measured in the same run:
  - client-only: example-shape -> wire translation + JSON serialization of 2000-contact bodies, no HTTP;
  - stand-in absorb: pre-serialized 2000-contact bodies POSTed by a bare httpx client;
  - raw accept: requests/s for a minimal valid single-contact request (the ceiling of single mode).

Usage: .venv/bin/python benchmarks/bench_deliver_http.py [--contacts 40000] [--single 2000] [--in-process]
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import time

import httpx
import orjson
from pydantic import SecretStr

from connector.config import ContactMapping, YespoSettings
from connector.sink.client import YespoClient
from connector.sink.ratelimit import RateLimiter
from connector.standin import StandIn

KEY = "bench-key"
BATCH = 2000

MAPPING = ContactMapping.model_validate(
    {
        "externalCustomerId": "external_id",
        "firstName": "first_name",
        "lastName": "last_name",
        "channels": [
            {"type": "email", "column": "email"},
            {"type": "sms", "column": "phone"},
            {"type": "webPush", "column": "wp"},
        ],
        "address": {"city": "c", "region": "r", "country": "co", "postalCode": "p", "addressLine": "a"},
        "fields": {"birthDate": "b", "loyaltyLevel": "l"},
        "languageCode": "lc",
        "timeZone": "tz",
    }
)


def example(i: int, round_no: int) -> dict:
    return {
        "externalCustomerId": f"EM{i}",
        "firstName": "John",
        "lastName": "Smith",
        "channels": [
            {"type": "email", "value": f"john.{i}@example.com"},
            {"type": "sms", "value": f"+1{2000000000 + i}"},
            {"type": "webPush", "value": f"sub-{i}-{round_no}"},
        ],
        "address": {
            "city": "New York",
            "region": "NY",
            "country": "US",
            "postalCode": "10001",
            "addressLine": f"{i} Main Street",
        },
        "fields": [{"name": "birthDate", "value": "1990-01-01"}, {"name": "loyaltyLevel", "value": "Gold"}],
        "groups": [{"id": 1001, "name": "Newsletter"}],
        "languageCode": "en",
        "timeZone": "America/New_York",
    }


class Server:
    """The stand-in, as a subprocess or in process."""

    def __init__(self, in_process: bool, rate_limit: float) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.inproc: StandIn | None = None
        if in_process:
            # As `yespo-connector stand-in` does for its own process (this one is shared with the client).
            gc.set_threshold(100_000, 50, 100)
            self.inproc = StandIn(api_key=KEY, rate_limit=rate_limit or None)
            self.url = self.inproc.start()
            return
        cmd = [sys.executable, "-m", "connector", "stand-in", "--port", "0", "--api-key", KEY]
        cmd += ["--rate-limit", str(rate_limit)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=dict(os.environ))
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            raise SystemExit(f"stand-in did not start: {line!r}")
        self.url = line.rsplit(" ", 1)[1].strip()

    def stop(self) -> None:
        if self.inproc is not None:
            self.inproc.stop()
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def make_client(url: str, http: httpx.Client, rate: float | None) -> YespoClient:
    settings = YespoSettings(
        base_url=url, api_key=SecretStr(KEY), country_field="country", max_requests_per_second=200
    )
    limiter = RateLimiter(rate, time.monotonic) if rate else RateLimiter(1e9, time.monotonic, burst=1e9)
    client = YespoClient(http, settings, MAPPING, limiter=limiter)
    client.resolve_fields()
    return client


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contacts", type=int, default=40_000)
    parser.add_argument("--single", type=int, default=2000)
    parser.add_argument("--in-process", action="store_true")
    args = parser.parse_args()
    total = args.contacts - args.contacts % BATCH or BATCH

    server = Server(args.in_process, rate_limit=0)
    try:
        with httpx.Client(timeout=60) as http:
            client = make_client(server.url, http, None)
            batches = [
                [example(i, r) for i in range(j, j + BATCH)] for r, j in enumerate(range(0, total, BATCH))
            ]

            # Baseline 1: client-only translation + serialization.
            started = time.perf_counter()
            bodies = [orjson.dumps(client.bulk_body([client.translate(c) for c in b])) for b in batches]
            client_only = rate(total, time.perf_counter() - started)

            # Baseline 2: what the stand-in absorbs, bodies pre-serialized.
            auth = httpx.BasicAuth("bench", KEY)
            headers = {"Content-Type": "application/json"}
            started = time.perf_counter()
            for body in bodies:
                r = http.post(server.url + "/api/v1/contacts", content=body, headers=headers, auth=auth)
                assert r.status_code == 200 and "failedContacts" not in r.json(), r.text[:300]
            absorb = rate(total, time.perf_counter() - started)

            # Baseline 3: raw accept rate of minimal valid single requests.
            n_raw = max(args.single, 500)
            minimal = [
                orjson.dumps({"channels": [{"type": "email", "value": f"raw{i}@example.com"}]})
                for i in range(n_raw)
            ]
            started = time.perf_counter()
            for body in minimal:
                r = http.post(server.url + "/api/v1/contact", content=body, headers=headers, auth=auth)
                assert r.status_code == 200, r.text
            raw_accept = rate(n_raw, time.perf_counter() - started)

            # Bulk mode through YespoClient (translation + serialization + HTTP + validation + apply).
            started = time.perf_counter()
            for b in batches:
                outcome = client.send_bulk_isolating(b)
                assert not outcome.failed, outcome.failed[:3]
            bulk = rate(total, time.perf_counter() - started)

            # Single mode, unthrottled and at Yespo's 200 rps limit (client-side limiter).
            singles = [example(100_000 + i, 0) for i in range(args.single)]
            started = time.perf_counter()
            for c in singles:
                assert client.send_single(c).ok
            single_raw = rate(len(singles), time.perf_counter() - started)
            limited = make_client(server.url, http, 190)
            n_lim = min(args.single, 600)
            started = time.perf_counter()
            for c in singles[:n_lim]:
                assert limited.send_single(dict(c, firstName="Jim")).ok
            single_limited = rate(n_lim, time.perf_counter() - started)
            stats = http.get(server.url + "/_standin/stats").json()
    finally:
        server.stop()

    where = "in process" if args.in_process else "subprocess"
    print(f"stand-in: {where}; {total} contacts in bulk requests of {BATCH}; {args.single} single requests")
    print(f"baseline  client-only translate+serialize : {client_only:10.0f} contacts/s")
    print(f"baseline  stand-in absorb (pre-serialized) : {absorb:10.0f} contacts/s")
    print(f"baseline  stand-in raw accept (minimal)    : {raw_accept:10.0f} requests/s")
    print(
        f"bulk      YespoClient -> stand-in          : {bulk:10.0f} contacts/s"
        f"  ({bulk / client_only:.2f}x client-only, {bulk / absorb:.2f}x absorb; goal >= 10000/s)"
    )
    print(
        f"single    YespoClient, unthrottled         : {single_raw:10.0f} contacts/s"
        f"  ({single_raw / raw_accept:.2f}x raw accept)"
    )
    print(
        f"single    YespoClient, limiter 190 rps     : {single_limited:10.0f} contacts/s"
        f"  ({single_limited / raw_accept:.2f}x raw accept; Yespo allows 200 rps)"
    )
    print(f"stand-in counters: {stats['counters']}")


if __name__ == "__main__":
    main()
