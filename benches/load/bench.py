#!/usr/bin/env python3
"""Side-by-side load bench: toolgate vs Envoy (with and without ext_authz) vs direct.

Everything runs on 127.0.0.1 with ephemeral ports; every process started here is stopped at
exit. Closed-loop throughput (wrk, fixed connections) is measured in alternating rounds so
that drift on a shared machine hits every row alike; open-loop latency (oha, fixed rate,
latency-corrected) once per row. Prints a markdown table.

Run through benches/load/run.sh, which installs the tools and builds toolgate.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
# A name every resolver knows: oha resolves the target even when it goes through a proxy.
TOOL_HOST = "localhost"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port}")


def rss_kib(pid, field="VmRSS"):
    """Resident memory of pid and its children (nginx/envoy workers), in KiB."""
    total = 0
    pids = [pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        pids += [int(p) for p in out.split()]
    except FileNotFoundError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def cpu_seconds(pid):
    """User + system CPU time of pid and its children (nginx/envoy workers), in seconds."""
    pids = [pid]
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    pids += [int(p) for p in out.split()]
    ticks = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        except (FileNotFoundError, IndexError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


class Procs:
    def __init__(self):
        self.procs = []

    def start(self, name, args, **kw):
        log = open(os.path.join(self.dir, f"{name}.log"), "w")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kw)
        self.procs.append((name, p))
        return p

    def stop_all(self):
        for _, p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 10
        for _, p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


NGINX_CONF = """
worker_processes 1;
daemon off;
error_log {dir}/nginx-error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  server {{  # the tool
    listen 127.0.0.1:{upstream};
    location / {{ default_type application/json; return 200 '{{"ok":true}}'; }}
  }}
  server {{  # Envoy's ext_authz service: allows and returns a credential, no policy work
    listen 127.0.0.1:{authz};
    location / {{ add_header Authorization "Bearer authz-issued-token"; return 200; }}
  }}
  server {{  # OTLP/HTTP sink for toolgate's spans
    listen 127.0.0.1:{otlp};
    client_max_body_size 16m;
    location / {{ return 200; }}
  }}
}}
"""

ENVOY_CONF = """
admin: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }} }}
static_resources:
  listeners:
  - name: proxy
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          http_protocol_options: {{ allow_absolute_url: true }}
          route_config:
            virtual_hosts:
            - name: tool
              domains: ["*"]
              routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: tool }} }}]
          http_filters:
{authz_filter}
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - name: tool
    type: STATIC
    load_assignment:
      cluster_name: tool
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream} }} }} }} }}] }}]
  - name: authz
    type: STATIC
    load_assignment:
      cluster_name: authz
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {authz} }} }} }} }}] }}]
"""

ENVOY_AUTHZ_FILTER = """          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              failure_mode_allow: false
              http_service:
                server_uri: {{ uri: "http://127.0.0.1:{authz}", cluster: authz, timeout: 1s }}
                authorization_response:
                  allowed_upstream_headers:
                    patterns: [{{ exact: authorization, ignore_case: true }}]"""

# The policy every toolgate row runs: a chain rule on the benchmarked path (a fixture shared
# with `cargo bench --bench evaluate`).
TOOLGATE_POLICY_FILE = os.path.join(HERE, "..", "data", "load-policy.rego")


def toolgate_config(variant, ports, workers):
    credential = {
        "secret": "  tool-key: { kind: secret, file: secret, header: Authorization, format: \"Bearer {}\" }",
        "jwt": "  tool-key: { kind: jwt, audience: tool.example, max_ttl: 60s, key_file: signing-key.pem }",
    }[variant["credential"]]
    telemetry = ""
    state = ""
    if variant.get("redis"):
        # Shared state on a loopback Redis: every decision reads and writes it.
        state = f"state: {{ backend: redis, url: \"redis://127.0.0.1:{variant['redis']}\", prefix: \"bench-{variant['port']}\" }}\n"
    if variant.get("otlp"):
        telemetry = f"telemetry:\n  otlp: {{ endpoint: \"http://127.0.0.1:{ports['otlp']}\", protocol: http }}\n  decision_log: off\n"
    return f"""
listen: {{ proxy: "127.0.0.1:{variant['port']}", admin: "127.0.0.1:{variant['admin']}" }}
workers: {workers}
chain: {{ max_actions: {variant['chain']} }}
agent: {{ id: spiffe://bench/agent }}
tools:
  - name: tool
    hosts: [{TOOL_HOST}]
    upstream: http://127.0.0.1:{ports['upstream']}
    credential: tool-key
    actions:
      - name: item.read
        match: {{ method: GET, path: "/items/{{item}}" }}
        attributes: {{ item: "path:item" }}
      - name: item.delete
        match: {{ method: DELETE, path: "/items/{{item}}" }}
        attributes: {{ item: "path:item" }}
policy: {{ files: [policy.rego] }}
credentials:
{credential}
{telemetry}{state}"""


def wrk(url_path, port, duration, connections, method="GET"):
    script = os.path.join(HERE, "absolute.lua")
    env = dict(os.environ, WRK_PATH=url_path, WRK_METHOD=method)
    if url_path.startswith("http://"):
        env["WRK_HOST"] = url_path.split("/")[2]
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "-s", script, f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, env=env, timeout=duration + 30,
    ).stdout
    rps = 0.0
    non2xx = 0
    requests = 0
    for line in out.splitlines():
        if " requests in " in line:
            requests = int(line.split()[0])
        if line.startswith("Requests/sec:"):
            rps = float(line.split()[1])
        if "Non-2xx or 3xx responses:" in line:
            non2xx = int(line.split(":")[1])
    return rps, non2xx, requests, out


def oha_latency(url, proxy, rate, duration, method="GET"):
    args = ["oha", "--no-tui", "--output-format", "json", "-z", f"{duration}s", "-q", str(rate),
            "--latency-correction", "-c", "64", "-m", method]
    if proxy:
        args += ["-x", proxy]
    args.append(url)
    out = subprocess.run(args, capture_output=True, text=True, timeout=duration + 60)
    try:
        data = json.loads(out.stdout)
    except json.JSONDecodeError:
        sys.exit(f"oha failed: {out.stderr or out.stdout}")
    pct = data.get("latencyPercentiles", {})
    def us(k):
        v = pct.get(k)
        return None if v is None else v * 1e6
    return us("p50"), us("p90"), us("p99"), data.get("summary", {}).get("requestsPerSec")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--toolgate", required=True)
    ap.add_argument("--envoy", required=True)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rate", type=int, default=5000,
                    help="open-loop rate; lowered to half the slowest proxied row's throughput, "
                         "so that no row is measured saturated")
    ap.add_argument("--chain", type=int, default=16,
                    help="earlier actions the chain rule scans on the typical toolgate rows")
    ap.add_argument("--latency-duration", type=int, default=8)
    ap.add_argument("--only", default="", help="comma-separated row keys to run")
    ap.add_argument("--features", default="jwt,otlp,redis",
                    help="toolgate features to exercise (jwt: minted-JWT row; otlp: export spans; "
                         "redis: the secret row again with state on a loopback redis-server)")
    args = ap.parse_args()

    procs = Procs()
    procs.dir = tempfile.mkdtemp(prefix="toolgate-bench-")
    ports = {k: free_port() for k in ["upstream", "authz", "otlp"]}
    try:
        for sub in ["body", "proxy", "fastcgi", "uwsgi", "scgi"]:
            os.makedirs(os.path.join(procs.dir, sub), exist_ok=True)
        nginx_conf = os.path.join(procs.dir, "nginx.conf")
        with open(nginx_conf, "w") as f:
            f.write(NGINX_CONF.format(dir=procs.dir, **ports))
        nginx = procs.start("nginx", ["nginx", "-c", nginx_conf, "-p", procs.dir])
        for p in ports.values():
            wait_port(p, nginx, "nginx")

        rows = []  # (key, label, port, pid, path, method, proxied)
        path = f"http://{TOOL_HOST}/items/42"
        rows.append(("direct", "direct to nginx (the limit)", ports["upstream"], nginx.pid, "/items/42", "GET", False))

        for key, label, authz in [("envoy", "Envoy 1.40, no authz", False), ("envoy_authz", "Envoy 1.40 + ext_authz (HTTP)", True)]:
            port, admin = free_port(), free_port()
            conf = os.path.join(procs.dir, f"{key}.yaml")
            with open(conf, "w") as f:
                f.write(ENVOY_CONF.format(port=port, admin=admin, authz_filter=ENVOY_AUTHZ_FILTER.format(**ports) if authz else "", **ports))
            base_id = 100 + len(rows)
            p = procs.start(key, [args.envoy, "-c", conf, "--concurrency", str(args.workers), "--base-id", str(base_id), "-l", "warning"])
            wait_port(port, p, key)
            rows.append((key, label, port, p.pid, path, "GET", True))

        # wrk names no task, so every request joins the agent's default task and its chain is
        # always full: the chain rule scans `chain` earlier actions on every allowed read.
        # A task of 16 actions is the typical row; the default cap (64) is the worst case.
        variants = [
            ("toolgate_jwt", f"toolgate: classify + Rego chain rule ({args.chain} earlier actions) + minted EdDSA JWT + OTLP spans", {"credential": "jwt", "otlp": True, "chain": args.chain}, "GET", path),
            ("toolgate_secret", "toolgate: same pipeline, secret credential", {"credential": "secret", "otlp": True, "chain": args.chain}, "GET", path),
            ("toolgate_deny", "toolgate: deny path (403 problem+json)", {"credential": "secret", "otlp": True, "chain": args.chain}, "DELETE", path),
            ("toolgate_chain64", "toolgate: secret credential, worst-case chain (64 earlier actions scanned)", {"credential": "secret", "otlp": True, "chain": 64}, "GET", path),
        ]
        features = set(filter(None, args.features.split(",")))
        if "redis" in features:
            ports["redis"] = free_port()
            redis = procs.start("redis", ["redis-server", "--port", str(ports["redis"]), "--bind", "127.0.0.1",
                                          "--save", "", "--appendonly", "no", "--dir", procs.dir])
            wait_port(ports["redis"], redis, "redis-server")
            variants.append(("toolgate_redis", "toolgate: same as the secret row, state on Redis (loopback)",
                             {"credential": "secret", "otlp": True, "chain": args.chain, "redis": ports["redis"]}, "GET", path))
        if "jwt" not in features:
            variants = [v for v in variants if v[2]["credential"] != "jwt"]
        if "otlp" not in features:
            variants = [(k, l.replace(" + OTLP spans", ""), dict(v, otlp=False), m, p) for k, l, v, m, p in variants]
        started = {}
        for key, label, variant, method, vpath in variants:
            cfg_key = (variant["credential"], variant.get("otlp"), variant["chain"], variant.get("redis"))
            if cfg_key not in started:
                variant = dict(variant, port=free_port(), admin=free_port())
                d = os.path.join(procs.dir, key)
                os.makedirs(d)
                with open(os.path.join(d, "toolgate.yaml"), "w") as f:
                    f.write(toolgate_config(variant, ports, args.workers))
                shutil.copy(TOOLGATE_POLICY_FILE, os.path.join(d, "policy.rego"))
                with open(os.path.join(d, "secret"), "w") as f:
                    f.write("bench-secret\n")
                if variant["credential"] == "jwt":
                    subprocess.run([args.toolgate, "keys", "init", "--out", os.path.join(d, "signing-key.pem")], check=True, capture_output=True)
                env = dict(os.environ, TOOLGATE_LOG="warn")
                p = procs.start(key, [args.toolgate, "run", "-c", os.path.join(d, "toolgate.yaml")], env=env)
                wait_port(variant["port"], p, key)
                started[cfg_key] = (variant["port"], p.pid)
            port, pid = started[cfg_key]
            rows.append((key, label, port, pid, vpath, method, True))

        if args.only:
            keep = set(args.only.split(","))
            rows = [r for r in rows if r[0] in keep]

        idle = {r[0]: rss_kib(r[3]) for r in rows}
        # Warm up every row (connection pools, JIT-free but caches and allocators).
        for key, _, port, _, p, method, _ in rows:
            wrk(p, port, 2, args.connections, method)
        cpu = {r[0]: [0.0, 0] for r in rows}  # CPU seconds of the row's server, requests

        results = {r[0]: [] for r in rows}
        for rnd in range(args.rounds):
            order = rows if rnd % 2 == 0 else list(reversed(rows))
            for key, _, port, pid, p, method, _ in order:
                before = cpu_seconds(pid)
                rps, non2xx, requests, out = wrk(p, port, args.duration, args.connections, method)
                cpu[key][0] += cpu_seconds(pid) - before
                cpu[key][1] += requests
                expect_errors = key == "toolgate_deny"
                if (non2xx > 0) != expect_errors:
                    sys.exit(f"{key}: unexpected status mix (non-2xx={non2xx}):\n{out}")
                results[key].append(rps)
                print(f"round {rnd + 1} {key:16s} {rps:10.0f} req/s", file=sys.stderr)

        med = {k: statistics.median(v) for k, v in results.items()}
        slowest = min((med[r[0]] for r in rows if r[6]), default=args.rate * 2)
        rate = min(args.rate, max(100, int(slowest / 2 // 100 * 100)))
        latency = {}
        for key, _, port, _, p, method, proxied in rows:
            url = f"http://127.0.0.1:{port}{p}" if not proxied else p
            proxy = f"http://127.0.0.1:{port}" if proxied else None
            latency[key] = oha_latency(url, proxy, rate, args.latency_duration, method)
        peak = {r[0]: rss_kib(r[3], "VmHWM") for r in rows}

        base_authz = med.get("envoy_authz")
        base_direct = med.get("direct")
        direct_p50 = latency.get("direct", (None,))[0]
        print(f"\n{args.rounds} rounds × {args.duration}s, wrk -t1 -c{args.connections}, "
              f"{args.workers} workers per proxy; latency: oha open loop at {rate} req/s for {args.latency_duration}s"
              f"{'' if rate == args.rate else f' (lowered from {args.rate}: half the slowest row)'}.\n")
        print("| row | req/s (median) | × Envoy+ext_authz | × direct | CPU µs/req | p50 µs | p90 µs | p99 µs | added p50 µs | RSS idle MiB | RSS peak MiB |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for key, label, *_ in rows:
            rps = med[key]
            p50, p90, p99, _ = latency[key]
            fmt = lambda v: "–" if v is None else f"{v:.0f}"
            added = None if (p50 is None or direct_p50 is None or key == "direct") else p50 - direct_p50
            ra = f"{rps / base_authz:.2f}" if base_authz else "–"
            rd = f"{rps / base_direct:.2f}" if base_direct else "–"
            secs, reqs = cpu[key]
            per_req = secs / reqs * 1e6 if reqs else None
            print(f"| {label} | {rps:.0f} | {ra} | {rd} | {fmt(per_req)} | {fmt(p50)} | {fmt(p90)} | {fmt(p99)} | {fmt(added)} | "
                  f"{idle[key] / 1024:.1f} | {peak[key] / 1024:.1f} |")
        if "toolgate_redis" in med and "toolgate_secret" in med:
            p50_mem, p50_redis = latency["toolgate_secret"][0], latency["toolgate_redis"][0]
            added = "–" if p50_mem is None or p50_redis is None else f"{p50_redis - p50_mem:.0f}"
            print(f"\nRedis state backend vs memory (same pipeline, secret credential): added p50 {added} µs; "
                  f"throughput {med['toolgate_redis'] / med['toolgate_secret']:.2f}× the memory backend's "
                  f"({med['toolgate_redis']:.0f} vs {med['toolgate_secret']:.0f} req/s).")
    finally:
        procs.stop_all()
        shutil.rmtree(procs.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
