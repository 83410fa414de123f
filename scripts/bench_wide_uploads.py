#!/usr/bin/env python3
"""Memory under wide rows: N concurrent uploads of files of ~1 MiB rows.

Prints the upload service's peak RSS and the stream's peak bytes in Redis
(MEMORY USAGE, exact) and Redis's used_memory above its baseline, against
ROWPIPE_MAX_BACKLOG_BYTES plus one pipeline (ROWPIPE_ENQUEUE_BATCH_BYTES
plus one row) per upload. Figures, not a pass/fail gate: the numbers go in
docs/performance.md.

    scripts/bench_wide_uploads.py --bins target/debug
    scripts/bench_wide_uploads.py --uploads 8 --rows 24 --max-backlog-mib 32

Uses SQLite, the shared Redis (a fresh stream key) and two consumers.
"""
import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the shared helpers: Redis, Db, Pipeline, rss_peak_mib)

MIB = 1 << 20


def wide_file(tag, rows, row_bytes):
    """A header and `rows` rows of about `row_bytes` each, as chunks."""
    yield b"name,email,note\n"
    for r in range(rows):
        head = f"{tag} {r},{tag}.{r}@example.com,".encode()
        yield head + b"w" * (row_bytes - len(head) - 1) + b"\n"


class StreamPoller(threading.Thread):
    def __init__(self, url, stream):
        super().__init__(daemon=True)
        self.r = bench.Redis(url)
        self.stream = stream
        self.base = self.r.used_memory()
        self.peak_used = self.base
        self.peak_stream = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak_used = max(self.peak_used, self.r.used_memory())
            size = self.r.cmd("MEMORY", "USAGE", self.stream, "SAMPLES", "0") or 0
            self.peak_stream = max(self.peak_stream, int(size))
            time.sleep(0.05)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--uploads", type=int, default=8)
    ap.add_argument("--rows", type=int, default=24, help="rows per file")
    ap.add_argument("--row-bytes", type=int, default=MIB - 1024, help="bytes per row (the row limit is 1 MiB)")
    ap.add_argument("--max-backlog-mib", type=int, default=32)
    ap.add_argument("--batch-mib", type=int, default=1)
    ap.add_argument("--consumers", type=int, default=2)
    ap.add_argument("--bins", default=os.path.join(bench.ROOT, "target", "release"))
    ap.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
    args = ap.parse_args()

    db = bench.Db("sqlite", None, f"wide{int(time.time())}")
    env = {
        "ROWPIPE_MAX_FIELD_BYTES": str(MIB),
        "ROWPIPE_MAX_BACKLOG_BYTES": str(args.max_backlog_mib * MIB),
        "ROWPIPE_ENQUEUE_BATCH_BYTES": str(args.batch_mib * MIB),
        "ROWPIPE_MAX_CONCURRENT_UPLOADS": str(max(16, args.uploads)),
    }
    pipe = bench.Pipeline(args.bins, db.url, args.redis, args.consumers, extra_env=env)
    poller = StreamPoller(args.redis, pipe.env["ROWPIPE_STREAM"])
    poller.start()
    results = [None] * args.uploads
    t0 = time.perf_counter()

    def one(i):
        results[i] = pipe.post(wide_file(f"u{i}", args.rows, args.row_bytes))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(args.uploads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    received = time.perf_counter() - t0
    for r in results:
        pipe.wait(r["upload_id"])
    done = time.perf_counter() - t0
    poller.stop.set()
    rss = bench.rss_peak_mib(pipe.upload.pid)
    pipe.stop()
    db.drop()
    bound = args.max_backlog_mib * MIB
    slack = args.uploads * (args.batch_mib * MIB + args.row_bytes)
    total = args.uploads * args.rows * args.row_bytes
    print(f"# {args.uploads} concurrent uploads of {args.rows} rows of {args.row_bytes / MIB:.2f} MiB "
          f"({total / MIB:.0f} MiB in all), {args.consumers} consumers, binaries {args.bins}")
    print(f"received in {received:.1f} s, completed in {done:.1f} s")
    print(f"upload peak RSS: {rss:.1f} MiB (target < 100 MiB)")
    print(f"stream peak bytes in Redis: {poller.peak_stream / MIB:.1f} MiB; "
          f"ROWPIPE_MAX_BACKLOG_BYTES {bound / MIB:.0f} MiB + one pipeline per upload "
          f"{slack / MIB:.0f} MiB = {(bound + slack) / MIB:.0f} MiB")
    print(f"Redis used_memory peak above baseline: {(poller.peak_used - poller.base) / MIB:.1f} MiB")


if __name__ == "__main__":
    main()
