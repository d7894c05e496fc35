//! `schemas/versions.tsv` checked against the `.avsc` files and against what this build
//! reads, so that a schema cannot change without becoming a new, recorded, readable
//! version (records written with every earlier one are in users' topics).

use std::path::{Path, PathBuf};

use apache_avro::schema_compatibility::SchemaCompatibility;

use super::canonical;
use super::schema::RecordType;

struct Version {
    record: String,
    version: u32,
    file: String,
    fingerprint: String,
    earlier: String,
}

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas")
}

fn recorded() -> Vec<Version> {
    let text = std::fs::read_to_string(schemas_dir().join("versions.tsv")).expect("schemas/versions.tsv");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            assert_eq!(cols.len(), 5, "schemas/versions.tsv: five tab-separated columns: {line:?}");
            Version {
                record: cols[0].to_owned(),
                version: cols[1].parse().unwrap_or_else(|_| panic!("a version number: {line:?}")),
                file: cols[2].to_owned(),
                fingerprint: cols[3].to_owned(),
                earlier: cols[4].to_owned(),
            }
        })
        .collect()
}

fn wire_hex(fingerprint: u64) -> String {
    fingerprint.to_le_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

fn avsc_files(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for sub in ["", "history"] {
        for entry in std::fs::read_dir(dir.join(sub)).expect("schemas/ and schemas/history/") {
            let name = entry.expect("a directory entry").file_name().into_string().expect("a UTF-8 name");
            if name.ends_with(".avsc") {
                files.push(if sub.is_empty() { name } else { format!("{sub}/{name}") });
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_schema_file_is_a_recorded_version_with_its_fingerprint() {
    let dir = schemas_dir();
    let versions = recorded();
    let mut listed: Vec<String> = versions.iter().map(|v| v.file.clone()).collect();
    listed.sort();
    assert_eq!(avsc_files(&dir), listed, "every .avsc under schemas/ is one row of schemas/versions.tsv");
    for v in &versions {
        let text = std::fs::read_to_string(dir.join(&v.file)).expect("the file of a version");
        let fingerprint = wire_hex(canonical::fingerprint(&text).expect("a valid schema"));
        assert_eq!(
            fingerprint, v.fingerprint,
            "schemas/{} no longer parses records as {} version {} did (its fingerprint is now {fingerprint}). A \
             change that alters the canonical form is a new version: keep the old file as \
             schemas/history/{}.v{}.avsc, add a row for the new version, embed both in \
             pipeline/src/codec/schema.rs and make sure the new one reads the old (this test checks that)",
            v.file, v.record, v.version, v.record, v.version
        );
        let schema = apache_avro::Schema::parse_str(&text).expect("a valid schema");
        let earlier = schema.fingerprint::<apache_avro::rabin::Rabin>().bytes;
        let earlier: String = earlier.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(earlier, v.earlier, "schemas/{}: the earlier (pre-specification) fingerprint", v.file);
    }
}

#[test]
fn this_build_reads_every_recorded_version_and_writes_the_newest() {
    let versions = recorded();
    for record in RecordType::ALL {
        let mut rows: Vec<&Version> = versions.iter().filter(|v| v.record == record.to_string()).collect();
        rows.sort_by_key(|v| std::cmp::Reverse(v.version));
        let numbers: Vec<u32> = rows.iter().map(|v| v.version).collect();
        let expected: Vec<u32> = (1..=rows.len() as u32).rev().collect();
        assert_eq!(numbers, expected, "{record}: versions 1, 2, … without gaps");
        assert_eq!(rows[0].file, format!("{record}.avsc"), "{record}: the newest version is schemas/{record}.avsc");
        let embedded: Vec<String> = record.schemas().writers.iter().map(|s| wire_hex(s.fingerprint)).collect();
        let listed: Vec<String> = rows.iter().map(|v| v.fingerprint.clone()).collect();
        assert_eq!(embedded, listed, "{record}: pipeline/src/codec/schema.rs embeds every version, newest first");
    }
}

#[test]
fn the_newest_version_reads_records_of_every_earlier_one() {
    for record in RecordType::ALL {
        let writers = &record.schemas().writers;
        for (i, older) in writers.iter().enumerate().skip(1) {
            if let Err(e) = SchemaCompatibility::can_read(&older.schema, &writers[0].schema) {
                panic!("{record}: the newest schema cannot read version {} records: {e}", writers.len() - i);
            }
        }
    }
}
