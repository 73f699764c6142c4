#!/usr/bin/env python3
"""MinIO's own CPU per GiB for a loop of PutObject calls (what a replicated WAL segment costs the
object store), with the payload signed (SHA-256 of every body) or sent as UNSIGNED-PAYLOAD.

    eval "$(scripts/services.sh env)"
    /root/.cache/spillway/venv/bin/python scripts/bench_minio_put.py signed|unsigned SIZE_MIB COUNT

Needs `scripts/services.sh up` (its MinIO and its venv's boto3). Prints MinIO's CPU seconds per
GiB stored (from /proc) and the loop's MiB/s (boto3's own time included).
"""
import os
import sys
import time

import boto3
from botocore.config import Config

signed = sys.argv[1] == "signed"
size = int(sys.argv[2]) << 20
count = int(sys.argv[3])
pid = int(os.popen("pgrep -f 'minio server'").read().split()[0])


def cpu_seconds():
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


s3 = boto3.client(
    "s3",
    endpoint_url=os.environ["SPILLWAY_TEST_S3_ENDPOINT"],
    aws_access_key_id=os.environ["SPILLWAY_TEST_S3_ACCESS_KEY"],
    aws_secret_access_key=os.environ["SPILLWAY_TEST_S3_SECRET_KEY"],
    region_name=os.environ.get("SPILLWAY_TEST_S3_REGION", "us-east-1"),
    config=Config(
        s3={"payload_signing_enabled": signed, "addressing_style": "path"},
        request_checksum_calculation="when_required",
    ),
)
bucket = os.environ["SPILLWAY_TEST_S3_BUCKET"]
body = os.urandom(size)
before, started = cpu_seconds(), time.time()
for index in range(count):
    s3.put_object(Bucket=bucket, Key=f"bench-minio-put/{index}", Body=body)
after, elapsed = cpu_seconds(), time.time() - started
for index in range(count):
    s3.delete_object(Bucket=bucket, Key=f"bench-minio-put/{index}")
gib = size * count / 2**30
print(
    f"{sys.argv[1]} {size >> 20} MiB x {count}: MinIO {(after - before) / gib:.2f} CPU-s/GiB, "
    f"{size * count / 2**20 / elapsed:.0f} MiB/s"
)
