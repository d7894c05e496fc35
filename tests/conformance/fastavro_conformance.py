"""What fastavro computes for Vigil's schemas, as one JSON object on stdout, for
tests/tests/avro_conformance.rs to compare with Vigil and the Java reference: every
version's Parsing Canonical Form and fingerprint (the 8 bytes a single-object record
carries) and the single-object encoding of the samples.

    python fastavro_conformance.py SCHEMAS_DIR SAMPLES_JSON [RECORDS_JSON]

SAMPLES_JSON holds one value per record in Avro's JSON encoding. RECORDS_JSON, when given,
maps a record name to the hex of a single-object record written by another implementation:
each is decoded (every version known, by its fingerprint) and encoded again, under
"reencoded". fastavro has no single-object encoder: the header is written by hand, as a
user's program would (schemas/README.md).
"""

import io
import json
import sys
from importlib.metadata import version
from pathlib import Path

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

MAGIC = b"\xc3\x01"


def main(argv):
    if len(argv) < 3:
        sys.exit("usage: fastavro_conformance.py SCHEMAS_DIR SAMPLES_JSON [RECORDS_JSON]")
    schemas = Path(argv[1])
    samples = json.loads(Path(argv[2]).read_text())
    records = json.loads(Path(argv[3]).read_text()) if len(argv) > 3 else {}

    by_record = {}
    for line in (schemas / "versions.tsv").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        record, number, file = line.split("\t")[:3]
        schema = parse_schema(json.loads((schemas / file).read_text()))
        by_record.setdefault(record, []).append((int(number), file, schema))

    out = {"implementation": f"fastavro {version('fastavro')}", "schemas": [], "encoded": {}, "reencoded": {}}
    for record, versions in by_record.items():
        writers = {}
        for number, file, schema in versions:
            form = to_parsing_canonical_form(schema)
            wire = fingerprint(form, "CRC-64-AVRO")  # hex, in the order the bytes are written
            writers[bytes.fromhex(wire)] = schema
            out["schemas"].append(
                {"record": record, "version": number, "file": file, "canonical_form": form, "fingerprint": wire}
            )
        newest = max(versions, key=lambda v: v[0])[2]
        header = MAGIC + bytes.fromhex(fingerprint(to_parsing_canonical_form(newest), "CRC-64-AVRO"))

        def encode(value):
            body = io.BytesIO()
            fastavro.schemaless_writer(body, newest, value)
            return (header + body.getvalue()).hex()

        if record in samples:
            (value,) = list(fastavro.json_reader(io.StringIO(json.dumps(samples[record])), newest))
            out["encoded"][record] = encode(value)
        if record in records:
            data = bytes.fromhex(records[record])
            if data[:2] != MAGIC or data[2:10] not in writers:
                sys.exit(f"{record}: not a single-object record of a known version: {data[:10].hex()}")
            value = fastavro.schemaless_reader(io.BytesIO(data[10:]), writers[data[2:10]], newest)
            out["reencoded"][record] = encode(value)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main(sys.argv)
