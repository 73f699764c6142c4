"""Take-over time in cluster mode (docs/benchmarks.md, "Cluster mode: take-over"): several
spillway nodes share a Kinesis stream's shards (kinesalite and PostgreSQL from
scripts/services.sh) while a producer writes; a seeded node is killed with SIGKILL, again and
again. For each kill: the time from the kill (the coordinator's clock) to the first delivery from
every shard the killed node held, i.e. until each moved shard's checkpoint has moved under its new
owner (`spillway_shard_state.updated_at`). The killed node is restarted and the cluster rebalanced
before the next kill. Prints each kill and min / median / max.

    python3 scripts/bench_takeover.py --binary target/release/spillway --kills 10 --lease-seconds 10
"""

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import boto3


def psql(url, sql):
    out = subprocess.run(["psql", url, "-AtXqc", sql], check=True, capture_output=True, text=True)
    return [line.split("|") for line in out.stdout.splitlines() if line]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default="target/release/spillway")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--shards", type=int, default=6)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--lease-seconds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--load-seconds", type=int, default=0,
                        help="before the kills, count the coordinator's transactions over this window")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    binary = os.path.realpath(args.binary)
    kinesis_endpoint = os.environ["SPILLWAY_TEST_KINESIS_ENDPOINT"]
    pg_url = os.environ["SPILLWAY_TEST_PG_URL"]
    database = f"bench_takeover_{os.getpid()}"
    psql(pg_url, f"CREATE DATABASE {database}")
    coordinator = pg_url.rsplit("/", 1)[0] + "/" + database
    kinesis = boto3.client("kinesis", endpoint_url=kinesis_endpoint, region_name="us-east-1",
                           aws_access_key_id="x", aws_secret_access_key="x")
    stream = f"bench-takeover-{os.getpid()}"
    kinesis.create_stream(StreamName=stream, ShardCount=args.shards)
    while kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamStatus"] != "ACTIVE":
        time.sleep(0.05)
    work = tempfile.mkdtemp(prefix="spw-takeover-")
    stop = threading.Event()

    def produce():
        n = 0
        while not stop.is_set():
            records = [{"PartitionKey": f"key-{key}", "Data": f'{{"k":{key},"n":{n}}}'.encode()} for key in range(64)]
            kinesis.put_records(StreamName=stream, Records=records)
            n += 1
            time.sleep(0.05)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    yaml = f"""server: {{ listen: 127.0.0.1:0, shutdown_grace_seconds: 20 }}
data_dir: ./data
cluster: {{ coordinator: '{coordinator}', lease_seconds: {args.lease_seconds}, node_id: NODE_ID }}
streams:
  - name: orders
    source: {{ type: kinesis, stream_name: {stream}, endpoint: '{kinesis_endpoint}', region: us-east-1, starting_position: TRIM_HORIZON, poll_interval_ms: 200, shard_discovery_interval_ms: 1000 }}
    processing: {{ record_delimiter: newline }}
    buffering: {{ size_mib: 1, interval_seconds: 1 }}
    sink: {{ type: s3, url: 'file://{work}/out', compression: gzip }}
"""
    env = dict(os.environ, AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", SPILLWAY_LOG="warn")
    processes = {}

    def start(index):
        folder = os.path.join(work, f"node-{index}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "spillway.yaml"), "w") as config:
            config.write(yaml.replace("NODE_ID", f"bench-node-{index}"))
        log = open(os.path.join(folder, "spillway.log"), "ab")
        processes[index] = subprocess.Popen([binary, "run", "--config", "spillway.yaml"], cwd=folder, env=env,
                                            stdout=subprocess.DEVNULL, stderr=log)

    def balanced():
        rows = psql(coordinator, "SELECT owner, count(*) FROM spillway_leases WHERE owner IS NOT NULL AND expires_at > now() AND NOT finished GROUP BY owner")
        counts = [int(count) for _, count in rows]
        return len(rows) == args.nodes and sum(counts) == args.shards and max(counts) - min(counts) <= 1

    def wait(condition, bound, what):
        deadline = time.time() + bound
        while not condition():
            if time.time() > deadline:
                sys.exit(f"timed out waiting for {what}")
            time.sleep(0.1)

    times = []
    try:
        for index in range(args.nodes):
            start(index)
        wait(lambda: len(psql(coordinator, "SELECT 1 FROM pg_tables WHERE tablename = 'spillway_leases'")) == 1 and balanced(), 120, "a balanced start")
        if args.load_seconds:
            # Every statement spillway sends runs in a transaction of its own or in a fenced one:
            # the database's committed transactions are the coordinator's load.
            sample = f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{database}'"
            time.sleep(2 * args.lease_seconds)
            before = int(psql(pg_url, sample)[0][0])
            time.sleep(args.load_seconds)
            after = int(psql(pg_url, sample)[0][0])
            per_second = (after - before) / args.load_seconds
            print(f"coordinator load: {per_second:.0f} transactions/s for {args.nodes} node(s) and {args.shards} shards "
                  f"= {per_second / args.nodes:.0f} per node (lease_seconds {args.lease_seconds}, 1 s buffer, producer on)", flush=True)
        for kill in range(args.kills):
            victim = rng.randrange(args.nodes)
            victim_id = f"bench-node-{victim}"
            moved = [row[0] for row in psql(coordinator, f"SELECT lease_key FROM spillway_leases WHERE owner = '{victim_id}' AND NOT finished")]
            killed_at = float(psql(coordinator, "SELECT extract(epoch FROM clock_timestamp())")[0][0])
            processes[victim].send_signal(signal.SIGKILL)
            processes[victim].wait()
            first = {}
            deadline = time.time() + 6 * args.lease_seconds + 30
            while len(first) < len(moved):
                keys = ",".join(f"'{key}'" for key in moved if key not in first)
                rows = psql(coordinator,
                            "SELECT s.lease_key, extract(epoch FROM s.updated_at) FROM spillway_shard_state s"
                            f" JOIN spillway_leases l USING (lease_key) WHERE s.lease_key IN ({keys})"
                            f" AND s.updated_at > to_timestamp({killed_at}) AND l.owner <> '{victim_id}'")
                for key, at in rows:
                    first.setdefault(key, float(at))
                if time.time() > deadline:
                    sys.exit(f"kill {kill}: {len(moved) - len(first)} moved shards never delivered")
                time.sleep(0.05)
            took = max(first.values()) - killed_at if first else 0.0
            times.append(took)
            print(f"kill {kill + 1}: node {victim} held {len(moved)} shard(s); every moved shard delivered again after {took:.2f} s", flush=True)
            start(victim)
            wait(balanced, 120, "the restarted node's share")
    finally:
        stop.set()
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        kinesis.delete_stream(StreamName=stream)
        psql(pg_url, f"DROP DATABASE IF EXISTS {database}")
    if times:
        print(f"take-over over {len(times)} kills (lease_seconds {args.lease_seconds}, {args.nodes} nodes, {args.shards} shards, 1 s buffer): "
              f"min {min(times):.2f} s, median {statistics.median(times):.2f} s, max {max(times):.2f} s")


if __name__ == "__main__":
    main()
