#!/usr/bin/env python3
"""A real Prometheus scraping the real programs, with the project's alert rules.

Run by scripts/prometheus-scrape (which finds or installs Debian's `prometheus`
and builds the binaries). It starts, on free local ports:

  * rowpipe-upload (its probes and /metrics on ROWPIPE_METRICS_LISTEN) and two
    rowpipe-consumer processes, on a fresh SQLite database and a fresh stream
    of the Redis at REDIS_URL;
  * prometheus, scraping them every second (jobs rowpipe-upload and
    rowpipe-consumer, as the chart's ServiceMonitor names them) with
    observability/alerts/rowpipe.rules.yml, its `for:` durations read as
    seconds instead of minutes (5m -> 5s) so a phase takes seconds.

Phases, each asserting exactly which alerts are pending or firing:

  1. ingest: an upload with duplicates and bad rows, throttled by the
     backlog bound; no alert. Then every dashboard expression must return
     data, and the series the programs emit are compared with
     observability/alerts/emitted-series.json (what the promtool tests may
     feed; --update rewrites it).
  2. idle: consumers stopped (KEDA scale to zero), stream empty; no alert.
  3. backlog: an upload while no consumer runs; RowpipeNoConsumers goes
     pending, then firing, and nothing else.
  4. recovery: one consumer back; the backlog drains and the alert resolves.
  5. a poison entry: RowpipeDeadLetters fires, alone (last: its 5-minute
     range would keep it firing through any later phase).

Prints one line per check and "prometheus scrape: N passed, M failed".
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import yaml

TOKEN = "prometheus-scrape-token"
GROUP = "rowpipe-consumers"
# Dashboard variables, as Grafana would substitute them.
DASHBOARD_VARS = {"$__rate_interval": "1m", "$__interval": "1s", "$__range": "1h",
                  "${stream}": ".*", "$stream": ".*", "${shard}": ".*", "$shard": ".*"}


class Run:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            print(f"ok    {name}" + (f": {detail}" if detail else ""), flush=True)
        else:
            self.failed += 1
            print(f"FAIL  {name}" + (f": {detail}" if detail else ""), flush=True)
        return ok


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, headers=None, timeout=30):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_until(what, fn, timeout, every=0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except (OSError, urllib.error.URLError) as e:
            last = e
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout}s (last: {last!r})")


def scaled_rules(src, dst):
    """The rules with every `for:` read as seconds (5m -> 5s): phases of seconds, not minutes."""
    rules = yaml.safe_load(open(src))
    for g in rules["groups"]:
        for r in g["rules"]:
            if "for" in r:
                m = re.fullmatch(r"(\d+)m", str(r["for"]))
                if m:
                    r["for"] = f"{m.group(1)}s"
    yaml.safe_dump(rules, open(dst, "w"), sort_keys=False)


def dashboard_exprs(path):
    dash = json.load(open(path))
    out = []

    def walk(panels):
        for p in panels:
            walk(p.get("panels") or [])
            for t in p.get("targets") or []:
                expr = t.get("expr") or ""
                for k, v in DASHBOARD_VARS.items():
                    expr = expr.replace(k, v)
                out.append((f"panel {p.get('id')} {p.get('title')!r} {t.get('refId')}", expr))
    walk(dash.get("panels") or [])
    return out


def parse_exposition(text):
    """{metric name: sorted label keys} of a Prometheus text body (histograms by their base name)."""
    series = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s", line)
        if not m:
            continue
        name = m.group(1)
        keys = sorted(set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(3) or "")) - {"le", "quantile"})
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if base != name and f"# TYPE {base} histogram" in text:
            name = base
        series.setdefault(name, set()).add(tuple(keys))
    return {k: sorted(list(v) for v in vs) for k, vs in sorted(series.items())}


class Stack:
    """The processes of one run; stopped (SIGTERM, then SIGKILL) at the end."""

    def __init__(self, root, bins, tmp, redis_url):
        self.root, self.bins, self.tmp = root, bins, tmp
        self.stream = f"rowpipe:promscrape:{uuid.uuid4().hex[:12]}"
        self.env = dict(os.environ, REDIS_URL=redis_url, DATABASE_URL=f"sqlite://{tmp}/rowpipe.db",
                        ROWPIPE_STREAM=self.stream, ROWPIPE_GROUP=GROUP, RUST_LOG="warn",
                        ROWPIPE_LOG_FORMAT="json")
        self.procs = {}
        self.upload_port = free_port()
        self.upload_metrics = free_port()
        self.consumer_ports = [free_port(), free_port()]
        self.prom_port = free_port()

    def start(self, name, cmd, env=None):
        log = open(os.path.join(self.tmp, f"{name}.log"), "w")
        self.procs[name] = subprocess.Popen(cmd, env=dict(self.env, **(env or {})), stdout=log,
                                            stderr=subprocess.STDOUT, cwd=self.tmp)

    def stop(self, name, sig=signal.SIGTERM, timeout=30):
        p = self.procs.pop(name, None)
        if p is None:
            return
        p.send_signal(sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def stop_all(self):
        for name in list(self.procs):
            self.stop(name)

    def migrate(self):
        subprocess.run([os.path.join(self.bins, "rowpipe"), "migrate"], env=self.env, check=True,
                       capture_output=True, cwd=self.tmp)

    def start_upload(self):
        self.start("upload", [os.path.join(self.bins, "rowpipe-upload")], {
            "ROWPIPE_LISTEN": f"127.0.0.1:{self.upload_port}",
            "ROWPIPE_METRICS_LISTEN": f"127.0.0.1:{self.upload_metrics}",
            "ROWPIPE_AUTH_TOKENS": TOKEN,
            # Below RowpipeLagGrowing's 1000, and small enough that the ingest
            # waits for the consumers (backpressure shows on the dashboard).
            "ROWPIPE_MAX_BACKLOG": "900",
            "ROWPIPE_ENQUEUE_BATCH": "300",
        })
        wait_until("upload /readyz", lambda: http("GET", f"http://127.0.0.1:{self.upload_metrics}/readyz")[0] == 200, 30)

    def start_consumer(self, i):
        port = self.consumer_ports[i]
        self.start(f"consumer-{i}", [os.path.join(self.bins, "rowpipe-consumer")], {
            "ROWPIPE_METRICS_LISTEN": f"127.0.0.1:{port}",
            "ROWPIPE_BATCH_SIZE": "200",
            "ROWPIPE_CONSUMER_NAME": f"promscrape-{i}",
        })
        wait_until(f"consumer {i} /readyz", lambda: http("GET", f"http://127.0.0.1:{port}/readyz")[0] == 200, 30)

    def start_prometheus(self, prometheus, rules):
        cfg = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": [rules],
            "scrape_configs": [
                {"job_name": "rowpipe-upload", "static_configs": [{"targets": [f"127.0.0.1:{self.upload_metrics}"]}]},
                {"job_name": "rowpipe-consumer",
                 "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in self.consumer_ports]}]},
            ],
        }
        path = os.path.join(self.tmp, "prometheus.yml")
        yaml.safe_dump(cfg, open(path, "w"))
        self.start("prometheus", [prometheus, f"--config.file={path}", f"--storage.tsdb.path={self.tmp}/tsdb",
                                  f"--web.listen-address=127.0.0.1:{self.prom_port}"])
        wait_until("prometheus ready", lambda: http("GET", f"{self.prom}/-/ready")[0] == 200, 60)

    @property
    def prom(self):
        return f"http://127.0.0.1:{self.prom_port}"

    def query(self, expr):
        status, body = http("GET", f"{self.prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        doc = json.loads(body)
        if status != 200 or doc.get("status") != "success":
            raise RuntimeError(f"query {expr!r}: {status} {body[:200]}")
        return doc["data"]["result"]

    def alerts(self):
        """{(alertname, state)} of the project's alerts for this run's stream (or without one)."""
        doc = json.loads(http("GET", f"{self.prom}/api/v1/alerts")[1])
        out = set()
        for a in doc["data"]["alerts"]:
            stream = a["labels"].get("stream")
            if stream in (None, self.stream):
                out.add((a["labels"]["alertname"], a["state"]))
        return out

    def upload(self, rows):
        body = "email,name\n" + "".join(f"{e},{n}\n" for e, n in rows)
        status, text = http("POST", f"http://127.0.0.1:{self.upload_port}/v1/uploads", body.encode(),
                            {"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/csv"}, timeout=300)
        if status not in (200, 202):
            raise RuntimeError(f"POST /v1/uploads: {status} {text[:300]}")
        return json.loads(text)["upload_id"]

    def status(self, upload_id):
        return json.loads(http("GET", f"http://127.0.0.1:{self.upload_port}/v1/uploads/{upload_id}",
                               headers={"Authorization": f"Bearer {TOKEN}"})[1])

    def metrics(self, port):
        return http("GET", f"http://127.0.0.1:{port}/metrics")[1]


def rows(n, prefix):
    out = []
    for i in range(n):
        if i % 50 == 7:
            out.append((f"not-an-email-{i}", "bad"))          # rejected (invalid_syntax)
        elif i % 50 == 9:
            out.append((f"{prefix}{i - 1}@example.com", "dup"))  # duplicate of the row before
        else:
            out.append((f"{prefix}{i}@example.com", f"name {i}"))
    return out


def observe_alerts(stack, seconds):
    """Every (alertname, state) seen over `seconds`."""
    seen = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen |= stack.alerts()
        time.sleep(0.5)
    return seen


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--bins", required=True, help="directory with rowpipe, rowpipe-upload, rowpipe-consumer")
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--update", action="store_true", help="rewrite observability/alerts/emitted-series.json")
    args = ap.parse_args()
    root = os.path.abspath(args.root)
    run = Run()
    started = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="prometheus-scrape-", dir=os.path.join(root, ".rowpipe"))
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
    stack = Stack(root, os.path.abspath(args.bins), tmp, redis_url)
    rules = os.path.join(tmp, "rules.yml")
    scaled_rules(os.path.join(root, "observability/alerts/rowpipe.rules.yml"), rules)
    snapshot_path = os.path.join(root, "observability/alerts/emitted-series.json")
    try:
        stack.migrate()
        stack.start_upload()
        stack.start_consumer(0)
        stack.start_consumer(1)
        stack.start_prometheus(args.prometheus, rules)
        wait_until("every target up", lambda: len([r for r in stack.query("up == 1")]) == 3, 30)
        run.check("prometheus scrapes the upload's metrics port and both consumers", True,
                  f"{args.prometheus}, rules {os.path.relpath(rules, root)}")

        # ---- 1. ingest
        t0 = time.monotonic()
        upload_id = {}
        import threading
        worker = threading.Thread(target=lambda: upload_id.setdefault("id", stack.upload(rows(30000, "ingest"))))
        worker.start()
        during = set()
        midway = []  # rows_inserted_total scraped while the upload is still being received
        while worker.is_alive():
            during |= stack.alerts()
            now = stack.query("sum(rowpipe_consumer_rows_inserted_total)")
            if now and worker.is_alive():
                midway.append(float(now[0]["value"][1]))
            time.sleep(0.5)
        worker.join()
        wait_until("ingest completed", lambda: stack.status(upload_id["id"]).get("status") == "completed", 300)
        ingest_secs = time.monotonic() - t0
        during |= observe_alerts(stack, 3)
        run.check("ingest: no alert pending or firing", not during, f"{sorted(during) or 'none'}; 30000 rows in {ingest_secs:.1f}s")
        counts = stack.status(upload_id["id"])["counts"]
        time.sleep(3)  # two scrapes after the last batch
        inserted = stack.query("sum(rowpipe_consumer_rows_inserted_total)")
        value = float(inserted[0]["value"][1]) if inserted else -1
        moving = [v for v in midway if 0 < v < counts["inserted"]]
        run.check("rows_inserted_total moves per batch, while the upload is still being received",
                  len(set(moving)) >= 2, f"{len(set(moving))} distinct values under the final {counts['inserted']} mid-upload")
        run.check("rows_inserted_total ends at the upload's inserted count",
                  value == counts["inserted"], f"metric {value:g}, upload {counts['inserted']}")
        # Three files without an email column (failed) among twenty read to
        # their end: 13% failed, under RowpipeUploadsFailing's 20%. Divided by
        # the upload job's own ends only, three failures would read as 100%;
        # divided by the consumers' `completed`, short uploads that the upload
        # service completes itself (counted by nobody) would inflate it.
        small = [stack.upload(rows(20, f"small{i}-")) for i in range(20)]
        for _ in range(3):
            status, _ = http("POST", f"http://127.0.0.1:{stack.upload_port}/v1/uploads", b"id,phone\n1,555\n",
                             {"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/csv"})
            if status != 422:
                raise RuntimeError(f"a file without an email column answered {status}, not 422")
        wait_until("small uploads completed", lambda: all(stack.status(u).get("status") == "completed" for u in small), 120)
        mixed = observe_alerts(stack, 10)
        run.check("3 failed uploads among 20 completed: no alert (RowpipeUploadsFailing is the upload service's share)",
                  not mixed, f"{sorted(mixed) or 'none'}")
        empty = []
        for where, expr in dashboard_exprs(os.path.join(root, "observability/grafana/rowpipe-dashboard.json")):
            if not stack.query(expr):
                empty.append(f"{where}: {expr}")
        run.check("every dashboard expression returns data after an ingest", not empty, "; ".join(empty[:6]))

        # Both consumers: which of them completed the upload (and so exports
        # status="completed") is a race; the job is their union.
        emitted = {"rowpipe-upload": parse_exposition(stack.metrics(stack.upload_metrics)),
                   "rowpipe-consumer": parse_exposition("\n".join(stack.metrics(p) for p in stack.consumer_ports))}
        if args.update:
            with open(snapshot_path, "w") as f:
                json.dump({"_comment": "Metric names and label keys the real binaries emit on /metrics after an "
                                       "ingest, per scrape job; written by scripts/prometheus-scrape --update. "
                                       "scripts/check-observability holds the promtool tests' input series to it.",
                           **emitted}, f, indent=1, sort_keys=True)
                f.write("\n")
            run.check("emitted series written", True, os.path.relpath(snapshot_path, root))
        else:
            have = json.load(open(snapshot_path)) if os.path.exists(snapshot_path) else {}
            have.pop("_comment", None)
            diff = []
            for job, series in emitted.items():
                for name in sorted(set(series) | set(have.get(job, {}))):
                    if series.get(name) != have.get(job, {}).get(name):
                        diff.append(f"{job} {name}: emitted {series.get(name)}, recorded {have.get(job, {}).get(name)}")
            run.check("the series the programs emit are the ones recorded for the promtool tests", not diff,
                      "; ".join(diff[:5]) + (" (rerun with --update)" if diff else ""))

        # ---- 2. idle with zero consumers (KEDA scaled to zero), empty stream
        stack.stop("consumer-0")
        stack.stop("consumer-1")
        wait_until("consumers seen down", lambda: not stack.query('up{job="rowpipe-consumer"} == 1'), 30)
        backlog = stack.query(f'max(rowpipe_stream_group_lag{{stream="{stack.stream}"}}) + max(rowpipe_stream_pending{{stream="{stack.stream}"}})')
        run.check("idle: the upload service exports an empty backlog with no consumer running",
                  bool(backlog) and float(backlog[0]["value"][1]) == 0, f"{backlog and backlog[0]['value'][1]}")
        idle = observe_alerts(stack, 12)
        run.check("idle with zero consumers and an empty stream: no alert pending or firing", not idle, f"{sorted(idle) or 'none'}")

        # ---- 3. backlog with zero consumers
        waiting = stack.upload(rows(500, "waiting"))
        seen, order = set(), []
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and ("RowpipeNoConsumers", "firing") not in seen:
            now = stack.alerts()
            for a in sorted(now - seen):
                order.append(a)
            seen |= now
            time.sleep(0.5)
        seen |= observe_alerts(stack, 2)
        others = {a for a in seen if a[0] != "RowpipeNoConsumers"}
        run.check("backlog with zero consumers: RowpipeNoConsumers pending, then firing",
                  order[:2] == [("RowpipeNoConsumers", "pending"), ("RowpipeNoConsumers", "firing")],
                  f"seen in order: {order}")
        run.check("backlog with zero consumers: no other alert", not others, f"{sorted(others) or 'none'}")

        # ---- 4. recovery
        stack.start_consumer(0)
        wait_until("backlog upload completed", lambda: stack.status(waiting).get("status") == "completed", 120)
        try:
            wait_until("RowpipeNoConsumers resolved", lambda: not stack.alerts(), 30)
            resolved = True
        except TimeoutError:
            resolved = False
        run.check("recovery: one consumer back, the backlog drains and the alert resolves", resolved,
                  f"{sorted(stack.alerts()) or 'no alert left'}")

        # ---- 5. a dead letter, last: RowpipeDeadLetters looks back 5 minutes
        # (its range is not scaled), so it would still fire in any later phase.
        # A poison entry (not a row at all): the consumer dead-letters it at
        # once, and RowpipeDeadLetters (no `for`) fires, alone: the counter is
        # exported at 0 from the start, so its first increase is seen.
        subprocess.run(["redis-cli", "-u", redis_url, "XADD", stack.stream, "*", "not", "a-row"], check=True,
                       capture_output=True)
        seen = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and ("RowpipeDeadLetters", "firing") not in seen:
            seen |= stack.alerts()
            time.sleep(0.5)
        run.check("a poison entry: RowpipeDeadLetters fires, and nothing else",
                  seen == {("RowpipeDeadLetters", "firing")}, f"{sorted(seen) or 'none'}")
    except Exception as e:  # a failure of the harness is a failed check, never a pass
        run.check("prometheus scrape run", False, f"{type(e).__name__}: {e} (logs in {tmp})")
    finally:
        stack.stop_all()
    print(f"prometheus scrape: {run.passed} passed, {run.failed} failed ({time.monotonic() - started:.0f}s; logs in {os.path.relpath(tmp, root)})")
    if run.failed == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
