"""Vigil's wire format for Python clients: Avro single-object encoding with fastavro.

Every record value is

    0xC3 0x01 | 8-byte CRC-64-AVRO fingerprint of the writer schema (little-endian) | Avro body

(schemas/README.md). The schemas and their fingerprints come from the repository's
schemas/ directory (schemas/versions.tsv lists every version ever written); nothing here
hard-codes a schema.
"""

from __future__ import annotations

import io
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import fastavro
import fastavro.schema

MAGIC = b"\xc3\x01"
HEADER_LEN = len(MAGIC) + 8
MAX_ID_BYTES = 255

# The repository's schemas/, seen from examples/python/.
DEFAULT_SCHEMAS = Path(__file__).resolve().parent.parent.parent / "schemas"


class WireError(Exception):
    """A record or schema that does not fit the wire format; `kind` as in schemas/README.md."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind


def fingerprint(parsed_schema) -> bytes:
    """The 8 bytes that follow 0xC3 0x01: CRC-64-AVRO of the Parsing Canonical Form.

    fastavro returns the fingerprint as hex in exactly the byte order the single-object
    encoding writes (schemas/versions.tsv lists the same strings).
    """
    pcf = fastavro.schema.to_parsing_canonical_form(parsed_schema)
    return bytes.fromhex(fastavro.schema.fingerprint(pcf, "CRC-64-AVRO"))


@dataclass
class Version:
    record: str
    version: int
    path: Path
    fingerprint: bytes  # what the specification computes; what writers write
    earlier: bytes | None  # what older Vigil wrote for the same schema (still read)
    schema: object  # fastavro's parsed schema


def load_versions(schemas_dir: Path, record: str) -> list[Version]:
    """Every version of `record` listed in versions.tsv, oldest first, each checked: the
    fingerprint fastavro computes from the file must be the one versions.tsv lists."""
    tsv = schemas_dir / "versions.tsv"
    try:
        lines = tsv.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise WireError("schema", f"cannot read {tsv}: {e.strerror} (pass --schemas DIR)") from None
    versions = []
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        if cols[0] != record:
            continue
        path = schemas_dir / cols[2]
        try:
            schema = fastavro.schema.parse_schema(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as e:
            raise WireError("schema", f"cannot load {path}: {e}") from None
        v = Version(record, int(cols[1]), path, bytes.fromhex(cols[3]),
                    bytes.fromhex(cols[4]) if len(cols) > 4 and cols[4].strip() else None, schema)
        if fingerprint(schema) != v.fingerprint:
            raise WireError("schema", f"{path}: fastavro computes fingerprint {fingerprint(schema).hex()}, "
                                      f"versions.tsv lists {v.fingerprint.hex()}")
        versions.append(v)
    if not versions:
        raise WireError("schema", f"{tsv} lists no {record} schema")
    return sorted(versions, key=lambda v: v.version)


def load_current(schemas_dir: Path, record: str) -> Version:
    """The newest version of `record` (the one a writer uses)."""
    return load_versions(schemas_dir, record)[-1]


def encode(version: Version, datum: dict) -> bytes:
    """One record value: header, then the Avro binary body written with `version`'s schema."""
    body = io.BytesIO()
    fastavro.schemaless_writer(body, version.schema, datum)
    return MAGIC + version.fingerprint + body.getvalue()


class Decoder:
    """Reads values written with any known version of a record, resolved to the reader
    schema (the current .avsc), as Vigil's own readers do."""

    def __init__(self, schemas_dir: Path, record: str):
        versions = load_versions(schemas_dir, record)
        self.reader = versions[-1].schema
        self.writers = {}
        for v in versions:
            self.writers[v.fingerprint] = v.schema
            if v.earlier:
                self.writers[v.earlier] = v.schema

    def decode(self, value: bytes | None) -> dict:
        if value is None or len(value) < HEADER_LEN or value[:2] != MAGIC:
            raise WireError("not_avro", "the value does not start with 0xC3 0x01 and a fingerprint")
        writer = self.writers.get(value[2:HEADER_LEN])
        if writer is None:
            raise WireError("unknown_schema", f"unknown writer fingerprint {value[2:HEADER_LEN].hex()}")
        body = io.BytesIO(value[HEADER_LEN:])
        try:
            datum = fastavro.schemaless_reader(body, writer, self.reader)
        except Exception as e:  # fastavro raises several types for a bad body
            raise WireError("bad_record", f"the body does not decode: {e}") from None
        if body.tell() != len(value) - HEADER_LEN:
            raise WireError("bad_record", f"{len(value) - HEADER_LEN - body.tell()} trailing bytes")
        return datum


def sniff_encoding(data: bytes) -> str:
    """The ImageEncoding symbol for `data`'s magic bytes (as pipeline/src/codec/frame.rs)."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:2] == b"BM" and len(data) >= 14:
        return "BMP"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return "UNKNOWN"


def check_id(field: str, value: str) -> None:
    """The input contract for `source` and `frame_id` (schemas/README.md): not blank, no
    control characters, at most 255 bytes of UTF-8. Raises ValueError with the reason."""
    if not value.strip():
        raise ValueError(f"{field} is blank: every frame needs a non-empty {field}")
    for i, c in enumerate(value):
        if unicodedata.category(c) == "Cc":
            raise ValueError(f"{field} {value!r} holds the control character {c!r} at position {i}")
    if len(value.encode("utf-8")) > MAX_ID_BYTES:
        raise ValueError(f"{field} is {len(value.encode('utf-8'))} bytes of UTF-8, above the limit of {MAX_ID_BYTES}")


def client_options(args, client_class, connect_timeout_ms: int) -> dict:
    """kafka-python settings shared by both examples: --api-version, if given, and how long
    the first connection may take (2.x: api_version_auto_timeout_ms, 3.x: bootstrap_timeout_ms)."""
    options = {}
    for setting in ("api_version_auto_timeout_ms", "bootstrap_timeout_ms"):
        if setting in client_class.DEFAULT_CONFIG:
            options[setting] = connect_timeout_ms
    if getattr(args, "api_version", None):
        try:
            options["api_version"] = tuple(int(p) for p in args.api_version.split("."))
        except ValueError:
            raise SystemExit(f"error: --api-version {args.api_version!r} is not a version like 2.3") from None
    return options


def bootstrap_failure(bootstrap: str, seconds: float) -> str:
    """Why a client could not bootstrap, with the one known cause that is not the network."""
    import kafka

    message = f"cannot bootstrap from {bootstrap} within {seconds:g} s: no broker reachable there"
    if int(kafka.__version__.split(".")[0]) >= 3:
        message += (" (or, with Vigil's in-memory broker, kafka-python 3.x cannot decode its answer to"
                    " ApiVersions v3/v4: pass --api-version 2.3)")
    return message
