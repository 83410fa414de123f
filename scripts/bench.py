#!/usr/bin/env python3
"""rowpipe benchmark: rowpipe end to end against the database's own bulk path,
measured side by side in one run on one machine.

Only the Python standard library is used; the database reference runs through
the `psql` / `mariadb` clients (or Python's sqlite3). Figures are printed as one
table; ratios, not absolute numbers, are what to compare across machines.
"""
import argparse
import atexit
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VALID = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


# ---------------------------------------------------------------- Redis (RESP)
class Redis:
    """The few Redis commands the benchmark needs, over a raw socket."""

    def __init__(self, url):
        m = re.match(r"redis://(?:[^@]*@)?([^:/]+)(?::(\d+))?", url)
        if not m:
            sys.exit(f"bench: unsupported REDIS_URL {url}")
        self.sock = socket.create_connection((m.group(1), int(m.group(2) or 6379)))
        self.f = self.sock.makefile("rb")

    def cmd(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        return self._read()

    def _read(self):
        line = self.f.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)[:-2]
            return data.decode(errors="replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise RuntimeError(f"bad reply {line!r}")

    def used_memory(self):
        info = self.cmd("INFO", "memory")
        return int(re.search(r"used_memory:(\d+)", info).group(1))


class MemoryPoller(threading.Thread):
    """Peak `used_memory` of the Redis the programs use: summed over the
    primaries of a cluster (a replica holds a copy, not more backlog)."""

    def __init__(self, target):
        super().__init__(daemon=True)
        self.rs = [Redis(u) for u in as_target(target).primaries()]
        self.base = self.used_memory()
        self.peak = self.base
        self.stop = threading.Event()

    def used_memory(self):
        return sum(r.used_memory() for r in self.rs)

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.used_memory())
            time.sleep(0.05)


def command_stats(target):
    """{command: (calls, µs)} from INFO commandstats, summed over the
    primaries (counters since the server started: take differences)."""
    out = {}
    for url in as_target(target).primaries():
        for m in re.finditer(r"^cmdstat_([^:]+):calls=(\d+),usec=(\d+)", Redis(url).cmd("INFO", "commandstats"), re.M):
            calls, usec = out.get(m.group(1), (0, 0))
            out[m.group(1)] = (calls + int(m.group(2)), usec + int(m.group(3)))
    return out


def command_stats_spent(before, after):
    """{command: (calls, µs)} between two `command_stats`, commands called since."""
    spent = {}
    for cmd, (calls, usec) in after.items():
        calls0, usec0 = before.get(cmd, (0, 0))
        if calls > calls0:
            spent[cmd] = (calls - calls0, usec - usec0)
    return spent


# ---------------------------------------------------------------- CPU by process
TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid, children=False):
    """CPU seconds (user + system) of a live process, from /proc/<pid>/stat;
    with `children`, also of the children it has reaped. None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


# The server processes of each database kind: only the one under test is
# counted, not another server idling on the same machine.
SERVER_PROCESSES = {"postgres": ("postgres",), "mysql": ("mariadbd", "mysqld"), "sqlite": ()}


def db_server_cpu(kind):
    """CPU seconds of the local server of database `kind`, or None when none
    runs here (SQLite has none): its live processes plus what a parent (the
    postmaster) reaped from children that ended (cutime/cstime), so
    PostgreSQL backends whose connection closed still count."""
    names = SERVER_PROCESSES[kind]
    procs = {}
    if not names:
        return None
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                data = f.read()
        except OSError:
            continue
        name = data[data.find("(") + 1:data.rfind(")")]
        if name.startswith(names):
            procs[int(d)] = int(data.rsplit(")", 1)[1].split()[1])
    if not procs:
        return None
    total = 0.0
    for pid, ppid in procs.items():
        secs = proc_cpu(pid, children=ppid not in procs)
        total += secs or 0.0
    return total


def machine_cpu():
    """(busy, idle) CPU seconds of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return (sum(v[:8]) - idle) / TICK, idle / TICK


def cpu_now(kind, pids=None):
    """A snapshot for `cpu_spent`: the server of database `kind`, this
    driver's clients, the machine, and each of `pids` ({role: [pid, …]})."""
    busy, idle = machine_cpu()
    snap = {"database server": db_server_cpu(kind), "clients (psql, mariadb)": client_cpu(), "busy": busy, "idle": idle}
    for role, ps in (pids or {}).items():
        secs = [proc_cpu(pid) for pid in ps]
        snap[role] = None if None in secs else sum(secs)
    return snap


def cpu_spent(before, after):
    """{role: CPU seconds between two snapshots}, leaving out what is unknown."""
    return {k: after[k] - before[k] for k in after
            if k in before and after[k] is not None and before[k] is not None}


def client_cpu():
    """CPU seconds of this driver's waited-for children (psql, mariadb)."""
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------- keys, slots, shards
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from redis_slot import SLOTS, key_slot  # noqa: E402


def shard_keys(bins, env):
    """The stream's shard keys as the programs name them: asked of the real
    `rowpipe shards` (the rule lives once, in services/core/src/stream/shards.rs)."""
    out = subprocess.run([os.path.join(bins, "rowpipe"), "shards"], env=env, check=True,
                         capture_output=True, text=True).stdout
    return [line.split("\t")[1] for line in out.splitlines() if line.strip()]


def glob_escape(text):
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


# ---------------------------------------------------------------- the Redis the programs use
def host_port(url):
    m = re.match(r"rediss?://(?:[^@]*@)?([^:/]+)(?::(\d+))?", url)
    return f"{m.group(1)}:{m.group(2) or 6379}" if m else url


def as_target(target):
    """A URL (the shared Redis, as bench_wide_uploads.py passes it) or a target."""
    return SingleRedis(target) if isinstance(target, str) else target


class SingleRedis:
    """One Redis server (`--redis`), perhaps shared with other clients: the
    bench only ever deletes keys of its own there, never flushes it."""

    cluster = False

    def __init__(self, url):
        self.url = url

    def seeds(self):
        return self.url

    def primaries(self):
        return [self.url]

    def conn_for(self, key):
        return Redis(self.url)

    def cpu(self):
        """{node: CPU seconds (user + system)} from INFO cpu, which the server
        takes from getrusage: /proc of a server that may not be local."""
        info = Redis(self.url).cmd("INFO", "cpu")
        secs = sum(float(re.search(rf"^{k}:([\d.]+)", info, re.M).group(1)) for k in ("used_cpu_user", "used_cpu_sys"))
        return {host_port(self.url): secs}

    def cpu_source(self):
        return ("INFO cpu of the one Redis; a shared server's figure counts its other clients' work too")

    def roles(self):
        return {host_port(self.url): ""}

    def clean(self, prefix):
        """Delete the keys under `prefix` (a run's stream, its shards and dead
        letters), SCAN by SCAN: nothing of anyone else's."""
        r = Redis(self.url)
        cursor = "0"
        while True:
            cursor, keys = r.cmd("SCAN", cursor, "MATCH", glob_escape(prefix) + "*", "COUNT", 1000)
            for k in keys:
                r.cmd("DEL", k)
            if cursor == "0":
                return


class OwnCluster:
    """A Redis Cluster of the bench's own: `primaries` primaries with
    `replicas` replicas each, on free loopback ports, each node in its own
    directory under one temporary one (AOF everysec, like
    services/testkit/src/faults/redis_cluster.rs). Stopped, and its
    directory removed, when the bench exits."""

    cluster = True

    def __init__(self, primaries=3, replicas=1, node_timeout_ms=2000):
        for b in ("redis-server", "redis-cli"):
            if not shutil.which(b):
                sys.exit(f"bench: --redis-cluster needs {b}, which is not installed (apt-get install redis-server)")
        self.replicas = replicas
        self.dir = tempfile.mkdtemp(prefix="rowpipe-bench-cluster-")
        self.procs = {}
        atexit.register(self.stop)
        self.ports = free_cluster_ports(primaries * (1 + replicas))
        for port in self.ports:
            d = os.path.join(self.dir, str(port))
            os.makedirs(d)
            self.procs[port] = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-config-file", os.path.join(d, "nodes.conf"),
                 "--cluster-node-timeout", str(node_timeout_ms),
                 "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                 # Not the default 5 s wait for more replicas before a full sync.
                 "--repl-diskless-sync-delay", "0",
                 "--dir", d, "--logfile", os.path.join(d, "redis.log")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for port in self.ports:
            wait_port(port)
        out = subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                              "--cluster-replicas", str(replicas), "--cluster-yes"],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            sys.exit(f"bench: redis-cli --cluster create failed:\n{out.stdout}{out.stderr}")
        self.wait_ready(60)
        # [(first slot, last slot, primary port)]: no failover in a bench.
        self.slot_map = [(int(r[0]), int(r[1]), int(r[2][1])) for r in Redis(self.url(self.ports[0])).cmd("CLUSTER", "SLOTS")]

    @staticmethod
    def url(port):
        return f"redis://127.0.0.1:{port}"

    def not_ready(self):
        """What keeps the cluster from being ready, one entry per node."""
        why = []
        for port in self.ports:
            try:
                r = Redis(self.url(port))
                info = r.cmd("CLUSTER", "INFO")
                if "cluster_state:ok" not in info or f"cluster_slots_assigned:{SLOTS}" not in info:
                    why.append(f"{port}: {' '.join(l for l in info.split() if l.startswith(('cluster_state', 'cluster_slots_assigned')))}")
                    continue
                repl = r.cmd("INFO", "replication")
                if "role:master" in repl:
                    online = len(re.findall(r"^slave\d+:.*state=online", repl, re.M))
                    if online < self.replicas:
                        why.append(f"{port}: primary with {online} of {self.replicas} replicas online")
                elif "master_link_status:up" not in repl:
                    why.append(f"{port}: replica whose link is down")
            except (OSError, RuntimeError) as e:
                why.append(f"{port}: {e}")
        return why

    def wait_ready(self, timeout):
        end = time.time() + timeout
        while True:
            why = self.not_ready()
            if not why:
                return
            if time.time() > end:
                sys.exit(f"bench: the Redis Cluster under {self.dir} was not ready in {timeout} s: {'; '.join(why)}")
            time.sleep(0.1)

    def seeds(self):
        return ",".join(self.url(p) for p in self.ports)

    def roles(self):
        out = {}
        for port in self.ports:
            repl = Redis(self.url(port)).cmd("INFO", "replication")
            out[f"127.0.0.1:{port}"] = "primary" if "role:master" in repl else "replica"
        return out

    def primaries(self):
        return [self.url(int(hp.rsplit(":", 1)[1])) for hp, role in self.roles().items() if role == "primary"]

    def conn_for(self, key):
        slot = key_slot(key)
        port = next(p for lo, hi, p in self.slot_map if lo <= slot <= hi)
        return Redis(self.url(port))

    def cpu(self):
        """{node: CPU seconds (user + system)} from /proc/<pid>/stat."""
        return {f"127.0.0.1:{port}": proc_cpu(p.pid) or 0.0 for port, p in self.procs.items()}

    def cpu_source(self):
        return "/proc/<pid>/stat of each node of the bench's own cluster"

    def clean(self, prefix):
        """The cluster is the bench's own: empty every primary."""
        for url in self.primaries():
            Redis(url).cmd("FLUSHALL")

    def stop(self):
        for p in self.procs.values():
            p.kill()
        for p in self.procs.values():
            p.wait()
        self.procs = {}
        shutil.rmtree(self.dir, True)


def free_cluster_ports(count):
    """`count` free loopback ports whose cluster bus ports (+10000) are free
    too, all held until every one is chosen."""
    held, ports = [], []
    while len(ports) < count:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        held.append(s)
        if port > 65535 - 10000:
            continue
        bus = socket.socket()
        try:
            bus.bind(("127.0.0.1", port + 10000))
        except OSError:
            bus.close()
            continue
        held.append(bus)
        ports.append(port)
    for s in held:
        s.close()
    return ports


# ---------------------------------------------------------------- data
def generate(path, rows, seed, domains=7):
    """name,email with ~5% duplicates (half differing only in case) and ~2% invalid,
    the valid addresses over `domains` domains (example0.com …)."""
    rnd = random.Random(seed)
    emails = []
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("name,email\n")
        for i in range(rows):
            roll = rnd.random()
            if roll < 0.02:
                bad = [f"user{i}.example.com", f"user{i}@@example.com", f"user {i}@example.com", f"user{i}@localhost"][i % 4]
                f.write(f"Bad {i},{bad}\n")
            elif roll < 0.07 and emails:
                e = emails[rnd.randrange(len(emails))]
                f.write(f"\"Dup, {i}\",{e.upper() if i % 2 else e}\n")
            else:
                e = f"person{i}.{rnd.randrange(1000)}@example{i % domains}.com"
                emails.append(e)
                f.write(f"Person {i},{e}\n")


def rss_peak_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"bench: nothing listening on {port}")


# ---------------------------------------------------------------- databases
class Db:
    """A fresh database for one run, plus the reference load into it."""

    def __init__(self, kind, admin_url, tag):
        self.kind, self.admin, self.name = kind, admin_url, f"rp_bench_{tag}"
        if kind == "sqlite":
            self.dir = tempfile.mkdtemp(prefix="rowpipe-bench-")
            self.path = os.path.join(self.dir, "bench.db")
            self.url = f"sqlite://{self.path}"
        else:
            self.sql_admin(f'CREATE DATABASE {self.q(self.name)}' + (" CHARACTER SET utf8mb4 COLLATE utf8mb4_bin" if kind == "mysql" else ""))
            base, _, params = admin_url.partition("?")
            # Connection parameters (e.g. `sslmode`) apply to both the
            # reference's client and rowpipe.
            self.url = f"{base.rsplit('/', 1)[0]}/{self.name}" + (f"?{params}" if params else "")

    def q(self, ident):
        return f"`{ident}`" if self.kind == "mysql" else f'"{ident}"'

    def _client(self, url, sql, local_infile=False):
        if self.kind == "postgres":
            cmd = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", url, "-c", sql]
        else:
            m = re.match(r"mysql://([^:@/]+)(?::([^@]*))?@([^:/]+)(?::(\d+))?/?([^?]*)", url)
            user, pw, host, port, db = m.groups()
            cmd = ["mariadb", "-N", "-B", "-u", user, "-h", host, "-P", port or "3306"]
            if pw:
                cmd.append(f"-p{pw}")
            if local_infile:
                cmd.append("--local-infile=1")
            if db:
                cmd.append(db)
            cmd += ["-e", sql]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"bench: {self.kind} client failed: {out.stderr.strip()}\n{sql}")
        return out.stdout.strip()

    def settle(self):
        """Start a timed phase from the same state as the others: PostgreSQL
        writes the WAL of the previous phase out now (CHECKPOINT) rather than
        in the middle of the next one, where it would land on whichever phase
        happened to cross `max_wal_size`."""
        if self.kind != "postgres":
            return
        out = subprocess.run(["psql", "-X", "-q", "-At", self.admin, "-c", "CHECKPOINT"],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(f"bench: CHECKPOINT not allowed ({out.stderr.strip()}); phases may share checkpoint work",
                  file=sys.stderr)

    def sql_admin(self, sql):
        return self._client(self.admin, sql)

    def wal(self):
        """PostgreSQL's WAL counters (`pg_stat_wal`, the whole server: the
        bench is the only writer while it runs), or None elsewhere."""
        if self.kind != "postgres":
            return None
        out = self._client(self.admin, "SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal")
        records, fpi, size = (int(x) for x in out.split("|"))
        return {"records": records, "fpi": fpi, "bytes": size}

    @staticmethod
    def wal_spent(before, after):
        if before is None or after is None:
            return None
        return {k: after[k] - before[k] for k in before}

    def sql(self, sql, local_infile=False):
        if self.kind == "sqlite":
            con = sqlite3.connect(self.path)
            try:
                rows = con.execute(sql).fetchall()
                con.commit()
                return "\n".join("|".join(str(c) for c in r) for r in rows)
            finally:
                con.close()
        return self._client(self.url, sql, local_infile)

    def reference(self, csv_path):
        """The database's own fastest path to the same outcome. Returns seconds."""
        t0 = time.perf_counter()
        if self.kind == "postgres":
            # COPY into an unlogged staging table, then one conflict-aware INSERT … SELECT.
            self._client(self.url, "CREATE UNLOGGED TABLE ref_staging (line BIGSERIAL, name TEXT, email TEXT);"
                         "CREATE TABLE ref_contacts (email VARCHAR(320) PRIMARY KEY, name TEXT, line BIGINT);")
            self.settle()
            wal0 = self.wal()
            t0 = time.perf_counter()
            self.cpu0 = cpu_now(self.kind)
            cmd = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", self.url,
                   "-c", f"\\copy ref_staging(name, email) FROM '{csv_path}' WITH (FORMAT csv, HEADER true)",
                   "-c", "INSERT INTO ref_contacts SELECT DISTINCT ON (lower(email)) lower(email), name, line "
                         "FROM ref_staging WHERE email ~ '^[^@[:space:]]+@[^@[:space:]]+\\.[^@[:space:]]+$' "
                         "ORDER BY lower(email), line ON CONFLICT DO NOTHING"]
            subprocess.run(cmd, check=True)
            self.ref_wal = self.wal_spent(wal0, self.wal())
        elif self.kind == "mysql":
            self.sql("CREATE TABLE ref_staging (line BIGINT AUTO_INCREMENT PRIMARY KEY, name TEXT, email VARCHAR(400)) ENGINE=InnoDB;"
                     "CREATE TABLE ref_contacts (email VARCHAR(320) COLLATE utf8mb4_bin PRIMARY KEY, name TEXT, line BIGINT) ENGINE=InnoDB")
            t0 = time.perf_counter()
            self.cpu0 = cpu_now(self.kind)
            self.sql(f"LOAD DATA LOCAL INFILE '{csv_path}' IGNORE INTO TABLE ref_staging CHARACTER SET utf8mb4 "
                     "FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\"' LINES TERMINATED BY '\\n' IGNORE 1 LINES (name, email);"
                     "INSERT IGNORE INTO ref_contacts SELECT lower(email), name, line FROM ref_staging "
                     "WHERE email REGEXP '^[^@[:space:]]+@[^@[:space:]]+\\\\.[^@[:space:]]+$' ORDER BY line",
                     local_infile=True)
        else:
            import csv
            con = sqlite3.connect(self.path)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("CREATE TABLE ref_staging (line INTEGER PRIMARY KEY, name TEXT, email TEXT)")
            con.execute("CREATE TABLE ref_contacts (email TEXT PRIMARY KEY, name TEXT, line INTEGER)")
            con.commit()
            t0 = time.perf_counter()
            self.cpu0 = cpu_now(self.kind, self.driver_pids())
            with open(csv_path, newline="", encoding="utf-8") as f:
                r = csv.reader(f)
                next(r)
                batch, staged = [], []
                for line, (name, email) in enumerate(r, 1):
                    staged.append((line, name, email))
                    if VALID.match(email):
                        batch.append((email.lower(), name, line))
                    if len(batch) >= 1000 or len(staged) >= 1000:
                        con.executemany("INSERT INTO ref_staging VALUES (?,?,?)", staged)
                        con.executemany("INSERT OR IGNORE INTO ref_contacts VALUES (?,?,?)", batch)
                        con.commit()
                        batch, staged = [], []
                con.executemany("INSERT INTO ref_staging VALUES (?,?,?)", staged)
                con.executemany("INSERT OR IGNORE INTO ref_contacts VALUES (?,?,?)", batch)
                con.commit()
            con.close()
        secs = time.perf_counter() - t0
        # The reference's backend has exited; give the postmaster a moment to
        # reap it, so its CPU shows in the postmaster's cutime.
        time.sleep(0.3)
        self.cpu = cpu_spent(self.cpu0, cpu_now(self.kind, self.driver_pids()))
        return secs

    def driver_pids(self):
        """Processes of the reference besides the server and its clients:
        this driver itself, which runs SQLite's reference in-process."""
        return {"bench driver (sqlite3)": [os.getpid()]} if self.kind == "sqlite" else None

    def reference_outcome(self):
        total = int(self.sql("SELECT COUNT(*) FROM ref_staging"))
        inserted = int(self.sql("SELECT COUNT(*) FROM ref_contacts"))
        valid_rx = {"postgres": "email ~ '^[^@[:space:]]+@[^@[:space:]]+\\.[^@[:space:]]+$'",
                    "mysql": "email REGEXP '^[^@[:space:]]+@[^@[:space:]]+\\\\.[^@[:space:]]+$'"}.get(self.kind)
        if valid_rx:
            valid = int(self.sql(f"SELECT COUNT(*) FROM ref_staging WHERE {valid_rx}"))
        else:
            valid = sum(1 for _ in self.sql("SELECT email FROM ref_staging").split("\n") if VALID.match(_))
        return {"inserted": inserted, "duplicates": valid - inserted, "rejected": total - valid}

    def tables_differ(self):
        """Rows on which rowpipe's contacts and the reference disagree (email or winning row)."""
        return int(self.sql(
            "SELECT COUNT(*) FROM (SELECT c.email FROM contacts c LEFT JOIN ref_contacts r ON r.email = c.email "
            "WHERE r.email IS NULL OR r.line <> c." + ("`row_number`" if self.kind == "mysql" else "\"row_number\"") +
            " UNION ALL SELECT r.email FROM ref_contacts r LEFT JOIN contacts c ON c.email = r.email WHERE c.email IS NULL) d"))

    def drop(self):
        if self.kind == "sqlite":
            subprocess.run(["rm", "-rf", self.dir])
        else:
            self.sql_admin(f"DROP DATABASE IF EXISTS {self.q(self.name)}" + (" WITH (FORCE)" if self.kind == "postgres" else ""))


# ---------------------------------------------------------------- rowpipe
class Pipeline:
    """The upload service and `consumers` consumer processes on a stream of
    the run's own. `redis` is a URL (one Redis) or a target (SingleRedis,
    OwnCluster); every program, `rowpipe migrate` included, gets the same
    REDIS_URL, ROWPIPE_REDIS_CLUSTER and ROWPIPE_STREAM_SHARDS."""

    def __init__(self, bins, db_url, redis, consumers, extra_env=None, consumer_env=None, max_backlog=None, shards=1):
        self.bins, self.procs = bins, []
        target = as_target(redis)
        tag = f"{int(time.time() * 1000)}-{os.getpid()}"
        self.port = free_port()
        self.env = dict(os.environ, DATABASE_URL=db_url, REDIS_URL=target.seeds(),
                        ROWPIPE_REDIS_CLUSTER="true" if target.cluster else "false",
                        ROWPIPE_STREAM_SHARDS=str(shards),
                        ROWPIPE_STREAM=f"rowpipe:bench:{tag}", ROWPIPE_AUTH_DISABLED="true",
                        ROWPIPE_LISTEN=f"127.0.0.1:{self.port}", RUST_LOG="warn")
        self.stream_keys = shard_keys(bins, self.env)
        for k in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            self.env.pop(k, None)
        self.env.update(extra_env or {})
        if max_backlog:
            self.env["ROWPIPE_MAX_BACKLOG"] = str(max_backlog)
        self.max_backlog = int(self.env.get("ROWPIPE_MAX_BACKLOG", "200000"))
        subprocess.run([f"{bins}/rowpipe", "migrate"], env=self.env, check=True, stdout=subprocess.DEVNULL)
        self.upload = self._spawn("rowpipe-upload", {})
        self.consumers = [self._spawn("rowpipe-consumer", dict({"ROWPIPE_METRICS_LISTEN": "127.0.0.1:0"}, **(consumer_env or {})))
                          for _ in range(consumers)]
        wait_port(self.port)

    def _spawn(self, name, env):
        p = subprocess.Popen([f"{self.bins}/{name}"], env=dict(self.env, **env),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def post(self, body_iter, length=None):
        con = http.client.HTTPConnection("127.0.0.1", self.port, timeout=3600)
        headers = {"Content-Type": "text/csv"}
        if length is not None:
            headers["Content-Length"] = str(length)
        con.request("POST", "/v1/uploads", body=body_iter, headers=headers, encode_chunked=length is None)
        resp = con.getresponse()
        body = json.loads(resp.read() or b"{}")
        if resp.status != 202:
            sys.exit(f"bench: upload refused: {resp.status} {body}")
        return body

    def status(self, upload_id):
        con = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        con.request("GET", f"/v1/uploads/{upload_id}")
        return json.loads(con.getresponse().read())

    def wait(self, upload_id, timeout=7200):
        end = time.time() + timeout
        while time.time() < end:
            s = self.status(upload_id)
            if s["status"] in ("completed", "failed"):
                return s
            time.sleep(0.25)
        sys.exit("bench: timed out waiting for the upload")

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def file_chunks(path, size=1 << 20):
    with open(path, "rb") as f:
        while True:
            b = f.read(size)
            if not b:
                return
            yield b


def run_rowpipe(args, kind, admin, csv_path, consumers, ref=True, consumer_env=None, extra_env=None, label=None):
    tag = f"{int(time.time())}_{random.randrange(1 << 30):x}"
    db = Db(kind, admin, tag)
    result = {"label": label or f"rowpipe, {consumers} consumer{'s' if consumers > 1 else ''}"}
    try:
        if ref:
            secs = db.reference(csv_path)
            result["ref_secs"] = secs
            result["ref_cpu"] = db.cpu
            result["ref_outcome"] = db.reference_outcome()
            result["ref_wal"] = getattr(db, "ref_wal", None)
        db.settle()
        wal0 = db.wal()
        mem = MemoryPoller(args.target)
        mem.start()
        pipe = Pipeline(args.bins, db.url, args.target, consumers, consumer_env=consumer_env, extra_env=extra_env,
                        shards=args.shards)
        try:
            size = os.path.getsize(csv_path)
            cpu0 = args.target.cpu()
            pids = {"rowpipe-upload": [pipe.upload.pid], "rowpipe-consumer": [c.pid for c in pipe.consumers]}
            procs0 = cpu_now(kind, pids)
            cmds0 = command_stats(args.target)
            wall0 = time.time()
            t0 = time.perf_counter()
            body = pipe.post(file_chunks(csv_path), size)
            t_upload = time.perf_counter() - t0
            status = pipe.wait(body["upload_id"])
            cpu1 = args.target.cpu()
            result["wal"] = db.wal_spent(wal0, db.wal())
            result["cpu"] = cpu_spent(procs0, cpu_now(kind, pids))
            result["commands"] = command_stats_spent(cmds0, command_stats(args.target))
            # The server records when the last row was committed; polling
            # granularity does not enter the figure.
            t_total = (status["completed_at_ms"] / 1000.0) - wall0
            mem.stop.set()
            result.update(secs=t_total, upload_secs=t_upload, bytes=size, status=status,
                          rss_upload=rss_peak_mib(pipe.upload.pid),
                          rss_consumers=[rss_peak_mib(c.pid) for c in pipe.consumers],
                          redis_peak=(mem.peak - mem.base) / 2**20, max_backlog=pipe.max_backlog,
                          redis_cpu={n: cpu1[n] - cpu0[n] for n in cpu1 if n in cpu0})
            if ref:
                result["differ"] = db.tables_differ()
        finally:
            pipe.stop()
            args.target.clean(pipe.env["ROWPIPE_STREAM"])
    finally:
        db.drop()
    return result


# ---------------------------------------------------------------- the mail-domain check
MAIL_DOMAINS = 50


def mail_domain_runs(args, admin, work):
    """Alternating runs with ROWPIPE_CHECK_MAIL_DOMAIN off and mx (2 consumer
    processes) on a file over 50 domains, each `mx` run against a fresh
    rowpipe-test-dns serving MX records for them, which counts the lookups."""
    path = os.path.join(work, "contacts-50-domains.csv")
    generate(path, args.rows, args.seed, domains=MAIL_DOMAINS)
    names = [f"example{k}.com" for k in range(MAIL_DOMAINS)]
    dns_args = [os.path.join(args.bins, "rowpipe-test-dns"), "--ttl", "3600"]
    for n in names:
        dns_args += ["--mx", n]
    off_rates, on_rates, lookups, same = [], [], [], True
    for _ in range(args.repeat):
        off = run_rowpipe(args, args.db, admin, path, 2, ref=False, label="rowpipe, 2 consumers, mail-domain check off")
        dns = subprocess.Popen(dns_args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            addr = dns.stdout.readline().split()[1]
            on = run_rowpipe(args, args.db, admin, path, 2, ref=False,
                             consumer_env={"ROWPIPE_CHECK_MAIL_DOMAIN": "mx", "ROWPIPE_DNS_SERVERS": addr},
                             label="rowpipe, 2 consumers, mail-domain check mx")
        finally:
            out, _ = dns.communicate(timeout=30)
        counts = json.loads(out.strip().splitlines()[-1])
        lookups.append(counts["total"])
        co, cn = off["status"]["counts"], on["status"]["counts"]
        same &= all(co[k] == cn[k] for k in ("inserted", "duplicates", "rejected")) and cn.get("unverified", 0) == 0
        off_rates.append(co["read"] / off["secs"])
        on_rates.append(cn["read"] / on["secs"])
    return off_rates, on_rates, lookups, same


# ---------------------------------------------------------------- the 1 GiB upload
def upload_gib(args):
    """Stream a generated body of the given size (never written to disk) into the
    upload service with an instant drain on the group, and report its peak RSS."""
    target = int(args.upload_gib * 2**30)
    kind, admin = "sqlite", None
    db = Db(kind, admin, f"{int(time.time())}")
    pipe = Pipeline(args.bins, db.url, args.target, 0, shards=args.shards)
    stop = threading.Event()
    drained = [0]

    def drain():
        # Stands in for infinitely fast consumers: mark everything delivered
        # and acknowledged, then trim it. Backpressure still applies between drains.
        group = "rowpipe-consumers"
        shards = [(key, args.target.conn_for(key)) for key in pipe.stream_keys]
        while not stop.is_set():
            for key, r in shards:
                try:
                    r.cmd("XGROUP", "SETID", key, group, "$")
                    drained[0] += r.cmd("XTRIM", key, "MAXLEN", "0")
                except RuntimeError:
                    pass
            time.sleep(0.02)

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    sent = [0]
    rows = [0]

    def body():
        yield b"name,email\n"
        i = 0
        while sent[0] < target:
            chunk = "".join(f"Person {j},person{j}@example{j % 7}.com\n" for j in range(i, i + 5000)).encode()
            i += 5000
            rows[0] = i
            sent[0] += len(chunk)
            yield chunk

    mem = MemoryPoller(args.target)
    mem.start()
    t0 = time.perf_counter()
    res = pipe.post(body())
    secs = time.perf_counter() - t0
    stop.set()
    mem.stop.set()
    rss = rss_peak_mib(pipe.upload.pid)
    pipe.stop()
    args.target.clean(pipe.env["ROWPIPE_STREAM"])
    db.drop()
    print(f"upload of {sent[0] / 2**30:.2f} GiB generated on the fly ({res['rows_enqueued']:,} rows): "
          f"{secs:.1f} s, {res['rows_enqueued'] / secs:,.0f} rows/s, {sent[0] / 2**20 / secs:.1f} MiB/s")
    print(f"upload peak RSS: {rss:.1f} MiB (target < 100 MiB); Redis peak used_memory above baseline: {(mem.peak - mem.base) / 2**20:.1f} MiB")
    print(f"bench: {1 if rss < 100 else 0} passed, {0 if rss < 100 else 1} failed")
    return 0 if rss < 100 else 1


# ---------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--db", choices=["postgres", "mysql", "sqlite"], default="postgres")
    ap.add_argument("--consumers", default="1,2,4", help="consumer process counts to run")
    ap.add_argument("--naive-rows", type=int, default=3000, help="rows for the one-row-per-transaction baseline")
    ap.add_argument("--tracing", action="store_true", help="also run with tracing exported, to measure its overhead")
    ap.add_argument("--repeat", type=int, default=3, help="alternating off/on pairs for --tracing")
    ap.add_argument("--mail-domain", action="store_true",
                    help="also run with ROWPIPE_CHECK_MAIL_DOMAIN=mx against a local DNS server (50 domains), "
                         "alternating with off --repeat times, for its throughput cost")
    ap.add_argument("--upload-gib", type=float, help="only measure a generated upload of this size (GiB)")
    ap.add_argument("--pairs", type=int, default=1,
                    help="reference + rowpipe pairs to run at each consumer count; each pair's ratio is "
                         "its own, and the median is reported (this machine is shared and noisy)")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--bins", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"),
                    help="the one Redis to use (without --redis-cluster); the bench deletes only its own keys there")
    ap.add_argument("--redis-cluster", action="store_true",
                    help="start a Redis Cluster of the bench's own (3 primaries, 1 replica each, free ports, "
                         "stopped at the end) and run the programs on it (ROWPIPE_REDIS_CLUSTER=true, "
                         "REDIS_URL=its nodes); --redis is not used")
    ap.add_argument("--shards", type=int, default=1,
                    help="ROWPIPE_STREAM_SHARDS for every program: the stream as this many keys (1 to 64)")
    args = ap.parse_args()
    if not 1 <= args.shards <= 64:
        ap.error("--shards must be 1 to 64")
    # A SIGTERM ends the bench through atexit too, so its own cluster stops.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.target = OwnCluster(3, 1) if args.redis_cluster else SingleRedis(args.redis)
    if args.upload_gib:
        return upload_gib(args)
    admin = {"postgres": os.environ.get("ROWPIPE_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
             "mysql": os.environ.get("ROWPIPE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/mysql"),
             "sqlite": None}[args.db]
    work = tempfile.mkdtemp(prefix="rowpipe-bench-data-")
    # The generated files are as big as the run (41 MiB per million rows).
    atexit.register(shutil.rmtree, work, True)
    csv_path = os.path.join(work, "contacts.csv")
    generate(csv_path, args.rows, args.seed)
    redis_desc = (f"its own Redis Cluster of 3 primaries + 1 replica each ({args.target.seeds()})"
                  if args.target.cluster else f"Redis {host_port(args.redis)}")
    print(f"# rowpipe benchmark: {args.rows:,} rows ({os.path.getsize(csv_path) / 2**20:.1f} MiB), {args.db}, "
          f"{os.cpu_count()} cores, seed {args.seed}, {redis_desc}, {args.shards} stream shard{'s' if args.shards > 1 else ''}\n")
    results = []
    # Each rowpipe run is paired with a reference run just before it on a
    # fresh database; its ratio is taken against that reference.
    ratios = {}
    med = statistics.median
    for k in [int(x) for x in args.consumers.split(",")]:
        for _ in range(max(1, args.pairs)):
            r = run_rowpipe(args, args.db, admin, csv_path, k)
            r["ratio"] = (r["status"]["counts"]["read"] / r["secs"]) / (args.rows / r["ref_secs"])
            ratios.setdefault(k, []).append(r["ratio"])
            results.append(r)
    ref = results[0]
    naive_path = os.path.join(work, "naive.csv")
    generate(naive_path, min(args.naive_rows, args.rows), args.seed)
    naive = run_rowpipe(args, args.db, admin, naive_path, 1, ref=False,
                        consumer_env={"ROWPIPE_BATCH_SIZE": "1", "ROWPIPE_WORKERS": "1", "ROWPIPE_BATCH_TIMEOUT_MS": "1"},
                        label="naive: 1 row per transaction")
    traced = None
    overhead = None
    if args.tracing:
        # Alternate off/on runs and compare medians: on a shared machine one
        # pair of runs is within the noise.
        sink = TraceSink()
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.port}", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
        off_rates, on_rates = [], []
        for i in range(args.repeat):
            off = run_rowpipe(args, args.db, admin, csv_path, 2, ref=False, label="rowpipe, 2 consumers, tracing off")
            on = run_rowpipe(args, args.db, admin, csv_path, 2, ref=False, extra_env=env,
                             label="rowpipe, 2 consumers, tracing exported")
            off_rates.append(off["status"]["counts"]["read"] / off["secs"])
            on_rates.append(on["status"]["counts"]["read"] / on["secs"])
            traced = on
        traced["sink_bytes"] = sink.bytes
        overhead = (med(off_rates), med(on_rates), off_rates, on_rates)
    mail = mail_domain_runs(args, admin, work) if args.mail_domain else None

    # The reference row shows the median reference; each rowpipe row's ratio
    # is against its own paired reference.
    ref_rate = sorted(args.rows / r["ref_secs"] for r in results)[len(results) // 2]
    print(f"| run | rows/s | vs reference | upload rows/s | upload MiB/s | upload RSS MiB | consumer RSS MiB | Redis peak MiB | Redis CPU µs/row | inserted | duplicates | rejected | table = reference |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    o = ref["ref_outcome"]
    print(f"| reference ({ {'postgres': 'COPY + INSERT … SELECT … ON CONFLICT', 'mysql': 'LOAD DATA … IGNORE + INSERT IGNORE … SELECT', 'sqlite': 'Python sqlite3, 1,000-row transactions'}[args.db] }) "
          f"| {ref_rate:,.0f} | 1.00 | | | | | | | {o['inserted']:,} | {o['duplicates']:,} | {o['rejected']:,} | |")
    ok = True
    for r in results + ([traced] if traced else []) + [naive]:
        c = r["status"]["counts"]
        n = c["read"]
        rate = n / r["secs"]
        same = ""
        if "differ" in r:
            match = r["differ"] == 0 and all(c[k] == o[k] for k in ("inserted", "duplicates", "rejected"))
            ok &= match
            same = "yes" if match else f"NO ({r['differ']} rows differ)"
        print(f"| {r['label']} | {rate:,.0f} | {r.get('ratio', rate / ref_rate):.2f} | {n / r['upload_secs']:,.0f} | {r['bytes'] / 2**20 / r['upload_secs']:.1f} "
              f"| {r['rss_upload']:.0f} | {', '.join(f'{x:.0f}' for x in r['rss_consumers'])} | {r['redis_peak']:.1f} "
              f"| {redis_cpu_per_row(r)['total']:.1f} | {c['inserted']:,} | {c['duplicates']:,} | {c['rejected']:,} | {same} |")
    roles = args.target.roles()
    print(f"\nRedis CPU per row read (µs/row, user + system over the timed phase, from {args.target.cpu_source()}):")
    for r in results + ([traced] if traced else []) + [naive]:
        per = redis_cpu_per_row(r)
        nodes = ", ".join(f"{n}{' ' + roles[n] if roles.get(n) else ''} {us:.1f}" for n, us in per.items() if n != "total")
        print(f"  {r['label']}: {nodes}; total {per['total']:.1f}")
    print_cpu_by_process(args, results + ([traced] if traced else []))
    print_command_stats(results + ([traced] if traced else []))
    print_wal(results)
    default2 = next((r for r in results if len(r["rss_consumers"]) == 2), results[0])
    rate2 = default2["status"]["counts"]["read"] / default2["secs"]
    naive_rate = naive["status"]["counts"]["read"] / naive["secs"]
    print()
    for k, rs in ratios.items():
        pairs = f"median of {len(rs)} pairs ({', '.join(f'{x:.2f}' for x in rs)})" if len(rs) > 1 else "one pair"
        print(f"rowpipe ({k} consumer{'s' if k > 1 else ''}) / reference: {med(rs):.2f}, {pairs}"
              + (" (target ≥ 0.75 on PostgreSQL: median of 5 pairs of 1M rows)" if k == 2 else ""))
    print(f"rowpipe default / naive one-row-per-transaction: {rate2 / naive_rate:.0f}× (target ≥ 50×)")
    if overhead:
        off_m, on_m, offs, ons = overhead
        cost = (1 - on_m / off_m) * 100
        print(f"tracing exported ({traced['sink_bytes'] / 2**20:.1f} MiB of OTLP received) vs off, median of {len(offs)} "
              f"alternating runs each: {on_m:,.0f} vs {off_m:,.0f} rows/s = {cost:+.1f}% throughput cost (target ≤ 5%)")
        print(f"  off runs: {', '.join(f'{x:,.0f}' for x in offs)}; on runs: {', '.join(f'{x:,.0f}' for x in ons)}")
    if mail:
        offs, ons, lookups, same = mail
        cost = (1 - med(ons) / med(offs)) * 100
        bound = MAIL_DOMAINS * 2
        print(f"mail-domain check (mx, {MAIL_DOMAINS} domains, 2 consumer processes) vs off, median of {len(offs)} "
              f"alternating runs each: {med(ons):,.0f} vs {med(offs):,.0f} rows/s = {cost:+.1f}% throughput cost (target < 10%)")
        print(f"  off runs: {', '.join(f'{x:,.0f}' for x in offs)}; mx runs: {', '.join(f'{x:,.0f}' for x in ons)}")
        print(f"  DNS queries counted at the server per mx run: {', '.join(str(x) for x in lookups)} "
              f"(at most one per domain per process: {bound}); same counts as off, none unverified: {'yes' if same else 'NO'}")
        ok &= same and all(x <= bound for x in lookups)
    entry = entry_bytes(args.target, csv_path)
    bound = default2["max_backlog"] * entry / 2**20
    peak = max(r["redis_peak"] for r in results)
    margin = 16
    print(f"Redis peak above baseline {peak:.1f} MiB; bound: backlog {default2['max_backlog']:,} × {entry:.0f} B/entry "
          f"(MEMORY USAGE of 10,000 entries) = {bound:.1f} MiB + {margin} MiB margin: {'within' if peak <= bound + margin else 'EXCEEDED'}")
    ok &= peak <= bound + margin
    print(f"bench: {1 if ok else 0} passed, {0 if ok else 1} failed")
    return 0 if ok else 1


def print_wal(runs):
    """PostgreSQL's WAL per row read over each timed phase (`pg_stat_wal`):
    records, full-page images and bytes, next to the paired reference's."""
    runs = [r for r in runs if r.get("wal")]
    if not runs:
        return
    print("\nPostgreSQL WAL per row read (pg_stat_wal over the timed phase; the reference's over its COPY and INSERT):")
    print("| run | records/row | full-page images per 1,000 rows | bytes/row | reference records/row | reference FPI per 1,000 | reference bytes/row |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        n = r["status"]["counts"]["read"]
        w, rw = r["wal"], r.get("ref_wal")
        ref = (f"{rw['records'] / n:.2f} | {rw['fpi'] * 1000 / n:.1f} | {rw['bytes'] / n:.0f}" if rw else " | | ")
        print(f"| {r['label']} | {w['records'] / n:.2f} | {w['fpi'] * 1000 / n:.1f} | {w['bytes'] / n:.0f} | {ref} |")


def print_cpu_by_process(args, runs):
    """CPU per row by process over each timed phase (µs/row), from /proc:
    where the time goes, next to the reference's own."""
    print("\nCPU per row by process (µs/row, user + system over the timed phase, /proc; "
          "\"other\" is the rest of the machine's busy time, the kernel's share and this driver included):")
    print("| run | rowpipe-upload | rowpipe-consumer (all) | database server | Redis | clients | other | total busy | idle % |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")

    def row(label, cpu, n, redis=None):
        us = lambda secs: f"{secs * 1e6 / n:.2f}" if secs is not None else ""
        clients = cpu.get("clients (psql, mariadb)", 0.0) + cpu.get("bench driver (sqlite3)", 0.0)
        named = ["rowpipe-upload", "rowpipe-consumer", "database server"]
        known = sum(cpu.get(k, 0.0) for k in named) + (redis or 0.0) + clients
        busy, idle = cpu.get("busy", 0.0), cpu.get("idle", 0.0)
        idle_pct = 100 * idle / (busy + idle) if busy + idle else 0.0
        print(f"| {label} | {us(cpu.get('rowpipe-upload'))} | {us(cpu.get('rowpipe-consumer'))} | {us(cpu.get('database server'))} "
              f"| {us(redis)} | {us(clients) if clients else ''} | {us(max(busy - known, 0.0))} | {us(busy)} | {idle_pct:.0f} |")

    for r in runs:
        if "ref_cpu" in r:
            row("reference, paired with the next row", r["ref_cpu"], args.rows)
        if "cpu" in r:
            row(r["label"], r["cpu"], max(r["status"]["counts"]["read"], 1), sum(r["redis_cpu"].values()))


def print_command_stats(runs):
    """Redis's own time per command over each timed phase (INFO commandstats;
    a shared server's figures include its other clients)."""
    print("\nRedis commands over the timed phase (INFO commandstats: calls, µs per row read, µs per call):")
    for r in runs:
        n = max(r["status"]["counts"]["read"], 1)
        top = sorted(r.get("commands", {}).items(), key=lambda kv: -kv[1][1])[:8]
        print(f"  {r['label']}: " + "; ".join(f"{c} {calls:,} calls, {us / n:.2f} µs/row, {us / calls:.0f} µs/call"
                                            for c, (calls, us) in top))


def redis_cpu_per_row(r):
    """{node: µs of Redis CPU per row read, …, "total": the sum} of a run."""
    n = max(r["status"]["counts"]["read"], 1)
    per = {node: secs * 1e6 / n for node, secs in sorted(r["redis_cpu"].items())}
    per["total"] = sum(per.values())
    return per


def entry_bytes(target, csv_path):
    """Redis memory per stream entry for rows of this file, measured."""
    key = f"rowpipe:bench:entry-size:{os.getpid()}"
    r = as_target(target).conn_for(key)
    with open(csv_path, encoding="utf-8") as f:
        next(f)
        for i, line in zip(range(10_000), f):
            name, _, email = line.rstrip("\n").rpartition(",")
            r.cmd("XADD", key, "*", "upload_id", "0190f3c8-0000-7000-8000-000000000000", "upload_seq", "1",
                  "row_number", str(i + 1), "traceparent", "00-" + "0" * 31 + "1-" + "0" * 15 + "1-01",
                  "email", email, "name", name.strip('"'))
    used = r.cmd("MEMORY", "USAGE", key, "SAMPLES", "0")
    n = r.cmd("XLEN", key)
    r.cmd("DEL", key)
    return used / max(n, 1)


class TraceSink:
    """A minimal OTLP/HTTP receiver that accepts and counts export requests."""

    def __init__(self):
        import http.server
        sink = self
        self.bytes = 0

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                self.rfile.read(n)
                sink.bytes += n
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
