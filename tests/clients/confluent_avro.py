#!/usr/bin/env python3
"""A Kafka user's own program with Confluent's Avro serializer, for tests/schema_registry.rs.

    confluent_avro.py produce --bootstrap B --registry URL --topic images --source S IMAGE
        Sends IMAGE as a Frame through confluent-kafka's AvroSerializer (the schema from
        schemas/Frame.avsc, registered under <topic>-value): value = 0x00, 4-byte schema id,
        Avro body. Then sends a second frame framed with --unknown-id, an id the registry
        does not hold. Prints {"frame_id", "schema_id", "unknown_frame_id"}.
    confluent_avro.py consume --bootstrap B --registry URL --topic detections --frame-id ID
        Reads results through AvroDeserializer with schemas/DetectionResult.avsc as the
        reader schema until the one for ID arrives; prints it as JSON with "magic" and
        "schema_id", the framing it came in.
    confluent_avro.py dead-letters --bootstrap B --topic dlq --frame-id ID
        Prints the vigil.error.kind and vigil.error.message headers of the dead letter
        whose value names frame ID.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import sys
import time
import uuid
from pathlib import Path

import fastavro
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def frame(source: str, data: bytes) -> dict:
    return {
        "frame_id": str(uuid.uuid4()),
        "source": source,
        "seq": 0,
        "captured_at_us": int(time.time() * 1_000_000),
        "encoding": "JPEG",
        "width": None,
        "height": None,
        "data": data,
        "attributes": {"sent_by": "confluent_avro.py"},
        "session": str(uuid.uuid4()),
    }


def produce(args) -> None:
    registry = SchemaRegistryClient({"url": args.registry})
    schema_text = (SCHEMAS / "Frame.avsc").read_text()
    serializer = AvroSerializer(registry, schema_text)
    producer = Producer({"bootstrap.servers": args.bootstrap, "acks": "all"})
    data = args.image.read_bytes()
    sent = frame(args.source, data)
    context = SerializationContext(args.topic, MessageField.VALUE)
    value = serializer(sent, context)
    unknown = frame(args.source, data)
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(json.loads(schema_text)), unknown)
    unknown_value = b"\x00" + struct.pack(">I", args.unknown_id) + body.getvalue()
    for record in (value, unknown_value):
        producer.produce(args.topic, key=args.source.encode(), value=record)
    if producer.flush(30) != 0:
        sys.exit("confluent_avro: frames not acknowledged within 30 s")
    schema_id = struct.unpack(">I", value[1:5])[0]
    print(json.dumps({"frame_id": sent["frame_id"], "schema_id": schema_id, "unknown_frame_id": unknown["frame_id"]}))


def consumer(bootstrap: str, topic: str) -> Consumer:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"confluent-avro-{uuid.uuid4()}",
                  "auto.offset.reset": "earliest", "isolation.level": "read_committed"})
    c.subscribe([topic])
    return c


def consume(args) -> None:
    registry = SchemaRegistryClient({"url": args.registry})
    reader = (SCHEMAS / "DetectionResult.avsc").read_text()
    deserializer = AvroDeserializer(registry, reader)
    c = consumer(args.bootstrap, args.topic)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        message = c.poll(1.0)
        if message is None or message.error():
            continue
        value = message.value()
        result = deserializer(value, SerializationContext(args.topic, MessageField.VALUE))
        if result["frame_id"] == args.frame_id:
            result["magic"] = value[0]
            result["schema_id"] = struct.unpack(">I", value[1:5])[0]
            result["captured_at_us"] = str(result["captured_at_us"])
            print(json.dumps(result, default=str))
            c.close()
            return
    sys.exit(f"confluent_avro: no result for {args.frame_id} within {args.timeout} s")


def dead_letters(args) -> None:
    c = consumer(args.bootstrap, args.topic)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        message = c.poll(1.0)
        if message is None or message.error() or args.frame_id.encode() not in (message.value() or b""):
            continue
        headers = {k: v.decode() for k, v in message.headers() or []}
        print(json.dumps({"kind": headers.get("vigil.error.kind"), "message": headers.get("vigil.error.message")}))
        c.close()
        return
    sys.exit(f"confluent_avro: no dead letter for {args.frame_id} within {args.timeout} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("produce", "consume", "dead-letters"):
        p = sub.add_parser(name)
        p.add_argument("--bootstrap", required=True)
        p.add_argument("--topic", required=True)
        p.add_argument("--timeout", type=float, default=120.0)
        if name != "dead-letters":
            p.add_argument("--registry", required=True)
        if name == "produce":
            p.add_argument("--source", required=True)
            p.add_argument("--unknown-id", type=int, default=987_654)
            p.add_argument("image", type=Path)
        else:
            p.add_argument("--frame-id", required=True)
    args = ap.parse_args()
    {"produce": produce, "consume": consume, "dead-letters": dead_letters}[args.command](args)


if __name__ == "__main__":
    main()
