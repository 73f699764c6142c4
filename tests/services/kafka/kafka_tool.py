"""Topic admin and producers for tests/kafka_source.rs, on PyPI's kafka-python (the venv of
scripts/services.sh: SPILLWAY_TEST_PYTHON).

  create BOOTSTRAP TOPIC PARTITIONS [MAX_MESSAGE_BYTES]
                                               create a topic (replication factor 1)
  partitions BOOTSTRAP TOPIC TOTAL             grow a topic to TOTAL partitions
  produce BOOTSTRAP TOPIC PARTITIONS PER_PARTITION RATE TAG
      PER_PARTITION records to each partition, RATE records/s in all (0: as fast as possible):
      {"k": "<TAG>p<partition>", "n": <number within the partition>, "pad": "..."}; prints the count
  one BOOTSTRAP TOPIC PARTITION VALUE [--key KEY] [--header NAME=VALUE]...
      one record (no --key: a null key); prints its offset
  big BOOTSTRAP TOPIC PARTITION BYTES          one record {"poison": "zzz…"} of BYTES bytes; prints its offset
  fill BOOTSTRAP TOPIC PARTITIONS MIB          MIB of 1 KiB JSON records (MIB × 1024), spread over the partitions
  committed BOOTSTRAP GROUP                    the group's committed offsets: {"<topic>:<partition>": offset}

Every producer waits for all in-sync replicas (acks=all) and is idempotent, so a retried send never
writes a record twice: a duplicate in spillway's output is spillway's.
"""

import json
import sys
import time

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewPartitions, NewTopic


def producer(bootstrap):
    return KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        retries=2147483647,
        request_timeout_ms=30000,
        max_in_flight_requests_per_connection=5,
    )


def admin(bootstrap):
    return KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)


def create(bootstrap, topic, partitions, max_message_bytes=None):
    client = admin(bootstrap)
    configs = {"max.message.bytes": max_message_bytes} if max_message_bytes else {}
    client.create_topics(
        [NewTopic(name=topic, num_partitions=int(partitions), replication_factor=1, topic_configs=configs)]
    )
    # Wait until the metadata lists every partition (creation is asynchronous in KRaft).
    deadline = time.time() + 30
    while time.time() < deadline:
        described = client.describe_topics([topic])
        if described and len(described[0].get("partitions", [])) == int(partitions):
            break
        time.sleep(0.1)
    client.close()


def grow(bootstrap, topic, total):
    client = admin(bootstrap)
    client.create_partitions({topic: NewPartitions(total_count=int(total))})
    client.close()


def produce(bootstrap, topic, partitions, per_partition, rate, tag):
    partitions, per_partition, rate = int(partitions), int(per_partition), float(rate)
    out = producer(bootstrap)
    started = time.time()
    sent = 0
    futures = []
    for n in range(per_partition):
        for partition in range(partitions):
            value = json.dumps({"k": f"{tag}p{partition}", "n": n, "pad": "x" * 48}, separators=(",", ":")).encode()
            futures.append(out.send(topic, value=value, key=f"key-{n % 7}".encode(), partition=partition))
            sent += 1
            if rate > 0:
                ahead = sent / rate - (time.time() - started)
                if ahead > 0:
                    time.sleep(ahead)
    out.flush(timeout=120)
    for future in futures:
        future.get(timeout=120)
    out.close()
    print(sent)


def one(bootstrap, topic, partition, value, rest):
    key, headers = None, []
    i = 0
    while i < len(rest):
        if rest[i] == "--key":
            key = rest[i + 1].encode()
        elif rest[i] == "--header":
            name, _, header_value = rest[i + 1].partition("=")
            headers.append((name, header_value.encode()))
        else:
            raise SystemExit(f"unknown argument {rest[i]}")
        i += 2
    out = producer(bootstrap)
    metadata = out.send(topic, value=value.encode(), key=key, partition=int(partition), headers=headers).get(timeout=60)
    out.close()
    print(metadata.offset)


def big(bootstrap, topic, partition, size):
    head, tail = b'{"poison":"', b'"}'
    value = head + b"z" * (int(size) - len(head) - len(tail)) + tail
    out = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, max_request_size=16 << 20
    )
    metadata = out.send(topic, value=value, partition=int(partition)).get(timeout=60)
    out.close()
    print(metadata.offset)


def committed(bootstrap, group):
    client = admin(bootstrap)
    answer = client.list_group_offsets({group: None})
    client.close()
    # One group asked for: its {TopicPartition: OffsetAndMetadata}, keyed by group or not.
    offsets = answer.get(group, answer) if isinstance(answer, dict) else answer
    print(json.dumps({f"{tp.topic}:{tp.partition}": meta.offset for tp, meta in offsets.items()}))


def fill(bootstrap, topic, partitions, mib):
    partitions, total = int(partitions), int(mib) * 1024
    out = KafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20, batch_size=1 << 20, compression_type=None)
    for n in range(total):
        head = f'{{"n":{n},"pad":"'
        # Exactly 1 KiB per record, so MIB MiB are MIB × 1024 records.
        value = (head + "y" * (1024 - len(head) - 2) + '"}').encode()
        out.send(topic, value=value, partition=n % partitions)
    out.flush(timeout=600)
    out.close()
    print(total)


def main(argv):
    command, args = argv[1], argv[2:]
    if command == "create":
        create(*args)
    elif command == "partitions":
        grow(*args)
    elif command == "produce":
        produce(*args)
    elif command == "one":
        one(args[0], args[1], args[2], args[3], args[4:])
    elif command == "big":
        big(*args)
    elif command == "committed":
        committed(*args)
    elif command == "fill":
        fill(*args)
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv)
