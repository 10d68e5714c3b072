#!/usr/bin/env python3
"""Side-by-side load bench: toolgate (three policies) vs Envoy (with and without ext_authz) vs
bare pingora vs direct, over several separate runs.

Everything runs on 127.0.0.1 with ephemeral ports; every process started here is stopped at
exit. Closed-loop throughput (wrk, fixed connections) is measured in alternating rounds so
that drift on a shared machine hits every row alike; open-loop latency (oha, fixed rate,
latency-corrected) once per row and run. Prints markdown tables: ratios as median (min–max)
over the runs.

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

# The policies the toolgate rows run on the bench's catalog: the hand-tuned one (one rule, a
# chain rule on the benchmarked path; a fixture shared with `cargo bench --bench evaluate`) and
# the same decisions written idiomatically (separate rules, `deny contains msg`, helpers over
# the chain). The quickstart rows run examples/quickstart as shipped, its jira tool pointed at
# nginx.
POLICIES = {
    "tuned": os.path.join(HERE, "..", "data", "load-policy.rego"),
    "idiomatic": os.path.join(HERE, "..", "data", "idiomatic-policy.rego"),
}
QUICKSTART = os.path.join(HERE, "..", "..", "examples", "quickstart")
TASK_HEADER = "x-toolgate-task"


def toolgate_config(variant, ports, workers):
    credential = {
        "secret": "  tool-key: { kind: secret, file: secret, header: Authorization, format: \"Bearer {}\" }",
        "jwt": "  tool-key: { kind: jwt, audience: tool.example, max_ttl: 60s, key_file: signing-key.pem }",
    }[variant["credential"]]
    telemetry = ""
    if variant.get("otlp"):
        telemetry = f"telemetry:\n  otlp: {{ endpoint: \"http://127.0.0.1:{ports['otlp']}\", protocol: http }}\n  decision_log: off\n"
    if variant.get("redis"):
        # Shared state on a loopback Redis: every decision reads and writes it.
        telemetry += f"state: {{ backend: redis, url: \"redis://127.0.0.1:{ports['redis']}\", prefix: \"bench-{variant['port']}\", timeout: {variant.get('state_timeout', '50ms')} }}\n"
    if variant["policy"] == "quickstart":
        return quickstart_config(variant, ports, workers, telemetry)
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
{telemetry}"""


def quickstart_config(variant, ports, workers, telemetry):
    """examples/quickstart/toolgate.yaml as shipped, but on the bench's ports, with its jira
    tool answering for `localhost` from nginx (oha resolves the target host itself)."""
    with open(os.path.join(QUICKSTART, "toolgate.yaml")) as f:
        text = f.read()
    for old, new in [
        ("proxy: 127.0.0.1:15001", f"proxy: 127.0.0.1:{variant['port']}"),
        ("admin: 127.0.0.1:15000", f"admin: 127.0.0.1:{variant['admin']}"),
        ("hosts: [jira.example.com]", f"hosts: [{TOOL_HOST}]"),
        ("upstream: https://jira.example.com", f"upstream: http://127.0.0.1:{ports['upstream']}"),
    ]:
        if old not in text:
            sys.exit(f"examples/quickstart/toolgate.yaml no longer contains {old!r}: update bench.py")
        text = text.replace(old, new)
    return f"workers: {workers}\n{text}\n{telemetry}"


def wrk(url_path, port, duration, connections, method="GET", task=None):
    script = os.path.join(HERE, "absolute.lua")
    env = dict(os.environ, WRK_PATH=url_path, WRK_METHOD=method)
    if task:
        env["WRK_TASK"] = task
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


def oha_latency(url, proxy, rate, duration, method="GET", task=None):
    args = ["oha", "--no-tui", "--output-format", "json", "-z", f"{duration}s", "-q", str(rate),
            "--latency-correction", "-c", "64", "-m", method]
    if task:
        args += ["-H", f"{TASK_HEADER}: {task}"]
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


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--toolgate", required=True)
    ap.add_argument("--envoy", required=True)
    ap.add_argument("--pingora", help="the bare pingora forward proxy (proxy/examples/bare_pingora.rs)")
    ap.add_argument("--runs", type=int, default=3,
                    help="separate runs, each starting every server afresh; ratios are reported "
                         "as median (min–max) over the runs")
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2, help="alternating closed-loop rounds per run")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rate", type=int, default=5000,
                    help="open-loop rate; lowered to half the slowest proxied row's throughput "
                         "in the first run, so that no row is measured saturated")
    ap.add_argument("--chain", type=int, default=16,
                    help="earlier actions the chain rule scans on the typical toolgate rows")
    ap.add_argument("--latency-duration", type=int, default=5, help="0: no latency measurement")
    ap.add_argument("--only", default="", help="comma-separated row keys to run")
    ap.add_argument("--features", default="jwt,otlp,redis",
                    help="toolgate features to exercise (jwt: minted-JWT rows; otlp: export spans; "
                         "redis: the secret row again with state on a loopback redis-server)")
    return ap.parse_args()


# (key, label, variant, method, path, task): every toolgate row. Rows without a task join the
# agent's default task (wrk names none), whose chain is always full; rows with a task name it
# in x-toolgate-task on every request, as agent frameworks do, and its chain fills up to
# chain.max_actions within the warm-up.
def toolgate_rows(args, path):
    tuned = f"classify + Rego chain rule ({args.chain} earlier actions)"
    rows = [
        ("toolgate_jwt", f"toolgate, hand-tuned policy: {tuned} + minted EdDSA JWT + OTLP spans",
         {"policy": "tuned", "credential": "jwt", "otlp": True, "chain": args.chain}, "GET", path, None),
        ("toolgate_secret", "toolgate, hand-tuned policy: same pipeline, secret credential",
         {"policy": "tuned", "credential": "secret", "otlp": True, "chain": args.chain}, "GET", path, None),
        ("toolgate_deny", "toolgate, hand-tuned policy: deny path (403 problem+json)",
         {"policy": "tuned", "credential": "secret", "otlp": True, "chain": args.chain}, "DELETE", path, None),
        ("toolgate_chain64", "toolgate, hand-tuned policy: secret, task header, 64 earlier actions scanned",
         {"policy": "tuned", "credential": "secret", "otlp": True, "chain": 64}, "GET", path, "bench-task"),
        ("toolgate_idiomatic", "toolgate, idiomatic policy (separate rules, deny set, chain helpers): secret, task header, 64 earlier actions",
         {"policy": "idiomatic", "credential": "secret", "otlp": True, "chain": 64}, "GET", path, "bench-task"),
        ("toolgate_idiomatic_jwt", "toolgate, idiomatic policy: minted EdDSA JWT, task header, 64 earlier actions",
         {"policy": "idiomatic", "credential": "jwt", "otlp": True, "chain": 64}, "GET", path, "bench-task"),
        ("toolgate_quickstart", "toolgate, quickstart policy and catalog as shipped: ticket.read, secret, task header",
         {"policy": "quickstart", "credential": "secret", "otlp": True, "chain": 64}, "GET",
         f"http://{TOOL_HOST}/rest/api/3/issue/SUP-12", "bench-task"),
    ]
    features = set(filter(None, args.features.split(",")))
    if "redis" in features:
        rows.append(("toolgate_redis", "toolgate, hand-tuned policy: the secret row with state on Redis (loopback)",
                     {"policy": "tuned", "credential": "secret", "otlp": True, "chain": args.chain, "redis": True}, "GET", path, None))
    if "jwt" not in features:
        rows = [r for r in rows if r[2]["credential"] != "jwt"]
    if "otlp" not in features:
        rows = [(k, l.replace(" + OTLP spans", ""), dict(v, otlp=False), m, p, t) for k, l, v, m, p, t in rows]
    return rows


def start_toolgate(args, procs, ports, key, variant):
    variant = dict(variant, port=free_port(), admin=free_port())
    d = os.path.join(procs.dir, key)
    os.makedirs(d)
    with open(os.path.join(d, "toolgate.yaml"), "w") as f:
        f.write(toolgate_config(variant, ports, args.workers))
    if variant["policy"] == "quickstart":
        for sub in ["policy", "secrets"]:
            shutil.copytree(os.path.join(QUICKSTART, sub), os.path.join(d, sub))
    else:
        shutil.copy(POLICIES[variant["policy"]], os.path.join(d, "policy.rego"))
        with open(os.path.join(d, "secret"), "w") as f:
            f.write("bench-secret\n")
    if variant["credential"] == "jwt":
        subprocess.run([args.toolgate, "keys", "init", "--out", os.path.join(d, "signing-key.pem")], check=True, capture_output=True)
    env = dict(os.environ, TOOLGATE_LOG="warn")
    p = procs.start(key, [args.toolgate, "run", "-c", os.path.join(d, "toolgate.yaml")], env=env)
    wait_port(variant["port"], p, key)
    return variant["port"], p.pid


def run_once(args, run, rate):
    """One run: every server started afresh, closed-loop rounds, then open-loop latency.
    Returns {key: {...}} and the rows in order."""
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

        keep = set(filter(None, args.only.split(",")))
        wanted = lambda key: not keep or key in keep
        rows = []  # (key, label, port, pid, path, method, proxied, task)
        path = f"http://{TOOL_HOST}/items/42"
        rows.append(("direct", "direct to nginx (the limit)", ports["upstream"], nginx.pid, "/items/42", "GET", False, None))

        if args.pingora and wanted("pingora"):
            port = free_port()
            p = procs.start("pingora", [args.pingora, f"127.0.0.1:{port}", f"127.0.0.1:{ports['upstream']}", str(args.workers)])
            wait_port(port, p, "bare pingora")
            rows.append(("pingora", "bare pingora forward proxy (the stack's ceiling)", port, p.pid, path, "GET", True, None))

        for key, label, authz in [("envoy", "Envoy 1.40, no authz", False), ("envoy_authz", "Envoy 1.40 + ext_authz (HTTP)", True)]:
            if not wanted(key):
                continue
            port, admin = free_port(), free_port()
            conf = os.path.join(procs.dir, f"{key}.yaml")
            with open(conf, "w") as f:
                f.write(ENVOY_CONF.format(port=port, admin=admin, authz_filter=ENVOY_AUTHZ_FILTER.format(**ports) if authz else "", **ports))
            base_id = 100 + len(rows)
            p = procs.start(key, [args.envoy, "-c", conf, "--concurrency", str(args.workers), "--base-id", str(base_id), "-l", "warning"])
            wait_port(port, p, key)
            rows.append((key, label, port, p.pid, path, "GET", True, None))

        started = {}
        for key, label, variant, method, vpath, task in toolgate_rows(args, path):
            if not wanted(key):
                continue
            cfg_key = (variant["policy"], variant["credential"], variant.get("otlp"), variant["chain"], variant.get("redis"))
            if variant.get("redis") and "redis" not in ports:
                ports["redis"] = free_port()
                redis = procs.start("redis", ["redis-server", "--port", str(ports["redis"]), "--bind", "127.0.0.1",
                                              "--save", "", "--appendonly", "no", "--dir", procs.dir])
                wait_port(ports["redis"], redis, "redis-server")
            if cfg_key not in started:
                started[cfg_key] = start_toolgate(args, procs, ports, key, variant)
            port, pid = started[cfg_key]
            rows.append((key, label, port, pid, vpath, method, True, task))
        if keep:
            rows = [r for r in rows if r[0] in keep]

        idle = {r[0]: rss_kib(r[3]) for r in rows}
        # Warm up every row (connection pools, caches, allocators; fills the named tasks' chains).
        for key, _, port, _, p, method, _, task in rows:
            wrk(p, port, args.warmup, args.connections, method, task)
        cpu = {r[0]: [0.0, 0] for r in rows}  # CPU seconds of the row's server, requests

        results = {r[0]: [] for r in rows}
        for rnd in range(args.rounds):
            order = rows if rnd % 2 == 0 else list(reversed(rows))
            for key, _, port, pid, p, method, _, task in order:
                before = cpu_seconds(pid)
                rps, non2xx, requests, out = wrk(p, port, args.duration, args.connections, method, task)
                cpu[key][0] += cpu_seconds(pid) - before
                cpu[key][1] += requests
                expect_errors = key == "toolgate_deny"
                if (non2xx > 0) != expect_errors:
                    sys.exit(f"{key}: unexpected status mix (non-2xx={non2xx}):\n{out}")
                results[key].append(rps)
                print(f"run {run + 1} round {rnd + 1} {key:22s} {rps:10.0f} req/s", file=sys.stderr)

        med = {k: statistics.median(v) for k, v in results.items()}
        if rate is None:
            slowest = min((med[r[0]] for r in rows if r[6]), default=args.rate * 2)
            rate = min(args.rate, max(100, int(slowest / 2 // 100 * 100)))
        out = {}
        for key, label, port, pid, p, method, proxied, task in rows:
            url = f"http://127.0.0.1:{port}{p}" if not proxied else p
            proxy = f"http://127.0.0.1:{port}" if proxied else None
            secs, reqs = cpu[key]
            out[key] = {
                "label": label,
                "rps": med[key],
                "cpu_us": secs / reqs * 1e6 if reqs else None,
                "latency": oha_latency(url, proxy, rate, args.latency_duration, method, task)
                if args.latency_duration > 0 else (None, None, None, None),
                "idle": idle[key],
            }
        for key, _, _, pid, *_ in rows:
            out[key]["peak"] = rss_kib(pid, "VmHWM")
        return [r[0] for r in rows], out, rate
    finally:
        procs.stop_all()
        shutil.rmtree(procs.dir, ignore_errors=True)


def spread(values, digits=2):
    """median (min–max) of a list of numbers, for a table cell."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def med_of(values, fmt="{:.0f}"):
    values = [v for v in values if v is not None]
    return fmt.format(statistics.median(values)) if values else "–"


# DESIGN.md §9's throughput targets, checked on the median over runs.
TARGETS = [
    ("toolgate_secret", "envoy_authz", 1.6), ("toolgate_secret", "envoy", 0.85), ("toolgate_jwt", "envoy_authz", 1.3),
    ("toolgate_idiomatic", "envoy_authz", 1.6), ("toolgate_idiomatic", "envoy", 0.85), ("toolgate_idiomatic_jwt", "envoy_authz", 1.3),
    ("toolgate_quickstart", "envoy_authz", 1.6), ("toolgate_quickstart", "envoy", 0.85),
]


def main():
    args = parse_args()
    runs = []
    rate = None
    order = []
    for run in range(args.runs):
        order, out, rate = run_once(args, run, rate)
        runs.append(out)

    def ratios(key, base):
        return [r[key]["rps"] / r[base]["rps"] for r in runs if key in r and base in r and r[base]["rps"]]

    print(f"\n{args.runs} runs (every server started afresh), each {args.rounds} alternating rounds × {args.duration}s "
          f"of wrk -t1 -c{args.connections}; {args.workers} workers per proxy. Ratios are computed within each run and "
          f"shown as median (min–max) over the runs. " + (
              f"Latency: oha open loop at {rate} req/s for {args.latency_duration}s"
              f"{'' if rate == args.rate else f' (lowered from {args.rate}: half the slowest row in run 1)'}, "
              f"median over the runs.\n" if args.latency_duration > 0 else "Latency not measured.\n"))
    print("| row | req/s | × Envoy + ext_authz | × Envoy | × bare pingora | CPU µs/req |")
    print("|---|---:|---:|---:|---:|---:|")
    for key in order:
        cells = [runs[0][key]["label"], med_of([r[key]["rps"] for r in runs]),
                 spread(ratios(key, "envoy_authz")), spread(ratios(key, "envoy")), spread(ratios(key, "pingora")),
                 med_of([r[key]["cpu_us"] for r in runs])]
        print("| " + " | ".join(cells) + " |")

    print("\n| row | p50 µs | p90 µs | p99 µs | added p50 µs | RSS idle MiB | RSS peak MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for key in order:
        lat = [r[key]["latency"] for r in runs]
        added = [r[key]["latency"][0] - r["direct"]["latency"][0]
                 for r in runs if key != "direct" and "direct" in r and r[key]["latency"][0] is not None and r["direct"]["latency"][0] is not None]
        cells = [runs[0][key]["label"], med_of([l[0] for l in lat]), med_of([l[1] for l in lat]), med_of([l[2] for l in lat]),
                 med_of(added) if key != "direct" else "–",
                 med_of([r[key]["idle"] / 1024 for r in runs], "{:.1f}"), med_of([r[key]["peak"] / 1024 for r in runs], "{:.1f}")]
        print("| " + " | ".join(cells) + " |")

    if all("toolgate_redis" in r and "toolgate_secret" in r for r in runs):
        added = [r["toolgate_redis"]["latency"][0] - r["toolgate_secret"]["latency"][0] for r in runs
                 if r["toolgate_redis"]["latency"][0] is not None and r["toolgate_secret"]["latency"][0] is not None]
        through = [r["toolgate_redis"]["rps"] / r["toolgate_secret"]["rps"] for r in runs if r["toolgate_secret"]["rps"]]
        print(f"\nRedis state backend vs memory (same pipeline, secret credential): added p50 "
              f"{spread(added, 0) if added else '–'} µs; throughput {spread(through)}× the memory backend's.")

    checks = [(k, b, t) for k, b, t in TARGETS if ratios(k, b)]
    if checks:
        names = {"envoy_authz": "Envoy + ext_authz", "envoy": "Envoy"}
        print("\n| target (DESIGN.md §9) | median (min–max) of runs | met |")
        print("|---|---:|---|")
        for key, base, target in checks:
            rs = ratios(key, base)
            print(f"| {key.removeprefix('toolgate_')} ≥ {target}× {names[base]} | {spread(rs)} | "
                  f"{'yes' if statistics.median(rs) >= target else 'no'} |")


if __name__ == "__main__":
    main()
