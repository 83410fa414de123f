#!/usr/bin/env python3
"""Checks of rowpipe's deployment files, run by scripts/check-chart.

Prints one line per check ("PASS name: detail" / "FAIL name: reason") and ends with
"chart checks: N passed, M failed"; exits 1 when M > 0.

Environment (set by scripts/check-chart): HELM, KUBECTL, HADOLINT, KUBERNETES_VALIDATE.
ROWPIPE_K8S_VERSION selects the Kubernetes schemas (default 1.33.0).
"""
from __future__ import annotations

import struct
import argparse
import copy
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback

import jsonschema
import yaml

K8S_VERSION = os.environ.get("ROWPIPE_K8S_VERSION", "1.33.0")
CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule"}
RELEASE = "rowpipe"
NAMESPACE = "rowpipe"
# APIs of the CRDs the chart may render, as a cluster with KEDA and the Prometheus
# Operator serves them (the chart refuses to render those objects without them).
CRD_API_VERSIONS = ["keda.sh/v1alpha1/ScaledObject", "keda.sh/v1alpha1/TriggerAuthentication",
                    "monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PrometheusRule"]
# The longest release name Helm accepts is 53 characters; one with the chart name
# in it (used alone as the prefix) and one without (suffixed with "-rowpipe").
LONG_RELEASES = ["a" * 53, ("rowpipe-" + "b" * 53)[:53]]

# Trigger metadata keys the KEDA redis-streams scaler reads (KEDA docs, v2.12+). The CRD
# types trigger metadata as map[string]string, so the scaler keys are checked here.
REDIS_STREAMS_METADATA = {
    "address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv",
    "username", "usernameFromEnv", "password", "passwordFromEnv",
    "stream", "consumerGroup", "pendingEntriesCount", "streamLength",
    "lagCount", "activationLagCount", "databaseIndex", "enableTLS", "unsafeSsl",
}
# The redis-cluster-streams scaler (KEDA docs) names its seed nodes `addresses` (or
# hosts+ports) and has no database index: a cluster has only database 0. Its docs page
# calls the activation threshold `activationTargetLag`, but the scaler (the same
# redis_streams_scaler.go for both types) reads `activationLagCount`, as here.
REDIS_CLUSTER_STREAMS_METADATA = {
    "addresses", "addressesFromEnv", "hosts", "hostsFromEnv", "ports", "portsFromEnv",
    "username", "usernameFromEnv", "password", "passwordFromEnv",
    "stream", "consumerGroup", "pendingEntriesCount", "streamLength",
    "lagCount", "activationLagCount", "enableTLS", "unsafeSsl",
}
TRIGGER_METADATA = {"redis-streams": REDIS_STREAMS_METADATA, "redis-cluster-streams": REDIS_CLUSTER_STREAMS_METADATA}
REQUIRED_ALERTS = {"RowpipeLagGrowing", "RowpipeDeadLetters", "RowpipeConsumerErrors", "RowpipeNoConsumers"}
REQUIRED_ALERT_METRICS = {
    "rowpipe_stream_group_lag", "rowpipe_consumer_dead_lettered_total",
    "rowpipe_db_errors_total", "rowpipe_consumer_ready",
}
# values.schema.json nodes allowed to accept unknown properties: Kubernetes objects
# passed through verbatim (validated after rendering by kubernetes-validate).
SCHEMA_PASSTHROUGH = [
    r"^global$",
    r"^(upload|consumer|migration)\.affinity\.(nodeAffinity|podAffinity|podAntiAffinity)$",
    r"^(upload|consumer|migration)\.tolerations\[\]$",
    r"^(upload|consumer|migration)\.extraEnv\[\]$",
    r"^networkPolicy\.(apiFrom|metricsFrom|egressTo|redisTo|databaseTo|otlpTo)\[\]$",
]


class CheckError(Exception):
    pass


def require(cond, msg):
    if not cond:
        raise CheckError(msg)


# ---------------------------------------------------------------------------------
# runner


class Runner:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, name, fn, *args):
        try:
            detail = fn(*args)
        except CheckError as e:
            self.failed += 1
            print(f"FAIL {name}: {e}", flush=True)
            return False
        except Exception as e:  # a bug or an unexpected tool failure is a failed check
            self.failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(limit=3, file=sys.stdout)
            return False
        self.passed += 1
        print(f"PASS {name}" + (f": {detail}" if detail else ""), flush=True)
        return True


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def first_error_line(text):
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = [line for line in lines if line.startswith("- at ") or line.startswith("[ERROR]")]
    if detail:  # helm's schema errors and lint errors carry the detail on later lines
        return " | ".join(detail[:3])[:400]
    for line in lines:
        if "rror" in line or "FAIL" in line or "fail" in line:
            return line[:300]
    return (lines[0] if lines else "")[:300]


# ---------------------------------------------------------------------------------
# helm


class Chart:
    def __init__(self, root):
        self.root = root
        self.dir = os.path.join(root, "charts", "rowpipe")
        self.helm = os.environ.get("HELM") or shutil.which("helm")
        require(self.helm, "helm not found")
        self.cache = {}

    def values_file(self, name):
        return os.path.join(self.dir, name)

    def template(self, values=(), sets=(), release=RELEASE, base=True, api_versions=True):
        """helm template; `base` puts ci/base/auth-values.yaml first (the chart has no
        default token), `api_versions` renders as for a cluster serving the CRDs."""
        key = (tuple(values), tuple(sets), release, base, api_versions)
        if key not in self.cache:
            cmd = [self.helm, "template", release, self.dir, "--namespace", NAMESPACE]
            if api_versions:
                for a in CRD_API_VERSIONS:
                    cmd += ["--api-versions", a]
            if base:
                cmd += ["-f", os.path.join(self.dir, "ci", "base", "auth-values.yaml")]
            for v in values:
                cmd += ["-f", v]
            for s in sets:
                cmd += ["--set", s]
            p = run(cmd)
            self.cache[key] = p
        return self.cache[key]

    def render(self, values=(), sets=(), **kw):
        p = self.template(values, sets, **kw)
        require(p.returncode == 0, f"helm template failed: {first_error_line(p.stderr)}")
        return [d for d in yaml.safe_load_all(p.stdout) if d]


def find(docs, kind, name=None):
    out = [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    return out


def one(docs, kind, name=None):
    found = find(docs, kind, name)
    require(len(found) == 1, f"expected one {kind}{' ' + name if name else ''}, found {len(found)}")
    return found[0]


def container_env(docs, pod_spec, container):
    """Resolve a container's environment: envFrom ConfigMaps/Secrets of the render, then env."""
    env = {}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            cms = find(docs, "ConfigMap", src["configMapRef"]["name"])
            require(cms, f"envFrom ConfigMap {src['configMapRef']['name']} is not rendered")
            env.update(cms[0].get("data", {}))
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            env[e["name"]] = e.get("valueFrom")
    return env


def pod_spec(workload):
    return workload["spec"]["template"]["spec"]


# ---------------------------------------------------------------------------------
# values.yaml / values.schema.json


def check_values_documented(chart):
    path = chart.values_file("values.yaml")
    lines = open(path).read().splitlines()
    missing = []
    keys = 0
    prev = ""
    for n, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped:
            continue
        m = re.match(r"^(\s*)([A-Za-z0-9_.\-]+):(\s|$)", line)
        if m and not stripped.startswith("- "):
            keys += 1
            if not prev.startswith("#"):
                missing.append(f"line {n} '{m.group(2)}'")
        prev = stripped
    require(not missing, "keys without a comment above them: " + ", ".join(missing[:10]))
    return f"{keys} keys, each with a comment"


def check_values_match_schema(chart):
    import json
    schema = json.load(open(chart.values_file("values.schema.json")))
    values = yaml.safe_load(open(chart.values_file("values.yaml")))
    problems = []

    def walk(val, sch, path):
        props = sch.get("properties")
        if not isinstance(val, dict) or props is None:
            return
        for k, v in val.items():
            if k not in props:
                problems.append(f"{path}{k}: in values.yaml, not in the schema")
            else:
                walk(v, props[k], f"{path}{k}.")
        if not val and path:
            return  # an empty map ({}) is a free-form Kubernetes object (affinity, ...)
        for k in props:
            if k not in val and not (path == "" and k == "global"):
                problems.append(f"{path}{k}: in the schema, missing from values.yaml (undocumented)")

    walk(values, schema, "")
    require(not problems, "; ".join(problems[:10]))
    return "values.yaml and values.schema.json declare the same keys"


def check_schema_strict(chart):
    import json
    schema = json.load(open(chart.values_file("values.schema.json")))
    problems = []
    count = 0

    def walk(node, path):
        nonlocal count
        if not isinstance(node, dict):
            return
        t = node.get("type")
        is_object = t == "object" or (isinstance(t, list) and "object" in t) or "properties" in node
        if is_object:
            count += 1
            ap = node.get("additionalProperties", "missing")
            if ap == "missing":
                problems.append(f"{path or '<root>'}: no additionalProperties")
            elif ap is True or ap == {}:
                if not any(re.match(p, path) for p in SCHEMA_PASSTHROUGH):
                    problems.append(f"{path}: additionalProperties true outside the Kubernetes passthrough list")
        for k, v in node.get("properties", {}).items():
            walk(v, f"{path}.{k}" if path else k)
        if isinstance(node.get("items"), dict):
            walk(node["items"], path + "[]")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], path + "{}")
        for kw in ("oneOf", "anyOf", "allOf"):
            for sub in node.get(kw, []):
                walk(sub, path)

    walk(schema, "")
    require(schema.get("additionalProperties") is False, "root additionalProperties is not false")
    require(not problems, "; ".join(problems[:10]))
    return f"{count} object nodes, all closed (passthrough only for Kubernetes objects)"


def check_schema_rejects(chart):
    cases = [
        (["consumer.batchSzie=10"], "additional properties", "misspelled nested key"),
        (["kedaa.enabled=true"], "additional properties", "misspelled top-level key"),
        (["keda.lagCount=lots"], "want integer", "wrong type (string for integer)"),
        (["logging.format=yaml"], "", "value outside the enum"),
        (["stream.name="], "", "empty stream name"),
        (["database.url=sqlite://rowpipe.db"], "sqlite", "sqlite URL (template guard)"),
        (["stream.shards=65"], "maximum", "more shards than the table has"),
        (["stream.shards=0"], "minimum", "no shard"),
        (["consumer.shards=0;2"], "", "shard list that is not indexes and ranges"),
        (["upload.redisWait.timeoutMs=0"], "minimum", "WAIT 0 (blocks forever)"),
        (["stream.shards=2", "stream.name=orders:{tenant}:rows"], "drop the braces", "hash tag in a sharded stream name (template guard)"),
        (["stream.shards=4", "consumer.shards=1-4"], "names shard 4", "consumer shard the stream does not have (template guard)"),
        (["consumer.shards=3-1", "stream.shards=4"], "is empty", "empty shard range (template guard)"),
        (["redis.address=a:6379\\,b:6379"], "redis.cluster is false", "several Redis nodes without redis.cluster (template guard)"),
        (["redis.cluster=true", "redis.databaseIndex=1"], "only database 0", "database index on a cluster (template guard)"),
    ]
    for sets, needle, what in cases:
        p = chart.template(sets=sets)
        require(p.returncode != 0, f"helm template --set {' '.join(sets)} succeeded; it must fail ({what})")
        require(needle.lower() in p.stderr.lower(),
                f"--set {' '.join(sets)} failed for another reason: {first_error_line(p.stderr)}")
    return f"{len(cases)} bad --set values rejected (typo, wrong type, enum, empty, sqlite, shards, cluster)"


# ---------------------------------------------------------------------------------
# lint / template / validate


def check_lint(chart, values):
    cmd = [chart.helm, "lint", "--strict", chart.dir, "-f", os.path.join(chart.dir, "ci", "base", "auth-values.yaml")]
    for v in values:
        cmd += ["-f", v]
    # helm lint has no --api-versions, and the chart refuses CRD objects a cluster
    # does not serve: lint without them (helm template checks them, with the APIs).
    cmd += ["--set", "keda.enabled=false,metrics.serviceMonitor.enabled=false,metrics.prometheusRule.enabled=false"]
    p = run(cmd)
    out = p.stdout + p.stderr
    require(p.returncode == 0, first_error_line(out))
    warnings = [line for line in out.splitlines() if "[WARNING]" in line or "[ERROR]" in line]
    require(not warnings, warnings[0] if warnings else "")
    return "clean"


def check_template(chart, values, sets=()):
    docs = chart.render(values, sets)
    seen = set()
    for d in docs:
        require("kind" in d and "metadata" in d, f"document without kind/metadata: {str(d)[:80]}")
        key = (d["kind"], d["metadata"]["name"])
        require(key not in seen, f"duplicate {key}")
        seen.add(key)
        require(d["metadata"].get("labels", {}).get("app.kubernetes.io/instance") == RELEASE,
                f"{key} lacks the app.kubernetes.io/instance label")
    kinds = sorted({d["kind"] for d in docs})
    return f"{len(docs)} resources ({', '.join(kinds)})"


def kubernetes_validate(docs, label):
    kv = os.environ.get("KUBERNETES_VALIDATE") or shutil.which("kubernetes-validate")
    require(kv, "kubernetes-validate not found")
    core = [d for d in docs if d["kind"] not in CRD_KINDS]
    require(core, "nothing to validate")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump_all(core, f, sort_keys=False)
        tmp = f.name
    try:
        p = run([kv, "--strict", "--quiet", "-k", K8S_VERSION, tmp])
    finally:
        os.unlink(tmp)
    out = (p.stdout + p.stderr).strip()
    require(p.returncode == 0, f"{label}: " + " | ".join(out.splitlines()[:4]))
    skipped = len(docs) - len(core)
    return f"{len(core)} resources valid for Kubernetes {K8S_VERSION}" + (f" ({skipped} CRD objects checked separately)" if skipped else "")


def check_kubernetes_validate(chart, values, sets=()):
    return kubernetes_validate(chart.render(values, sets), "kubernetes-validate")


def check_kubernetes_validate_is_strict(chart):
    docs = chart.render()
    dep = copy.deepcopy(one(docs, "Deployment", f"{RELEASE}-consumer"))
    dep["spec"]["template"]["spec"]["containers"][0]["livenessProbee"] = {}
    try:
        kubernetes_validate([dep], "mutant")
    except CheckError:
        return "a misspelled Deployment field is rejected"
    raise CheckError("kubernetes-validate --strict accepted a misspelled field")


# ---------------------------------------------------------------------------------
# KEDA CRDs


class CrdValidator:
    def __init__(self, crd_dir):
        self.schemas = {}
        files = sorted(glob.glob(os.path.join(crd_dir, "*.yaml")))
        require(files, f"no CRDs in {crd_dir}")
        for path in files:
            crd = yaml.safe_load(open(path))
            group = crd["spec"]["group"]
            kind = crd["spec"]["names"]["kind"]
            for v in crd["spec"]["versions"]:
                schema = copy.deepcopy(v["schema"]["openAPIV3Schema"])
                self._close(schema, "")
                self.schemas[(f"{group}/{v['name']}", kind)] = schema

    def _close(self, node, path):
        """Make every object with declared properties reject undeclared ones (the CRDs
        leave additionalProperties unset, which the API server prunes silently)."""
        if not isinstance(node, dict):
            return
        if node.get("x-kubernetes-preserve-unknown-fields"):
            return
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for v in node.get("properties", {}).values():
            self._close(v, path)
        if isinstance(node.get("items"), dict):
            self._close(node["items"], path)
        if isinstance(node.get("additionalProperties"), dict):
            self._close(node["additionalProperties"], path)
        for kw in ("oneOf", "anyOf", "allOf"):
            for sub in node.get(kw, []):
                self._close(sub, path)

    def errors(self, doc):
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key not in self.schemas:
            return [f"no CRD schema for {key}"]
        errs = [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                for e in jsonschema.Draft7Validator(self.schemas[key]).iter_errors(doc)]
        name = doc.get("metadata", {}).get("name", "")
        if not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", name) or len(name) > 253:
            errs.append(f"metadata.name {name!r} is not a DNS subdomain")
        if doc["kind"] == "ScaledObject":
            for i, t in enumerate(doc.get("spec", {}).get("triggers", [])):
                known = TRIGGER_METADATA.get(t.get("type"))
                if known is None:
                    errs.append(f"spec/triggers/{i}: trigger type {t.get('type')!r} is none of {sorted(TRIGGER_METADATA)}")
                    continue
                for k in t.get("metadata", {}):
                    if k not in known:
                        errs.append(f"spec/triggers/{i}/metadata: unknown {t['type']} key {k!r}")
        return errs


def check_keda_crds(chart, crds, values, sets=()):
    docs = chart.render(values, sets)
    objs = [d for d in docs if d["kind"] in ("ScaledObject", "TriggerAuthentication")]
    require(objs, "no KEDA objects rendered")
    for d in objs:
        errs = crds.errors(d)
        require(not errs, f"{d['kind']}/{d['metadata']['name']}: " + "; ".join(errs[:5]))
    return ", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in objs) + " match the KEDA CRD schemas (strict)"


def check_keda_validator_strict(chart, crds):
    docs = chart.render([chart.values_file("ci/observability-values.yaml")])
    so = one(docs, "ScaledObject")
    ta = one(docs, "TriggerAuthentication")
    require(not crds.errors(so) and not crds.errors(ta), "the unmodified objects do not validate")

    def mutant(doc, fn):
        d = copy.deepcopy(doc)
        fn(d)
        return d

    cases = [
        ("spec.pollingIntervall", mutant(so, lambda d: d["spec"].__setitem__("pollingIntervall", 5))),
        ("spec.scaleTargetRef.nme", mutant(so, lambda d: d["spec"]["scaleTargetRef"].__setitem__("nme", "x"))),
        ("triggers[0].authRef", mutant(so, lambda d: d["spec"]["triggers"][0].__setitem__("authRef", {"name": "x"}))),
        ("metadata.consumerGroupp", mutant(so, lambda d: d["spec"]["triggers"][0]["metadata"].__setitem__("consumerGroupp", "g"))),
        ("minReplicaCount as string", mutant(so, lambda d: d["spec"].__setitem__("minReplicaCount", "1"))),
        ("numeric trigger metadata", mutant(so, lambda d: d["spec"]["triggers"][0]["metadata"].__setitem__("lagCount", 5))),
        ("secretTargetRef[0].paramter", mutant(ta, lambda d: d["spec"]["secretTargetRef"][0].__setitem__("paramter", "password"))),
    ]
    cluster = one(chart.render([chart.values_file("ci/cluster-shards-values.yaml")]), "ScaledObject")
    require(not crds.errors(cluster), "the unmodified redis-cluster-streams ScaledObject does not validate")
    cases += [
        ("redis-cluster-streams with address", mutant(cluster, lambda d: d["spec"]["triggers"][0]["metadata"].__setitem__("address", "redis:6379"))),
        ("redis-cluster-streams with databaseIndex", mutant(cluster, lambda d: d["spec"]["triggers"][0]["metadata"].__setitem__("databaseIndex", "0"))),
        ("redis-streams with addresses", mutant(so, lambda d: d["spec"]["triggers"][0]["metadata"].__setitem__("addresses", "a:1,b:2"))),
        ("unknown trigger type", mutant(so, lambda d: d["spec"]["triggers"][0].__setitem__("type", "redis-stream"))),
    ]
    for what, doc in cases:
        require(crds.errors(doc), f"the strict KEDA validator accepted a mutant ({what})")
    return f"{len(cases)} misspelled/mistyped KEDA fields rejected"


# ---------------------------------------------------------------------------------
# sharded streams, computed here from the chart's table independently of the templates


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from redis_slot import SLOTS, key_slot as hash_slot  # noqa: E402


def shard_tags(chart):
    table = yaml.safe_load(open(os.path.join(chart.dir, "files", "shard-tags.yaml")))
    return {int(n): tags for n, tags in table.items()}


def shard_keys(chart, stream, n):
    """The stream's keys as the programs name them: the stream itself, or <stream>:{<tag>}."""
    if n <= 1:
        return [stream]
    return [f"{stream}:{{{tag}}}" for tag in shard_tags(chart)[n]]


def served_shards(spec, n):
    """ROWPIPE_SHARDS ("0,3-5"; empty: all) resolved against n shards."""
    spec = (spec or "").strip()
    if not spec:
        return list(range(n))
    out = set()
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    require(max(out) < n, f"ROWPIPE_SHARDS {spec!r} names a shard of no {n}-shard stream")
    return sorted(out)


def merged_values(chart, values=(), sets=(), base=True):
    """values.yaml with the -f files and simple --set a.b=c overrides, as Helm merges them."""
    def merge(dst, src):
        for k, v in (src or {}).items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                merge(dst[k], v)
            else:
                dst[k] = v
    vals = yaml.safe_load(open(chart.values_file("values.yaml")))
    files = ([os.path.join(chart.dir, "ci", "base", "auth-values.yaml")] if base else []) + list(values)
    for f in files:
        merge(vals, yaml.safe_load(open(f)))
    for s in sets:
        path, _, raw = s.partition("=")
        node = vals
        *parents, leaf = path.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        raw = raw.replace("\\,", ",")  # helm's escaped comma
        node[leaf] = yaml.safe_load(raw) if raw else ""
    return vals


def check_shard_table(chart):
    """files/shard-tags.yaml, checked against the rule in services/core/src/stream/shards.rs:
    tag i of N is the first "<i>-<base 36>" whose slot lies in the middle half of the i-th of N
    equal parts of the slots, so the N keys spread over a cluster made with equal slot ranges;
    and each slot is checked to be in the range redis-cli --cluster create gives primary i of a
    cluster of N primaries (it rounds, so the edges of the parts differ)."""
    def base36(n):
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"
        out = ""
        while True:
            out = digits[n % 36] + out
            n //= 36
            if n == 0:
                return out
    table = shard_tags(chart)
    require(sorted(table) == list(range(2, 65)), f"the table has shard counts {sorted(table)[:3]}..., not 2..64")
    for n, tags in table.items():
        require(len(tags) == n, f"{n} shards: {len(tags)} tags")
        for i, tag in enumerate(tags):
            start, end = i * SLOTS // n, (i + 1) * SLOTS // n
            quarter = (end - start) // 4
            lo, hi = start + quarter, end - quarter
            k = 0
            while not lo <= hash_slot(f"{i}-{base36(k)}") < hi:
                k += 1
            want = f"{i}-{base36(k)}"
            require(tag == want, f"{n} shards, shard {i}: tag {tag!r}, the rule gives {want!r} (slot {lo}..{hi - 1})")
            first, last = redis_cli_split(n)[i]
            slot = hash_slot(tag)
            require(first <= slot <= last,
                    f"{n} shards, shard {i}: slot {slot} is not on primary {i} of a {n}-primary cluster ({first}..{last})")
    return ("2..64 shards: every tag is the first whose CRC16 slot falls in the middle half of its shard's part "
            "of the 16,384 slots, and on its own primary of a redis-cli-made cluster of as many primaries")


def redis_cli_split(primaries):
    """The slot range redis-cli --cluster create gives each primary: a float (32-bit) step,
    rounded, as its clusterManagerCommandCreate does."""
    f32 = lambda x: struct.unpack("f", struct.pack("f", x))[0]
    per = f32(SLOTS / primaries)
    first, cursor, out = 0, 0.0, []
    for i in range(primaries):
        last = int(f32(cursor + per - 1) + 0.5)
        if last > SLOTS or i == primaries - 1:
            last = SLOTS - 1
        last = max(last, first)
        out.append((first, last))
        first = last + 1
        cursor = f32(cursor + per)
    return out


def check_keda_wiring(chart, values, sets=()):
    docs = chart.render(values, sets)
    vals = merged_values(chart, values, sets)
    so = one(docs, "ScaledObject")
    target = so["spec"]["scaleTargetRef"]
    require(target.get("kind", "Deployment") == "Deployment", f"scaleTargetRef.kind is {target.get('kind')}")
    dep = one(docs, "Deployment", target["name"])
    require(dep["metadata"]["labels"].get("app.kubernetes.io/component") == "consumer",
            f"scaleTargetRef {target['name']} is not the consumer Deployment")
    require("replicas" not in dep["spec"], "consumer Deployment sets replicas although KEDA scales it")
    container = pod_spec(dep)["containers"][0]
    env = container_env(docs, pod_spec(dep), container)
    stream, group = env.get("ROWPIPE_STREAM"), env.get("ROWPIPE_GROUP")
    require(stream and group, "consumer has no ROWPIPE_STREAM/ROWPIPE_GROUP")
    n = int(env.get("ROWPIPE_STREAM_SHARDS", "1"))
    cluster = env.get("ROWPIPE_REDIS_CLUSTER") == "true"
    keys = shard_keys(chart, stream, n)
    served = served_shards(env.get("ROWPIPE_SHARDS"), n)
    want = {keys[i] for i in served}
    kind = "redis-cluster-streams" if cluster else "redis-streams"
    triggers = so["spec"]["triggers"]
    require(all(t["type"] == kind for t in triggers),
            f"trigger types {sorted({t['type'] for t in triggers})}, want {kind} (ROWPIPE_REDIS_CLUSTER={cluster})")
    for t in triggers:
        md = t["metadata"]
        require(md.get("stream") in want, f"trigger {t.get('name')} stream {md.get('stream')!r} is no shard key served {sorted(want)}")
        require(md.get("consumerGroup") == group, f"trigger {t.get('name')} consumerGroup {md.get('consumerGroup')!r} != ROWPIPE_GROUP {group!r}")
        if cluster:
            seeds = md.get("addresses", "")
            require(seeds == vals["redis"]["address"] and all(re.fullmatch(r"[^:/ ,]+:\d+", a) for a in seeds.split(",")),
                    f"trigger {t.get('name')}: addresses {seeds!r} are not redis.address {vals['redis']['address']!r}")
            require("address" not in md and "databaseIndex" not in md, f"trigger {t.get('name')}: address/databaseIndex on a cluster trigger")
        else:
            require(md.get("address") or md.get("addressFromEnv") or md.get("host"), f"trigger {t.get('name')} has no address")
        ref = t.get("authenticationRef")
        if ref:
            one(docs, "TriggerAuthentication", ref["name"])
        require(bool(ref) == bool(vals["redis"]["password"] or vals["redis"]["existingSecret"]),
                f"trigger {t.get('name')}: authenticationRef {'set' if ref else 'missing'} for a Redis {'without' if ref else 'with'} a password")
    lag = [t for t in triggers if "lagCount" in t["metadata"]]
    pending = [t for t in triggers if "pendingEntriesCount" in t["metadata"]]
    for what, ts in (("lagCount", lag), ("pendingEntriesCount", pending)):
        streams = sorted(t["metadata"]["stream"] for t in ts)
        require(streams == sorted(want), f"{what} triggers watch {streams}, not each shard key served once {sorted(want)}")
        share = max(1, int(vals["keda"][what]) // len(served))
        got = {t["metadata"][what] for t in ts}
        require(got == {str(share)}, f"{what} targets {sorted(got)}: want keda.{what} / {len(served)} shards served = {share}")
    require(all(t["metadata"].get("activationLagCount") == str(vals["keda"]["activationLagCount"]) for t in lag),
            "a lag trigger lacks keda.activationLagCount")
    require(len(lag) + len(pending) == len(triggers), "a trigger is neither a lag nor a pending-entries trigger")
    names = [t.get("name") for t in triggers]
    require(len(set(names)) == len(names), f"trigger names repeat: {names}")
    # the migration creates the same stream, group and shards
    job = find(docs, "Job")
    if job:
        jenv = container_env(docs, pod_spec(job[0]), pod_spec(job[0])["containers"][0])
        got = tuple(jenv.get(k) for k in ("ROWPIPE_STREAM", "ROWPIPE_GROUP", "ROWPIPE_STREAM_SHARDS", "ROWPIPE_REDIS_CLUSTER"))
        require(got == (stream, group, str(n), str(cluster).lower()),
                f"the migration Job sees stream/group/shards/cluster {got}, the consumer {(stream, group, n, cluster)}")
    for ta in find(docs, "TriggerAuthentication"):
        for ref in ta["spec"].get("secretTargetRef", []):
            secret = find(docs, "Secret", ref["name"])
            if secret:
                require(ref["key"] in secret[0].get("data", {}), f"TriggerAuthentication key {ref['key']} not in Secret {ref['name']}")
    detail = f"target {target['name']}, stream {stream!r}, group {group!r}, {kind}"
    if n == 1:
        return detail + ", triggers lag+pending"
    listed = ", ".join(keys[i] for i in served[:4]) + (", ..." if len(served) > 4 else "")
    return detail + f", lag+pending on {len(served)} of {n} shard keys ({listed})"


def check_shard_env(chart, values, sets=()):
    """The shard and cluster settings reach every program: ROWPIPE_STREAM_SHARDS and
    ROWPIPE_REDIS_CLUSTER the upload, consumer and migration alike, ROWPIPE_SHARDS the
    consumer (absent for all shards), the WAIT settings the upload; a chart-managed
    REDIS_URL names redis:// or rediss:// seeds in cluster mode."""
    import base64
    docs = chart.render(values, sets)
    vals = merged_values(chart, values, sets)
    want_common = {"ROWPIPE_STREAM_SHARDS": str(vals["stream"]["shards"]),
                   "ROWPIPE_REDIS_CLUSTER": str(vals["redis"]["cluster"]).lower()}
    seen = []
    for w in find(docs, "Deployment") + find(docs, "Job"):
        spec = pod_spec(w)
        env = container_env(docs, spec, spec["containers"][0])
        component = w["metadata"]["labels"]["app.kubernetes.io/component"]
        want = dict(want_common)
        if component == "upload":
            want["ROWPIPE_REDIS_WAIT_REPLICAS"] = str(vals["upload"]["redisWait"]["replicas"])
            want["ROWPIPE_REDIS_WAIT_TIMEOUT_MS"] = str(vals["upload"]["redisWait"]["timeoutMs"])
        for k, v in want.items():
            require(env.get(k) == v, f"{w['kind']}/{w['metadata']['name']}: {k}={env.get(k)!r}, want {v!r}")
        subset = vals["consumer"]["shards"].strip()
        if component == "consumer":
            require(env.get("ROWPIPE_SHARDS") == (subset or None), f"consumer: ROWPIPE_SHARDS={env.get('ROWPIPE_SHARDS')!r}, want {subset or None!r}")
        else:
            require("ROWPIPE_SHARDS" not in env, f"{component}: ROWPIPE_SHARDS set outside the consumer")
        seen.append(component)
    if vals["redis"]["cluster"] and not vals["redis"]["existingSecret"]:
        secret = one(docs, "Secret", f"{RELEASE}-redis")
        url = base64.b64decode(secret["data"][vals["redis"]["urlKey"]]).decode()
        require(all(u.strip().startswith(("redis://", "rediss://")) for u in url.split(",")),
                "REDIS_URL of a cluster is not comma-separated redis:// or rediss:// seed URLs")
    return (f"{'/'.join(seen)}: shards {want_common['ROWPIPE_STREAM_SHARDS']}, cluster {want_common['ROWPIPE_REDIS_CLUSTER']}, "
            f"ROWPIPE_SHARDS {vals['consumer']['shards'] or '(all)'}, WAIT {vals['upload']['redisWait']['replicas']}/{vals['upload']['redisWait']['timeoutMs']} ms")


def check_network_policy_cluster(chart):
    """With redis.cluster the Redis egress rule opens every client port the seeds use, to the
    redisTo peers (which must admit every node: clients follow MOVED redirects), and no
    cluster bus port (client port + 10000, node to node)."""
    path = chart.values_file("ci/cluster-shards-values.yaml")
    vals = merged_values(chart, [path])
    docs = chart.render([path])
    ports = {int(a.rsplit(":", 1)[1]) for a in vals["redis"]["address"].split(",")}
    require(len(ports) > 1, "the cluster value set should use several client ports")
    for np in find(docs, "NetworkPolicy"):
        name = np["metadata"]["name"]
        egress = np["spec"]["egress"]
        for port in ports:
            allowed = _peers_allowing(egress, port, "to")
            require(allowed and all(a == vals["networkPolicy"]["redisTo"] for a in allowed),
                    f"{name}: Redis cluster port {port} goes to {allowed}, not redisTo")
        opened = {p["port"] for r in egress for p in r.get("ports", [])}
        bus = {p + 10000 for p in ports} & opened
        require(not bus, f"{name}: opens cluster bus ports {sorted(bus)}")
    return f"{len(find(docs, 'NetworkPolicy'))} policies: Redis cluster ports {sorted(ports)} to redisTo, no bus port"


def check_keda_off(chart, values):
    docs = chart.render(values)
    require(not find(docs, "ScaledObject") and not find(docs, "TriggerAuthentication"), "KEDA objects rendered with keda.enabled=false")
    dep = one(docs, "Deployment", f"{RELEASE}-consumer")
    require(isinstance(dep["spec"].get("replicas"), int), "consumer Deployment has no fixed replicas without KEDA")
    return f"no ScaledObject, consumer replicas fixed at {dep['spec']['replicas']}"


# ---------------------------------------------------------------------------------
# migration hook


def hook_info(doc):
    ann = doc["metadata"].get("annotations") or {}
    hooks = {h.strip() for h in ann.get("helm.sh/hook", "").split(",") if h.strip()}
    weight = ann.get("helm.sh/hook-weight")
    policy = {p.strip() for p in ann.get("helm.sh/hook-delete-policy", "").split(",") if p.strip()}
    return hooks, weight, policy


def check_migration_hook(chart, values, sets=()):
    docs = chart.render(values, sets)
    job = one(docs, "Job")
    hooks, weight, policy = hook_info(job)
    require({"pre-install", "pre-upgrade"} <= hooks, f"Job hooks are {sorted(hooks)}")
    require(weight is not None and re.match(r"^-?\d+$", str(weight)), "Job has no integer helm.sh/hook-weight")
    require({"before-hook-creation", "hook-succeeded"} <= policy, f"Job delete policy is {sorted(policy)}")
    spec = pod_spec(job)
    container = spec["containers"][0]
    require(container.get("command", [""])[0] == "/usr/local/bin/rowpipe" and "migrate" in container.get("args", []),
            "the Job does not run `rowpipe migrate`")
    refs = set()
    for c in spec.get("initContainers", []) + spec["containers"]:
        for src in c.get("envFrom", []):
            if "configMapRef" in src:
                refs.add(("ConfigMap", src["configMapRef"]["name"]))
            if "secretRef" in src:
                refs.add(("Secret", src["secretRef"]["name"]))
        for e in c.get("env", []):
            vf = e.get("valueFrom", {})
            if "configMapKeyRef" in vf:
                refs.add(("ConfigMap", vf["configMapKeyRef"]["name"]))
            if "secretKeyRef" in vf:
                refs.add(("Secret", vf["secretKeyRef"]["name"]))
    for v in spec.get("volumes", []):
        if "configMap" in v:
            refs.add(("ConfigMap", v["configMap"]["name"]))
        if "secret" in v:
            refs.add(("Secret", v["secret"]["secretName"]))
    require(refs, "the Job reads no ConfigMap/Secret")
    hooked, external = [], []
    for kind, name in sorted(refs):
        found = find(docs, kind, name)
        if not found:
            external.append(f"{kind}/{name}")  # pre-existing (existingSecret)
            continue
        h, w, _ = hook_info(found[0])
        require({"pre-install", "pre-upgrade"} <= h,
                f"{kind}/{name} is read by the migration Job but is not a pre-install,pre-upgrade hook")
        require(w is not None and int(w) < int(weight),
                f"{kind}/{name} hook weight {w} is not lower than the Job's {weight}")
        hooked.append(f"{kind}/{name}@{w}")
    if external:
        values_text = "".join(open(v).read() for v in values) + " ".join(sets)
        for ref in external:
            require(ref.split("/", 1)[1] in values_text, f"{ref} is neither rendered nor an existingSecret value")
    return f"Job weight {weight}; hooks {', '.join(hooked) or '-'}; pre-existing {', '.join(external) or '-'}"


# ---------------------------------------------------------------------------------
# workload hardening


def check_workloads(chart, values, sets=()):
    docs = chart.render(values, sets)
    workloads = find(docs, "Deployment") + find(docs, "Job")
    require(len(find(docs, "Deployment")) == 2, "expected the upload and consumer Deployments")
    for w in workloads:
        name = f"{w['kind']}/{w['metadata']['name']}"
        spec = pod_spec(w)
        psc = spec.get("securityContext", {})
        require(psc.get("runAsNonRoot") is True, f"{name}: pod runAsNonRoot is not true")
        require(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: seccompProfile is not RuntimeDefault")
        for c in spec["containers"]:
            sc = c.get("securityContext", {})
            require(sc.get("readOnlyRootFilesystem") is True, f"{name}/{c['name']}: root filesystem not read-only")
            require(sc.get("allowPrivilegeEscalation") is False, f"{name}/{c['name']}: allowPrivilegeEscalation not false")
            require("ALL" in sc.get("capabilities", {}).get("drop", []), f"{name}/{c['name']}: capabilities not dropped")
            require(c.get("resources", {}).get("requests"), f"{name}/{c['name']}: no resource requests")
            require(c["image"] and ":" in c["image"], f"{name}/{c['name']}: image without tag")
        if w["kind"] == "Deployment":
            c = spec["containers"][0]
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                require(c.get(probe, {}).get("httpGet", {}).get("path") == path, f"{name}: {probe} is not GET {path}")
            component = w["metadata"]["labels"]["app.kubernetes.io/component"]
            binary = f"/usr/local/bin/rowpipe-{component}"
            require(c.get("command") == [binary], f"{name}: command is not {binary}")
            env = container_env(docs, spec, c)
            for var in ("REDIS_URL", "DATABASE_URL", "ROWPIPE_STREAM", "ROWPIPE_GROUP", "RUST_LOG", "ROWPIPE_LOG_FORMAT"):
                require(var in env, f"{name}: {var} not set")
            for var in ("REDIS_URL", "DATABASE_URL"):
                require(isinstance(env[var], dict) and "secretKeyRef" in env[var], f"{name}: {var} not from a Secret")
            if component == "consumer":
                grace = int(env["ROWPIPE_SHUTDOWN_GRACE_SECS"])
                tgps = spec.get("terminationGracePeriodSeconds", 30)
                require(tgps > grace, f"{name}: terminationGracePeriodSeconds {tgps} <= drain {grace}")
                require(env.get("ROWPIPE_METRICS_LISTEN", "").startswith("0.0.0.0:"), f"{name}: metrics not on 0.0.0.0")
            else:
                require(env.get("ROWPIPE_LISTEN", "").startswith("0.0.0.0:"), f"{name}: ROWPIPE_LISTEN not on 0.0.0.0")
                if env.get("ROWPIPE_AUTH_DISABLED") != "true":
                    path = env.get("ROWPIPE_AUTH_TOKENS_FILE")
                    require(path, f"{name}: auth on but ROWPIPE_AUTH_TOKENS_FILE unset")
                    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
                    vols = {v["name"]: v for v in spec.get("volumes", [])}
                    ok = any(path.startswith(mp.rstrip("/") + "/") and "secret" in vols.get(n, {}) for n, mp in mounts.items())
                    require(ok, f"{name}: {path} is not on a mounted Secret")
    return f"{len(workloads)} workloads hardened, probed and wired"


def check_pdb_spread(chart):
    docs = chart.render()
    for dep in find(docs, "Deployment"):
        labels = dep["spec"]["selector"]["matchLabels"]
        pdbs = [p for p in find(docs, "PodDisruptionBudget") if p["spec"]["selector"]["matchLabels"] == labels]
        require(pdbs, f"no PodDisruptionBudget for {dep['metadata']['name']}")
        tsc = pod_spec(dep).get("topologySpreadConstraints", [])
        require(tsc and all(t["labelSelector"]["matchLabels"] == labels for t in tsc),
                f"{dep['metadata']['name']}: topologySpreadConstraints missing or not matching its pods")
    return "each Deployment has a PodDisruptionBudget and topologySpreadConstraints"


def check_prometheus_rule(chart):
    docs = chart.render([chart.values_file("ci/observability-values.yaml")])
    rule = one(docs, "PrometheusRule")
    alerts = {r.get("alert"): r for g in rule["spec"]["groups"] for r in g["rules"]}
    require(REQUIRED_ALERTS <= set(alerts), f"missing alerts: {sorted(REQUIRED_ALERTS - set(alerts))}")
    exprs = " ".join(str(r["expr"]) for r in alerts.values())
    missing = [m for m in REQUIRED_ALERT_METRICS if m not in exprs]
    require(not missing, f"metrics not used by any alert: {missing}")
    sm = one(docs, "ServiceMonitor")
    ports = {e["port"] for e in sm["spec"]["endpoints"]}
    svc_ports = {p["name"] for s in find(docs, "Service") for p in s["spec"]["ports"]}
    require(ports <= svc_ports, f"ServiceMonitor ports {ports} not on the Services ({svc_ports})")
    one(docs, "Ingress")
    return f"{len(alerts)} alerts; ServiceMonitor ports {sorted(ports)}"


def check_rules_in_sync(root):
    chart_copy = os.path.join(root, "charts/rowpipe/files/rowpipe.rules.yml")
    canonical = os.path.join(root, "observability/alerts/rowpipe.rules.yml")
    require(os.path.exists(chart_copy), "charts/rowpipe/files/rowpipe.rules.yml missing")
    if not os.path.exists(canonical):
        return "observability/alerts/rowpipe.rules.yml not present yet; chart copy used alone"
    a, b = yaml.safe_load(open(chart_copy)), yaml.safe_load(open(canonical))
    require(a == b, "charts/rowpipe/files/rowpipe.rules.yml differs from observability/alerts/rowpipe.rules.yml "
                    "(copy the canonical file into the chart)")
    return "chart copy equals observability/alerts/rowpipe.rules.yml"


def check_network_policy(chart):
    docs = chart.render([chart.values_file("ci/networkpolicy-values.yaml")])
    nps = find(docs, "NetworkPolicy")
    require(len(nps) == 3, f"expected 3 NetworkPolicies, got {len(nps)}")
    pods = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in find(docs, "Deployment") + find(docs, "Job")}
    for np in nps:
        sel = np["spec"]["podSelector"]["matchLabels"]
        matched = [c for c, w in pods.items() if all(w["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items())]
        require(len(matched) == 1, f"NetworkPolicy {np['metadata']['name']} selects {matched}")
        require(set(np["spec"]["policyTypes"]) == {"Ingress", "Egress"}, f"{np['metadata']['name']}: not both directions")
        egress_ports = {p["port"] for r in np["spec"]["egress"] for p in r.get("ports", [])}
        require({53, 6379, 3306} <= egress_ports, f"{np['metadata']['name']}: egress ports {sorted(egress_ports)}")
        require(4317 not in egress_ports and 4318 not in egress_ports, f"{np['metadata']['name']}: OTLP egress without tracing")
    return "3 policies (upload, consumer, migration), each selecting exactly its pods"


# ---------------------------------------------------------------------------------
# names, determinism, value combinations


DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# Kinds whose name must be a DNS-1035 label (63) or becomes a label value (63):
# Services; a Job's name is its pods' job-name label; KEDA labels the HPA it
# creates with scaledobject.keda.sh/name.
NAME_LIMIT_63 = {"Service": DNS1035_LABEL, "Job": DNS1123_LABEL, "ScaledObject": DNS1123_LABEL}


def name_problems(docs):
    out = []
    for d in docs:
        kind, name = d["kind"], d["metadata"]["name"]
        if kind in NAME_LIMIT_63:
            if len(name) > 63 or not NAME_LIMIT_63[kind].match(name):
                out.append(f"{kind}/{name} ({len(name)} characters; at most 63, {NAME_LIMIT_63[kind].pattern})")
        elif len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
            out.append(f"{kind}/{name} is not a DNS subdomain of at most 253 characters")
        labels = dict(d["metadata"].get("labels") or {})
        tmpl = (d.get("spec") or {}).get("template", {}).get("metadata", {})
        labels.update(tmpl.get("labels") or {})
        for k, v in labels.items():
            v = str(v)
            if len(v) > 63 or not LABEL_VALUE.match(v):
                out.append(f"{kind}/{name}: label {k}={v!r} ({len(v)} characters; a label value has at most 63)")
        for c in (tmpl and pod_spec(d).get("containers", [])) or []:
            for port in c.get("ports", []):
                if len(port.get("name", "")) > 15:
                    out.append(f"{kind}/{name}: container port name {port['name']!r} over 15 characters")
    return out


def check_name_lengths(chart, values):
    """Every name and label the chart renders fits its Kubernetes limit for the
    longest release names Helm accepts (and a long fullnameOverride)."""
    problems = []
    longest = 0
    cases = [(rel, []) for rel in LONG_RELEASES] + [(RELEASE, ["fullnameOverride=" + "f" * 70])]
    for rel, sets in cases:
        p = chart.template(values, sets, release=rel)
        require(p.returncode == 0, f"release {rel!r}: helm template failed: {first_error_line(p.stderr)}")
        docs = [d for d in yaml.safe_load_all(p.stdout) if d]
        problems += [f"release {rel} {' '.join(sets)}: {x}" for x in name_problems(docs)]
        longest = max([longest] + [len(d["metadata"]["name"]) for d in docs if d["kind"] in NAME_LIMIT_63])
    require(not problems, "; ".join(problems[:4]))
    return f"{len(cases)} long names: every name and label fits (longest Service/Job/ScaledObject name: {longest})"


def check_name_check_catches_overlong():
    """The name check itself: a 66-character Service name (the old 50 + -consumer-metrics) is caught."""
    svc = {"kind": "Service", "metadata": {"name": "x" * 49 + "-consumer-metrics", "labels": {}}, "spec": {}}
    require(name_problems([svc]), "a 66-character Service name passed the name check")
    return "a 66-character Service name is refused"


def check_render_deterministic(chart, values):
    """Two renders are byte-identical: nothing random (a generated token rotating
    on every `helm template`, as Argo CD and Tilt render) reaches the manifests."""
    a = chart.template(values, ["nameOverride="])
    b = chart.template(values, ["nameOverride=", "commonLabels=null"])
    require(a.returncode == 0 and b.returncode == 0, "helm template failed")
    if a.stdout != b.stdout:
        import difflib
        diff = [line for line in difflib.unified_diff(a.stdout.splitlines(), b.stdout.splitlines(), lineterm="", n=0)
                if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))]
        raise CheckError("two renders differ: " + " | ".join(diff[:4]))
    return "two renders identical"


def check_auth_token_required(chart):
    p = chart.template(base=False)
    require(p.returncode != 0 and "auth.tokens" in p.stderr,
            "the chart rendered without any token source (it would draw a random token on every render)")
    two = [chart.template(sets=["auth.generateToken=true"], base=False) for _ in range(2)]
    require(all(t.returncode == 0 for t in two), "auth.generateToken=true does not render")
    a = chart.render(sets=["auth.tokens={token-a-0123456789abcdef}"])
    b = chart.render(sets=["auth.tokens={token-b-0123456789abcdef}"])
    ann = lambda docs, comp: pod_spec(one(docs, "Deployment", f"{RELEASE}-{comp}")) and \
        one(docs, "Deployment", f"{RELEASE}-{comp}")["spec"]["template"]["metadata"]["annotations"]
    require(ann(a, "consumer") == ann(b, "consumer"), "the consumer pods restart when the API token changes")
    require(ann(a, "upload") != ann(b, "upload"), "the upload pods do not restart when the API token changes")
    return ("no token source fails with a clear message; a token change restarts the upload, not the consumer")


def check_crd_capabilities(chart):
    for sets, needle in ((["keda.enabled=true"], "keda.enabled"),
                         (["metrics.serviceMonitor.enabled=true"], "ServiceMonitor"),
                         (["metrics.prometheusRule.enabled=true"], "PrometheusRule")):
        p = chart.template(sets=sets, api_versions=False)
        require(p.returncode != 0 and needle in p.stderr,
                f"--set {sets[0]} rendered for a cluster that does not serve the CRD: {first_error_line(p.stderr) or 'no error'}")
    return "KEDA, ServiceMonitor and PrometheusRule refused with a clear message where their API is not served"


def _peers_allowing(rules, port, direction):
    """Peer lists of the NetworkPolicy rules that admit `port` (None: any peer)."""
    out = []
    for r in rules:
        ports = r.get("ports")
        if ports is None or any(p.get("port") == port for p in ports):
            out.append(r.get(direction))
    return out


def check_network_policy_combination(chart):
    """NetworkPolicies with tracing and observability on (ci/networkpolicy-tracing-values.yaml):
    each dependency on its own port from its own peers; Prometheus reaches both programs'
    metrics ports (those the ServiceMonitor scrapes); the API port only from the ingress."""
    path = chart.values_file("ci/networkpolicy-tracing-values.yaml")
    vals = yaml.safe_load(open(path))
    np_vals = vals["networkPolicy"]
    docs = chart.render([path])
    redis_port = int(vals["redis"]["address"].rsplit(":", 1)[1])
    db_port = np_vals["databasePort"]
    otlp_port = int(re.search(r":(\d+)$", vals["otel"]["endpoint"]).group(1))
    want = {"Redis": (redis_port, np_vals["redisTo"]), "database": (db_port, np_vals["databaseTo"]),
            "OTLP collector": (otlp_port, np_vals["otlpTo"])}
    sm = one(docs, "ServiceMonitor")
    scraped = {e["port"] for e in sm["spec"]["endpoints"]}
    for np in find(docs, "NetworkPolicy"):
        name = np["metadata"]["name"]
        egress = np["spec"]["egress"]
        for what, (port, peers) in want.items():
            allowed = _peers_allowing(egress, port, "to")
            require(allowed, f"{name}: no egress to the {what} on port {port}")
            require(all(a == peers for a in allowed),
                    f"{name}: egress to the {what} on port {port} goes to {allowed}, not its own peers {peers}")
        component = np["metadata"]["labels"]["app.kubernetes.io/component"]
        if component == "migration":
            require(not np["spec"].get("ingress"), f"{name}: the migration admits ingress")
            continue
        dep = one(docs, "Deployment", f"{RELEASE}-{component}")
        c = pod_spec(dep)["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        ingress = np["spec"]["ingress"]
        for port_name in scraped:
            require(port_name in ports, f"{component}: the ServiceMonitor scrapes port {port_name!r}, which the pod does not have")
            allowed = _peers_allowing(ingress, port_name, "from")
            require(np_vals["metricsFrom"] in allowed, f"{name}: Prometheus (metricsFrom) cannot reach port {port_name!r}")
        for probe in ("livenessProbe", "readinessProbe"):
            pport = c[probe]["httpGet"]["port"]
            require(pport in ports and pport != "http", f"{component}: {probe} on port {pport!r}, not the metrics port")
        if component == "upload":
            api = _peers_allowing(ingress, "http", "from")
            require(api == [np_vals["apiFrom"]], f"{name}: the API port admits {api}, not only apiFrom")
            env = container_env(docs, pod_spec(dep), c)
            require(env.get("ROWPIPE_METRICS_LISTEN", "").endswith(f":{ports['metrics']}"),
                    f"upload: ROWPIPE_METRICS_LISTEN {env.get('ROWPIPE_METRICS_LISTEN')!r} is not the metrics port {ports['metrics']}")
    p = chart.template([path], ["networkPolicy.databasePort=5432"])
    require(p.returncode != 0 and "databasePort" in p.stderr, "a databasePort that is not database.url's port rendered")
    return (f"3 policies: Redis :{redis_port}, database :{db_port}, OTLP :{otlp_port} each to its own peers; "
            f"metrics ports {sorted(scraped)} open to Prometheus; API only from the ingress")


def check_rollout_and_disruption(chart, values):
    docs = chart.render(values)
    dep = one(docs, "Deployment", f"{RELEASE}-upload")
    spec = pod_spec(dep)
    c = spec["containers"][0]
    env = container_env(docs, spec, c)
    grace = int(env.get("ROWPIPE_SHUTDOWN_GRACE_SECS") or 0)
    require(grace > 0, "upload: ROWPIPE_SHUTDOWN_GRACE_SECS is not set from the chart")
    pause = ((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
    require(pause > 0, "upload: no preStop pause (requests routed during the endpoint removal are dropped)")
    require(spec["terminationGracePeriodSeconds"] > pause + grace,
            f"upload: terminationGracePeriodSeconds {spec['terminationGracePeriodSeconds']} <= preStop {pause} + grace {grace}")
    for pdb in find(docs, "PodDisruptionBudget"):
        require(pdb["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow",
                f"PodDisruptionBudget {pdb['metadata']['name']}: unready pods (a database outage) would block node drains")
    hpa = find(docs, "HorizontalPodAutoscaler")
    if hpa:
        require("replicas" not in dep["spec"], "upload Deployment sets replicas although its HPA scales it")
        require(hpa[0]["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"], "the HPA targets another Deployment")
    for ing in find(docs, "Ingress"):
        paths = [p["path"] for r in ing["spec"]["rules"] for p in r["http"]["paths"]]
        require(paths and all(p.startswith("/v1") for p in paths), f"the Ingress routes {paths}: /metrics, /readyz, /openapi.json would be public")
    return (f"upload: preStop {pause}s + grace {grace}s < {spec['terminationGracePeriodSeconds']}s; "
            f"PDBs AlwaysAllow; {'HPA owns replicas; ' if hpa else ''}Ingress paths API-only")


def check_migration_operational(chart):
    docs = chart.render(sets=["migration.serviceAccountName=migrator", "migration.nodeSelector.pool=batch",
                              "migration.tolerations[0].key=dedicated", "migration.tolerations[0].operator=Exists"])
    job = one(docs, "Job")
    spec = pod_spec(job)
    require(spec.get("serviceAccountName") == "migrator", "migration.serviceAccountName is not used")
    require(spec.get("nodeSelector") == {"pool": "batch"} and spec.get("tolerations"), "migration nodeSelector/tolerations not used")
    ann = job["spec"]["template"]["metadata"].get("annotations") or {}
    require(ann.get("sidecar.istio.io/inject") == "false", "the migration pod does not opt out of sidecar injection")
    vals = yaml.safe_load(open(chart.values_file("values.yaml")))["migration"]
    require(job["spec"]["activeDeadlineSeconds"] < vals["helmTimeoutSeconds"], "the Job outlives Helm's timeout")
    p = chart.template(sets=["migration.activeDeadlineSeconds=600"])
    require(p.returncode != 0 and "helmTimeoutSeconds" in p.stderr, "an activeDeadlineSeconds above Helm's timeout rendered")
    return f"Job deadline {job['spec']['activeDeadlineSeconds']}s < Helm timeout {vals['helmTimeoutSeconds']}s; SA, scheduling, sidecar opt-out"


def check_images_and_jobs(chart, root):
    docs = chart.render([chart.values_file("ci/existing-secrets-values.yaml")])
    images = {pod_spec(d)["containers"][0]["image"] for d in find(docs, "Deployment") + find(docs, "Job")}
    require(all(i.startswith("mirror.example.com/data/") for i in images), f"global.imageRegistry ignored: {sorted(images)}")
    require(any("@sha256:" in i for i in images), f"image.digest ignored: {sorted(images)}")
    docs = chart.render([chart.values_file("ci/observability-values.yaml")])
    sm = one(docs, "ServiceMonitor")
    job_label = sm["spec"].get("jobLabel")
    require(job_label, "the ServiceMonitor sets no jobLabel: job would be the Service name, which depends on the release")
    jobs = {s["metadata"]["labels"].get(job_label) for s in find(docs, "Service") if s["metadata"]["labels"].get("rowpipe.io/metrics")}
    require(jobs == {"rowpipe-upload", "rowpipe-consumer"}, f"scrape jobs {jobs}")
    runbook = open(os.path.join(root, "docs", "runbook.md")).read()
    named = set(re.findall(r'job="([^"]+)"', runbook))
    require(named and named <= jobs, f"docs/runbook.md names jobs {sorted(named - jobs)} that no ServiceMonitor job is")
    rule = one(docs, "PrometheusRule")
    urls = [r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"] if "runbook_url" in r.get("annotations", {})]
    require(urls and all(re.match(r"^https?://", u) for u in urls), f"relative runbook_url in the PrometheusRule: {urls[:2]}")
    return f"registry + digest used; jobs {sorted(jobs)} as the runbook names them; {len(urls)} absolute runbook URLs"


# ---------------------------------------------------------------------------------
# k8s/ dependencies


def check_k8s_deps(root):
    kubectl = os.environ.get("KUBECTL") or shutil.which("kubectl")
    require(kubectl, "kubectl not found")
    p = run([kubectl, "kustomize", os.path.join(root, "k8s")])
    require(p.returncode == 0, f"kubectl kustomize k8s: {first_error_line(p.stderr)}")
    docs = [d for d in yaml.safe_load_all(p.stdout) if d]
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for want in [("StatefulSet", "redis"), ("StatefulSet", "postgres"), ("Deployment", "jaeger"),
                 ("Deployment", "otel-collector"), ("Service", "redis"), ("Service", "postgres"),
                 ("Service", "jaeger"), ("Service", "otel-collector"), ("ConfigMap", "otel-collector")]:
        require(want in names, f"k8s/ lacks {want[0]}/{want[1]}")
    redis = one(docs, "StatefulSet", "redis")
    args = " ".join(pod_spec(redis)["containers"][0].get("args", []))
    require("--appendonly yes" in args and "--appendfsync everysec" in args, "redis lacks AOF (appendonly yes, appendfsync everysec)")
    jaeger_ports = {p["port"] for p in one(docs, "Service", "jaeger")["spec"]["ports"]}
    require({4317, 4318, 16686} <= jaeger_ports, f"jaeger Service ports {jaeger_ports}")
    cfg = yaml.safe_load(one(docs, "ConfigMap", "otel-collector")["data"]["config.yaml"])
    traces = cfg["service"]["pipelines"]["traces"]
    require("otlp" in traces["receivers"] and "batch" in traces["processors"] and "otlp/jaeger" in traces["exporters"],
            "collector pipeline is not otlp -> batch -> otlp/jaeger")
    require(cfg["exporters"]["otlp/jaeger"]["endpoint"].startswith("jaeger:"), "otlp/jaeger does not point at the jaeger Service")
    detail = kubernetes_validate(docs, "k8s/")
    return f"kustomize build ok; Redis AOF; collector otlp->batch->otlp/jaeger; {detail}"


def check_k8s_dev_redis_cluster(root):
    """k8s/dev/redis-cluster.yaml (tilt up -- --redis-cluster): valid for Kubernetes, 6 nodes
    with cluster mode and AOF behind a headless Service that resolves before readiness,
    and a create Job for as many nodes with one replica per primary whose script parses."""
    path = os.path.join(root, "k8s", "dev", "redis-cluster.yaml")
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    sts = one(docs, "StatefulSet", "redis-cluster")
    svc = one(docs, "Service", sts["spec"]["serviceName"])
    require(svc["spec"].get("clusterIP") == "None" and svc["spec"].get("publishNotReadyAddresses") is True,
            "the nodes' Service is not headless with publishNotReadyAddresses (nodes must meet before they are ready)")
    require(svc["spec"]["selector"].items() <= pod_template_labels(sts).items(), "the Service does not select the nodes")
    nodes = sts["spec"]["replicas"]
    require(nodes == 6, f"{nodes} nodes, not 6 (3 primaries + 3 replicas)")
    args = " ".join(pod_spec(sts)["containers"][0].get("args", []))
    for want in ("--cluster-enabled yes", "--appendonly yes", "--cluster-config-file /data/nodes.conf"):
        require(want in args, f"redis-server lacks {want}")
    job = one(docs, "Job", "redis-cluster-create")
    c = pod_spec(job)["containers"][0]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    require(env.get("NODES") == str(nodes), f"the create Job joins {env.get('NODES')} nodes, the StatefulSet runs {nodes}")
    require(env.get("REPLICAS_PER_PRIMARY") == "1", "the create Job does not make one replica per primary")
    script = c["command"][-1]
    for want in ("redis-cli --cluster create", "--cluster-replicas", "--cluster-yes", f"{sts['metadata']['name']}-$i.{svc['metadata']['name']}"):
        require(want in script, f"the create Job's script lacks {want!r}")
    p = run(["sh", "-n", "-c", script])
    require(p.returncode == 0, f"the create Job's script does not parse: {p.stderr.strip()[:200]}")
    detail = kubernetes_validate(docs, "k8s/dev/redis-cluster.yaml")
    return f"{nodes} nodes (cluster mode, AOF), headless Service, create Job with --cluster-replicas 1; {detail}"


def pod_template_labels(workload):
    return workload["spec"]["template"]["metadata"].get("labels") or {}


# ---------------------------------------------------------------------------------
# Tiltfile


def check_tiltfile(root, chart, tilt_args=None):
    """The Tiltfile with stubbed Tilt builtins; tilt_args is what config.parse() returns (`tilt up -- --keda`)."""
    import starlark as sl

    path = os.path.join(root, "Tiltfile")
    src = open(path).read()
    try:
        ast = sl.parse("Tiltfile", src, sl.Dialect.extended())
    except Exception as e:
        raise CheckError(f"Starlark parse error: {e}")

    calls = []
    files = []  # (path, what)
    helm_calls = []
    yaml_files = []  # k8s_yaml('path.yaml')

    def listify(v):
        if v is None:
            return []
        return [v] if isinstance(v, str) else list(v)

    def rec(name, fn=None):
        def f(*a, **k):
            calls.append((name, a, k))
            return fn(*a, **k) if fn else None
        return f

    def local_resource(name, cmd="", deps=None, **k):
        for d in listify(deps):
            files.append((d, f"local_resource({name!r}) deps"))
        for tok in re.findall(r"@([\w./-]+)", cmd if isinstance(cmd, str) else " ".join(cmd)):
            files.append((tok, f"local_resource({name!r}) cmd"))
        return None

    def docker_build(ref, context, dockerfile="Dockerfile", **k):
        files.append((context, f"docker_build({ref!r}) context"))
        files.append((dockerfile, f"docker_build({ref!r}) dockerfile"))

    def kustomize(p, **k):
        files.append((p, "kustomize"))
        return "kustomize:" + p

    def helm(p, name="", namespace="", values=None, set=None, **k):
        files.append((p, "helm chart"))
        for v in listify(values):
            files.append((v, "helm values"))
        helm_calls.append((p, listify(values), listify(set)))
        return "helm:" + p

    def k8s_yaml(y, **k):
        if isinstance(y, str) and not y.startswith(("kustomize:", "helm:")):
            files.append((y, "k8s_yaml"))
            yaml_files.append(y)

    def watch_file(p):
        files.append((p, "watch_file"))

    def read_file(p, *a):
        files.append((p, "read_file"))
        return ""

    def local(cmd, **k):
        return ""

    m = sl.Module()
    stubs = {
        "local_resource": rec("local_resource", local_resource),
        "docker_build": rec("docker_build", docker_build),
        "k8s_yaml": rec("k8s_yaml", k8s_yaml),
        "kustomize": rec("kustomize", kustomize),
        "helm": rec("helm", helm),
        "k8s_resource": rec("k8s_resource"),
        "watch_file": rec("watch_file", watch_file),
        "read_file": rec("read_file", read_file),
        "local": rec("local", local),
        "update_settings": rec("update_settings"),
        "allow_k8s_contexts": rec("allow_k8s_contexts"),
        "_config_define_bool": rec("config.define_bool"),
        "_config_define_string": rec("config.define_string"),
        "_config_parse": rec("config.parse", lambda: dict(tilt_args or {})),
    }
    for n, f in stubs.items():
        m.add_callable(n, f)
    m["TRIGGER_MODE_MANUAL"] = 1
    m["TRIGGER_MODE_AUTO"] = 0
    globals_ = sl.Globals.extended_by([sl.LibraryExtension.StructType])
    prelude = sl.parse("prelude", "config = struct(define_bool=_config_define_bool, "
                                  "define_string=_config_define_string, parse=_config_parse)\n",
                       sl.Dialect.extended())
    sl.eval(m, prelude, globals_)
    try:
        sl.eval(m, ast, globals_)
    except Exception as e:
        raise CheckError(f"evaluation with stubbed Tilt builtins failed (unknown builtin?): {str(e)[:300]}")

    missing = []
    generated = []
    for p, what in files:
        rel = p
        if rel.startswith(".rowpipe/"):
            generated.append(rel)  # created by the Tiltfile itself (local('mkdir -p ...'))
            continue
        if not os.path.exists(os.path.join(root, rel)):
            missing.append(f"{rel} ({what})")
    require(not missing, "missing files: " + ", ".join(missing))

    # Tilt resource names must be workloads of the rendered YAML or local resources.
    kubectl = os.environ.get("KUBECTL") or shutil.which("kubectl")
    workloads = set()
    images = set()
    p = run([kubectl, "kustomize", os.path.join(root, "k8s")])
    require(p.returncode == 0, "kustomize k8s failed")
    dep_docs = [d for d in yaml.safe_load_all(p.stdout) if d]
    for f in yaml_files:
        dep_docs += [d for d in yaml.safe_load_all(open(os.path.join(root, f))) if d]
    require(helm_calls, "the Tiltfile deploys no Helm chart")
    for chart_path, values, sets in helm_calls:
        # Tilt's helm() runs helm template without --api-versions.
        docs = chart.render([os.path.join(root, v) for v in values], sets, base=False, api_versions=False)
        if (tilt_args or {}).get("keda"):
            require(find(docs, "ScaledObject"), "tilt up -- --keda renders no ScaledObject")
        vals = merged_values(chart, [os.path.join(root, v) for v in values], sets, base=False)
        if (tilt_args or {}).get("redis-cluster"):
            require(vals["redis"]["cluster"] is True and vals["stream"]["shards"] == 3,
                    "tilt up -- --redis-cluster does not render redis.cluster=true, stream.shards=3")
        redis_hosts = [a.rsplit(":", 1)[0] for a in vals["redis"]["address"].split(",")]
        dep_docs += docs
        for d in docs:
            if d["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
                for c in pod_spec(d)["containers"]:
                    images.add(c["image"].split(":")[0])
    for d in dep_docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            workloads.add(d["metadata"]["name"])
    # Each Redis host the chart is given is a Service, or a pod <statefulset>-<i>.<service>
    # of a StatefulSet with that many replicas behind that (headless) Service, of the YAML
    # the Tiltfile applies.
    services = {d["metadata"]["name"]: d for d in dep_docs if d["kind"] == "Service"}
    sets_by_pod = {}
    for d in dep_docs:
        if d["kind"] == "StatefulSet":
            for i in range(d["spec"]["replicas"]):
                sets_by_pod[f"{d['metadata']['name']}-{i}"] = d
    for host in redis_hosts:
        name, _, svc = host.partition(".")
        if not svc:
            require(name in services, f"Redis host {host!r} is no Service the Tiltfile applies")
            continue
        sts = sets_by_pod.get(name)
        require(sts and sts["spec"].get("serviceName") == svc and services.get(svc, {}).get("spec", {}).get("clusterIP") == "None",
                f"Redis host {host!r} is no pod of a StatefulSet behind the headless Service {svc!r}")
    local_names = {a[0] for n, a, k in calls if n == "local_resource"}
    known = workloads | local_names
    forwards = []
    for n, a, k in calls:
        if n == "k8s_resource":
            res = a[0] if a else k.get("workload")
            require(res in workloads, f"k8s_resource({res!r}) matches no rendered workload ({sorted(workloads)})")
            forwards += k.get("port_forwards", [])
        if n in ("k8s_resource", "local_resource"):
            for dep in k.get("resource_deps", []):
                require(dep in known, f"resource_deps {dep!r} is no Tilt resource")
    deps = {k8s_res: k.get("resource_deps", []) for n, a, k in calls if n == "k8s_resource" for k8s_res in [a[0] if a else k.get("workload")]}
    if (tilt_args or {}).get("redis-cluster"):
        require("redis-cluster-create" in deps.get("rowpipe-migrate", []),
                "with --redis-cluster the migration does not wait for the cluster-create Job")
    ports = {str(f).split(":")[0] for f in forwards}
    require({"8080", "16686"} <= ports, f"port_forwards {sorted(ports)} lack 8080 or 16686")
    built = {a[0] for n, a, k in calls if n == "docker_build"}
    require(images and images <= built, f"chart images {sorted(images)} are not all built by docker_build {sorted(built)}")
    buttons = [k for n, a, k in calls if n == "local_resource" and k.get("trigger_mode") == 1 and "curl" in str(k.get("cmd"))]
    require(buttons, "no manual upload button (local_resource with TRIGGER_MODE_MANUAL running curl)")
    return (f"parses as Starlark; {len(files)} file references exist ({len(generated)} generated under .rowpipe/); "
            f"{len([c for c in calls if c[0] == 'k8s_resource'])} k8s_resource names match workloads")


# ---------------------------------------------------------------------------------
# Dockerfiles / compose


def check_hadolint(root, name):
    hadolint = os.environ.get("HADOLINT") or shutil.which("hadolint")
    require(hadolint and os.path.exists(hadolint), "hadolint not found")
    p = run([hadolint, "--no-color", os.path.join(root, name)])
    require(p.returncode == 0, (p.stdout + p.stderr).strip().replace("\n", " | ")[:400])
    return "hadolint clean"


def dockerfile_stages(text):
    return {m.group(2): m.group(1) for m in re.finditer(r"(?im)^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text) if m.group(2)}


def check_dockerfile(root):
    text = open(os.path.join(root, "Dockerfile")).read()
    stages = dockerfile_stages(text)
    for t in ("builder", "upload", "consumer", "cli"):
        require(t in stages, f"Dockerfile has no stage {t!r}")
    require(re.search(r"(?m)^ARG RUST_IMAGE=rust:1-bookworm$", text), "builder is not rust:1-bookworm")
    require(not re.search(r"(?im)^HEALTHCHECK", text), "Dockerfile has a HEALTHCHECK")
    for target, binary in (("upload", "rowpipe-upload"), ("consumer", "rowpipe-consumer"), ("cli", "rowpipe")):
        block = text.split(f" AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
        require(f"/usr/local/bin/{binary}" in block, f"target {target} does not install /usr/local/bin/{binary}")
        require(stages[target] == "runtime", f"target {target} is not based on the runtime stage")
    runtime = text.split(" AS runtime\n", 1)[1].split("\nFROM ", 1)[0]
    require(re.search(r"(?m)^USER 65532", runtime), "runtime stage does not switch to a non-root user")
    require("--mount=type=cache" in text and "skeleton" in text, "no dependency caching (skeleton stage / cache mounts)")
    ignore = open(os.path.join(root, ".dockerignore")).read().split()
    require("*" in ignore and "**/target/" in ignore, ".dockerignore does not exclude everything but the sources")
    return "stages " + ", ".join(sorted(stages)) + "; non-root runtime; no HEALTHCHECK"


def check_compose(root):
    doc = yaml.safe_load(open(os.path.join(root, "docker-compose.yml")))
    services = doc["services"]
    for s in ("redis", "postgres", "jaeger", "migrate", "upload"):
        require(s in services, f"docker-compose.yml lacks {s}")
    consumers = [n for n, s in services.items() if s.get("build", {}).get("target") == "consumer"]
    require(len(consumers) == 3, f"expected three consumers, found {consumers}")
    stages = dockerfile_stages(open(os.path.join(root, "Dockerfile")).read())
    for n, s in services.items():
        if "build" in s:
            require(s["build"]["target"] in stages, f"{n}: target {s['build']['target']} not in the Dockerfile")
    cmd = " ".join(services["redis"]["command"])
    require("--appendonly yes" in cmd and "--appendfsync everysec" in cmd, "redis lacks AOF")
    require(services["migrate"]["build"]["target"] == "cli" and services["migrate"]["command"] == ["migrate"], "migrate is not `rowpipe migrate`")
    for n in ["upload"] + consumers:
        dep = services[n].get("depends_on", {}).get("migrate", {})
        require(dep.get("condition") == "service_completed_successfully", f"{n} does not wait for the migration")
    return f"{len(services)} services, 3 consumers, migrate runs first"


# ---------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    args = ap.parse_args()
    root = os.path.abspath(args.root)
    os.chdir(root)

    r = Runner()
    chart = Chart(root)
    v = chart.values_file
    helm_version = run([chart.helm, "version", "--short"]).stdout.strip()
    print(f"chart checks with {chart.helm} ({helm_version}), Kubernetes schemas {K8S_VERSION}", flush=True)

    ci_sets = sorted(glob.glob(v("ci/*-values.yaml")))
    require(len(ci_sets) >= 3, "need at least 3 ci/*-values.yaml")
    value_sets = [("default", [])] + [(os.path.relpath(f, chart.dir), [f]) for f in ci_sets] + \
                 [("values-dev.yaml", [v("values-dev.yaml")]),
                  ("values-dev.yaml + values-dev-redis-cluster.yaml", [v("values-dev.yaml"), v("values-dev-redis-cluster.yaml")])]

    r.check("values.yaml: every key documented", check_values_documented, chart)
    r.check("values.yaml <-> values.schema.json keys", check_values_match_schema, chart)
    r.check("values.schema.json: additionalProperties false everywhere", check_schema_strict, chart)
    r.check("values.schema.json: rejects bad values", check_schema_rejects, chart)

    crds = None
    try:
        crds = CrdValidator(os.path.join(chart.dir, "ci", "crds"))
    except Exception as e:
        r.failed += 1
        print(f"FAIL KEDA CRD schemas load: {e}")
    if crds:
        r.check("KEDA validator rejects misspelled fields", check_keda_validator_strict, chart, crds)
    r.check("kubernetes-validate --strict rejects misspelled fields", check_kubernetes_validate_is_strict, chart)

    for label, values in value_sets:
        r.check(f"[{label}] helm lint --strict", check_lint, chart, values)
        if not r.check(f"[{label}] helm template", check_template, chart, values):
            continue
        r.check(f"[{label}] kubernetes-validate --strict", check_kubernetes_validate, chart, values)
        r.check(f"[{label}] workloads: security, probes, env", check_workloads, chart, values)
        r.check(f"[{label}] shard and cluster env", check_shard_env, chart, values)
        docs = chart.render(values)
        if find(docs, "ScaledObject"):
            if crds:
                r.check(f"[{label}] KEDA objects vs CRD schemas", check_keda_crds, chart, crds, values)
            r.check(f"[{label}] ScaledObject wiring", check_keda_wiring, chart, values)
        else:
            r.check(f"[{label}] consumer without KEDA", check_keda_off, chart, values)
        if find(docs, "Job"):
            r.check(f"[{label}] migration hook", check_migration_hook, chart, values)
        r.check(f"[{label}] names fit for 53-character releases", check_name_lengths, chart, values)
        r.check(f"[{label}] renders are deterministic", check_render_deterministic, chart, values)
        r.check(f"[{label}] rollout and disruption", check_rollout_and_disruption, chart, values)

    r.check("files/shard-tags.yaml: tags follow the slot rule", check_shard_table, chart)
    cluster_subset = ([v("ci/cluster-shards-values.yaml")], ["consumer.shards=0\\,2", "stream.name=invoices"])
    r.check("[cluster, --set consumer.shards=0,2] ScaledObject wiring", check_keda_wiring, chart, *cluster_subset)
    r.check("[cluster, --set consumer.shards=0,2] shard and cluster env", check_shard_env, chart, *cluster_subset)
    if crds:
        r.check("[cluster, --set consumer.shards=0,2] KEDA objects vs CRD schemas", check_keda_crds, chart, crds, *cluster_subset)
    many = ([], ["keda.enabled=true", "stream.shards=64", "redis.password=pw"])
    r.check("[--set stream.shards=64] ScaledObject wiring", check_keda_wiring, chart, *many)
    if crds:
        r.check("[--set stream.shards=64] KEDA objects vs CRD schemas", check_keda_crds, chart, crds, *many)
    r.check("NetworkPolicies with a Redis Cluster", check_network_policy_cluster, chart)
    custom = ["keda.enabled=true", "stream.name=invoices:rows", "stream.group=invoice-writers"]
    r.check("[--set stream.name/group] ScaledObject wiring", check_keda_wiring, chart, [], custom)
    if crds:
        r.check("[--set stream.name/group] KEDA objects vs CRD schemas", check_keda_crds, chart, crds, [], custom)
    r.check("[--set migration.databaseUrl] migration hook", check_migration_hook, chart, [],
            ["migration.databaseUrl=postgres://owner:pw@db:5432/rowpipe"])
    r.check("[--set database.existingSecret] migration hook", check_migration_hook, chart, [],
            ["database.existingSecret=pre-existing-db", "database.url="])
    r.check("PodDisruptionBudgets + topologySpreadConstraints", check_pdb_spread, chart)
    r.check("PrometheusRule alerts + ServiceMonitor + Ingress", check_prometheus_rule, chart)
    r.check("alert rules copy in sync", check_rules_in_sync, root)
    r.check("NetworkPolicies", check_network_policy, chart)
    r.check("NetworkPolicies with tracing and observability on", check_network_policy_combination, chart)
    r.check("name check refuses a 66-character Service name", check_name_check_catches_overlong)
    r.check("API token: never random at render time", check_auth_token_required, chart)
    r.check("CRD objects need their API served", check_crd_capabilities, chart)
    r.check("migration hook: deadline, scheduling, sidecars", check_migration_operational, chart)
    r.check("images, scrape jobs, runbook URLs", check_images_and_jobs, chart, root)
    r.check("k8s/ dependencies (kustomize + kubernetes-validate)", check_k8s_deps, root)
    r.check("Tiltfile", check_tiltfile, root, chart)
    r.check("Tiltfile (tilt up -- --keda)", check_tiltfile, root, chart, {"keda": True})
    r.check("Tiltfile (tilt up -- --redis-cluster)", check_tiltfile, root, chart, {"redis-cluster": True})
    r.check("Tiltfile (tilt up -- --redis-cluster --keda)", check_tiltfile, root, chart, {"redis-cluster": True, "keda": True})
    r.check("k8s/dev/redis-cluster.yaml (Tilt's Redis Cluster)", check_k8s_dev_redis_cluster, root)
    r.check("Dockerfile structure", check_dockerfile, root)
    r.check("hadolint Dockerfile", check_hadolint, root, "Dockerfile")
    r.check("hadolint Dockerfile.tilt", check_hadolint, root, "Dockerfile.tilt")
    r.check("docker-compose.yml", check_compose, root)

    print(f"chart checks: {r.passed} passed, {r.failed} failed", flush=True)
    return 1 if r.failed else 0


if __name__ == "__main__":
    sys.exit(main())
