#!/usr/bin/env python3
"""Repeatable per-request costs of one toolgate configuration, for an optimisation's
before/after on a shared, noisy machine (the load bench's req/s vary by ±10 % between runs):

- instructions per request (valgrind --tool=callgrind, user space, all threads): toolgate is
  run twice, serving --requests and 2 × --requests sequential keep-alive requests; the
  difference of the two totals over the difference of the counts is the marginal cost of one
  request, startup and shutdown cancelled out.
- context switches per request (native, wrk -c32 for --duration s): the voluntary switches
  of every toolgate thread — each one a thread that went to sleep and was woken, the
  cross-thread hand-offs the kernel half of the profile pays for.

Runs on 127.0.0.1 with nginx as the tool, like bench.py (whose helpers it uses):
  python3 benches/load/count.py --toolgate target/release/toolgate [--row secret|jwt|deny|idiomatic|redis]
"""
import argparse
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

ROWS = {
    "secret": ({"policy": "tuned", "credential": "secret", "otlp": True, "chain": 16}, "GET", None),
    "jwt": ({"policy": "tuned", "credential": "jwt", "otlp": True, "chain": 16}, "GET", None),
    "deny": ({"policy": "tuned", "credential": "secret", "otlp": True, "chain": 16}, "DELETE", None),
    "idiomatic": ({"policy": "idiomatic", "credential": "secret", "otlp": True, "chain": 64}, "GET", "bench-task"),
    # the secret row with its state on a loopback redis-server (issue 16)
    "redis": ({"policy": "tuned", "credential": "secret", "otlp": True, "chain": 16, "redis": True}, "GET", None),
}


def send(port, n, method, task, connections=4):
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in range(connections)]
    headers = {"Host": bench.TOOL_HOST}
    if task:
        headers[bench.TASK_HEADER] = task
    for i in range(n):
        c = conns[i % connections]
        c.request(method, f"http://{bench.TOOL_HOST}/items/42", headers=headers)
        r = c.getresponse()
        r.read()
        if (r.status >= 400) != (method == "DELETE"):
            sys.exit(f"unexpected status {r.status}")
    for c in conns:
        c.close()


def callgrind_total(args, ports, variant, method, task, n, procs):
    out = os.path.join(procs.dir, f"callgrind.{n}.out")
    real = args.toolgate
    args.toolgate = "valgrind"
    try:
        key = f"cg{n}"
        variant = dict(variant)
        # valgrind runs toolgate ~50x slower: Redis calls must not time out meanwhile
        variant["state_timeout"] = "5s"
        # start_toolgate runs `<toolgate> run -c …`: wrap it in valgrind through a shim.
        shim = os.path.join(procs.dir, f"shim{n}.sh")
        with open(shim, "w") as f:
            f.write(f"#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file={out} {real} \"$@\"\n")
        os.chmod(shim, 0o755)
        args.toolgate = shim
        orig_wait = bench.wait_port
        bench.wait_port = lambda port, proc, what, timeout=20.0: orig_wait(port, proc, what, 300.0)
        try:
            port, pid = bench.start_toolgate(args, procs, ports, key, variant)
        finally:
            bench.wait_port = orig_wait
        send(port, n, method, task)
        os.killpg(pid, signal.SIGTERM)
        for _ in range(600):
            if os.path.exists(out) and subprocess.run(["pgrep", "-g", str(pid)], capture_output=True).returncode != 0:
                break
            time.sleep(0.1)
    finally:
        args.toolgate = real
    total = 0
    for name in os.listdir(procs.dir):
        if name.startswith(f"callgrind.{n}.out"):
            with open(os.path.join(procs.dir, name)) as f:
                for line in f:
                    m = re.match(r"(?:summary|totals):\s+(\d+)", line)
                    if m:
                        total += int(m.group(1))
                        break
    return total


def ctx_switches(pid):
    vol = invol = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        invol += int(line.split()[1])
        except FileNotFoundError:
            pass
    return vol, invol


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--toolgate", required=True)
    ap.add_argument("--row", default="secret", choices=sorted(ROWS))
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-callgrind", action="store_true")
    ap.add_argument("--keep", help="copy the callgrind profiles here (callgrind_annotate reads them)")
    args = ap.parse_args()
    variant, method, task = ROWS[args.row]
    procs = bench.Procs()
    procs.dir = tempfile.mkdtemp(prefix="toolgate-count-")
    ports = {k: bench.free_port() for k in ["upstream", "authz", "otlp"]}
    try:
        for sub in ["body", "proxy", "fastcgi", "uwsgi", "scgi"]:
            os.makedirs(os.path.join(procs.dir, sub), exist_ok=True)
        conf = os.path.join(procs.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(bench.NGINX_CONF.format(dir=procs.dir, **ports))
        nginx = procs.start("nginx", ["nginx", "-c", conf, "-p", procs.dir])
        for p in ports.values():
            bench.wait_port(p, nginx, "nginx")
        if variant.get("redis"):
            ports["redis"] = bench.free_port()
            redis = procs.start("redis", ["redis-server", "--port", str(ports["redis"]), "--bind", "127.0.0.1",
                                          "--save", "", "--appendonly", "no", "--dir", procs.dir])
            bench.wait_port(ports["redis"], redis, "redis-server")

        port, pid = bench.start_toolgate(args, procs, ports, "native", variant)
        path = f"http://{bench.TOOL_HOST}/items/42"
        bench.wrk(path, port, 1, 32, method, task)
        before, cpu0 = ctx_switches(pid), bench.cpu_seconds(pid)
        rps, _, requests, _ = bench.wrk(path, port, args.duration, 32, method, task)
        after, cpu1 = ctx_switches(pid), bench.cpu_seconds(pid)
        print(f"{args.row}: native wrk -c32 {args.duration}s: {rps:.0f} req/s, "
              f"{(cpu1 - cpu0) / requests * 1e6:.1f} CPU µs/req, "
              f"{(after[0] - before[0]) / requests:.3f} voluntary + {(after[1] - before[1]) / requests:.3f} "
              f"involuntary context switches/req")
        if not args.skip_callgrind:
            n = args.requests
            one = callgrind_total(args, ports, variant, method, task, n, procs)
            two = callgrind_total(args, ports, variant, method, task, 2 * n, procs)
            print(f"{args.row}: callgrind: {(two - one) / n:,.0f} instructions/request "
                  f"({n} vs {2 * n} requests: {one:,} and {two:,})")
            if args.keep:
                os.makedirs(args.keep, exist_ok=True)
                for name in os.listdir(procs.dir):
                    if name.startswith("callgrind."):
                        shutil.copy(os.path.join(procs.dir, name), args.keep)
    finally:
        procs.stop_all()
        shutil.rmtree(procs.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
