"""pyiceberg side of tests/iceberg.rs: creates, reads, appends to and inspects an Iceberg table
in a SQL catalog (PostgreSQL or SQLite) whose warehouse is in MinIO. One JSON document on stdout.

usage: iceberg_table.py <catalog-uri> <warehouse> <table> <command> [args]
commands: create [partitioned|plain], read, append <first> <count>, inspect
"""
import datetime
import json
import os
import sys

import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import BucketTransform, DayTransform, IdentityTransform
from pyiceberg.types import (DoubleType, IntegerType, ListType, LongType, NestedField, StringType,
                             StructType, TimestamptzType)

uri, warehouse, name, command = sys.argv[1:5]
args = sys.argv[5:]
if uri.startswith("sqlite://"):
    # sqlx's sqlite:///abs/path is SQLAlchemy's sqlite:////abs/path
    sql_uri = "sqlite:///" + uri[len("sqlite://"):].split("?", 1)[0]
else:
    sql_uri = uri.replace("postgres://", "postgresql+psycopg2://", 1)
catalog = SqlCatalog(
    "default",
    uri=sql_uri,
    warehouse=warehouse,
    **{
        "s3.endpoint": os.environ["SPILLWAY_TEST_S3_ENDPOINT"],
        "s3.access-key-id": os.environ["SPILLWAY_TEST_S3_ACCESS_KEY"],
        "s3.secret-access-key": os.environ["SPILLWAY_TEST_S3_SECRET_KEY"],
        "s3.region": os.environ["SPILLWAY_TEST_S3_REGION"],
    },
)

SCHEMA = Schema(
    NestedField(1, "id", StringType(), required=True),
    NestedField(2, "client", IntegerType(), required=False),
    NestedField(3, "amount", DoubleType(), required=False),
    NestedField(4, "at", TimestamptzType(), required=False),
    NestedField(5, "kind", StringType(), required=False),
    NestedField(6, "tags", ListType(element_id=8, element_type=StringType(), element_required=False), required=False),
    NestedField(7, "attrs", StructType(NestedField(9, "n", LongType(), required=False)), required=False),
)

if command == "create":
    namespace = name.split(".")[0]
    catalog.create_namespace_if_not_exists(namespace)
    spec = PartitionSpec()
    if args and args[0] == "partitioned":
        spec = PartitionSpec(
            PartitionField(source_id=4, field_id=1000, transform=DayTransform(), name="at_day"),
            PartitionField(source_id=5, field_id=1001, transform=IdentityTransform(), name="kind"),
            PartitionField(source_id=1, field_id=1002, transform=BucketTransform(4), name="id_bucket"),
        )
    catalog.create_table(name, schema=SCHEMA, partition_spec=spec)
    print(json.dumps({"created": name}))
elif command == "read":
    table = catalog.load_table(name)
    rows = table.scan().to_arrow()
    out = {
        "types": {field.name: str(field.type) for field in rows.schema},
        "rows": [
            {key: (value.isoformat() if hasattr(value, "isoformat") else value) for key, value in row.items()}
            for row in rows.to_pylist()
        ],
    }
    print(json.dumps(out))
elif command == "append":
    first, count = int(args[0]), int(args[1])
    table = catalog.load_table(name)
    ids = [f"py-{n}" for n in range(first, first + count)]
    at = datetime.datetime(2026, 12, 7, 12, tzinfo=datetime.timezone.utc)
    data = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "client": pa.array([-1] * count, pa.int32()),
            "at": pa.array([at] * count, pa.timestamp("us", tz="UTC")),
            "kind": pa.array(["python"] * count, pa.string()),
        },
        schema=pa.schema([
            pa.field("id", pa.string(), nullable=False),
            pa.field("client", pa.int32()),
            pa.field("at", pa.timestamp("us", tz="UTC")),
            pa.field("kind", pa.string()),
        ]),
    )
    table.append(data)
    print(json.dumps({"appended": count}))
elif command == "inspect":
    table = catalog.load_table(name)
    files = table.inspect.files().column("file_path").to_pylist()
    snapshots = [
        {"id": s.snapshot_id, "summary": dict(s.summary.additional_properties)} for s in table.metadata.snapshots
    ]
    print(json.dumps({"files": files, "snapshots": snapshots}))
else:
    sys.exit(f"unknown command {command}")
