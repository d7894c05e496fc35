//! Parsing Canonical Form and the CRC-64-AVRO fingerprint, exactly as the Avro
//! specification defines them ("Parsing Canonical Form for Schemas", "Schema
//! Fingerprints") and the Java reference implementation computes them
//! (`SchemaNormalization.parsingFingerprint64`).
//!
//! Written here rather than taken from `apache-avro`: its canonical form (0.20) keeps a
//! primitive with a logical type as `{"type":"long"}` where the specification reduces it
//! to `"long"` ([PRIMITIVES], [STRIP]), so the fingerprints of `Frame` and
//! `DetectionResult` (both carry `timestamp-micros`) differed from every conformant
//! client's, and their single-object records were refused as `unknown_schema`. That
//! earlier fingerprint is still read (see [`super::schema`]), never written.

use std::collections::HashSet;

use serde_json::Value;

const PRIMITIVES: [&str; 8] = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"];

/// Why a schema has no canonical form (it is not a valid Avro schema).
#[derive(Debug, thiserror::Error)]
#[error("not an Avro schema: {0}")]
pub(crate) struct NotASchema(String);

/// The Parsing Canonical Form of a schema given as JSON text.
pub(crate) fn parsing_canonical_form(schema_json: &str) -> Result<String, NotASchema> {
    let schema: Value = serde_json::from_str(schema_json).map_err(|e| NotASchema(e.to_string()))?;
    let mut out = String::new();
    Canonical { defined: HashSet::new(), out: &mut out }.write(&schema, "")?;
    Ok(out)
}

/// CRC-64-AVRO (Rabin) of `bytes`, as the specification's reference code computes it.
pub(crate) fn crc64_avro(bytes: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    static TABLE: std::sync::LazyLock<[u64; 256]> = std::sync::LazyLock::new(|| {
        let mut table = [0u64; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut fp = i as u64;
            for _ in 0..8 {
                fp = (fp >> 1) ^ (EMPTY & (fp & 1).wrapping_neg());
            }
            *slot = fp;
        }
        table
    });
    bytes.iter().fold(EMPTY, |fp, &b| (fp >> 8) ^ TABLE[((fp ^ u64::from(b)) & 0xff) as usize])
}

/// The fingerprint a single-object header carries: CRC-64-AVRO of the canonical form.
#[cfg(test)]
pub(crate) fn fingerprint(schema_json: &str) -> Result<u64, NotASchema> {
    parsing_canonical_form(schema_json).map(|pcf| crc64_avro(pcf.as_bytes()))
}

struct Canonical<'a> {
    /// Full names of the named types written so far: later uses are written as the name.
    defined: HashSet<String>,
    out: &'a mut String,
}

impl Canonical<'_> {
    fn write(&mut self, schema: &Value, namespace: &str) -> Result<(), NotASchema> {
        match schema {
            Value::String(name) => self.write_name(name, namespace),
            Value::Array(branches) => {
                self.out.push('[');
                for (i, branch) in branches.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.write(branch, namespace)?;
                }
                self.out.push(']');
                Ok(())
            }
            Value::Object(fields) => match fields.get("type") {
                Some(Value::String(t)) => match t.as_str() {
                    "record" | "error" | "enum" | "fixed" => self.write_named(schema, t, namespace),
                    "array" => self.write_container("array", "items", schema, namespace),
                    "map" => self.write_container("map", "values", schema, namespace),
                    // A primitive, with or without a logical type, or a named type's name.
                    other => self.write_name(other, namespace),
                },
                Some(nested @ (Value::Object(_) | Value::Array(_))) => self.write(nested, namespace),
                _ => Err(NotASchema(format!("no \"type\" in {schema}"))),
            },
            other => Err(NotASchema(format!("{other} is not a schema"))),
        }
    }

    /// A primitive, or a reference to a named type defined earlier.
    fn write_name(&mut self, name: &str, namespace: &str) -> Result<(), NotASchema> {
        if PRIMITIVES.contains(&name) {
            self.out.push_str(&format!("\"{name}\""));
            return Ok(());
        }
        let full = full_name(name, namespace);
        if !self.defined.contains(&full) {
            return Err(NotASchema(format!("{full:?} is used before it is defined")));
        }
        self.out.push_str(&format!("\"{full}\""));
        Ok(())
    }

    fn write_container(&mut self, kind: &str, key: &str, schema: &Value, namespace: &str) -> Result<(), NotASchema> {
        let inner = schema.get(key).ok_or_else(|| NotASchema(format!("{kind} without \"{key}\"")))?;
        self.out.push_str(&format!("{{\"type\":\"{kind}\",\"{key}\":"));
        self.write(inner, namespace)?;
        self.out.push('}');
        Ok(())
    }

    fn write_named(&mut self, schema: &Value, kind: &str, enclosing: &str) -> Result<(), NotASchema> {
        let name = schema
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| NotASchema(format!("a {kind} without a \"name\"")))?;
        let namespace = match name.rsplit_once('.') {
            Some((ns, _)) => ns,
            None => schema.get("namespace").and_then(Value::as_str).unwrap_or(enclosing),
        };
        let full = full_name(name, namespace);
        if !self.defined.insert(full.clone()) {
            return Err(NotASchema(format!("{full:?} is defined twice")));
        }
        self.out.push_str(&format!("{{\"name\":\"{full}\",\"type\":\"{kind}\""));
        match kind {
            "enum" => {
                let symbols: Vec<String> = schema
                    .get("symbols")
                    .and_then(Value::as_array)
                    .ok_or_else(|| NotASchema(format!("enum {full} without \"symbols\"")))?
                    .iter()
                    .map(|s| s.as_str().map(|s| format!("\"{s}\"")))
                    .collect::<Option<_>>()
                    .ok_or_else(|| NotASchema(format!("enum {full}: a symbol is not a string")))?;
                self.out.push_str(&format!(",\"symbols\":[{}]", symbols.join(",")));
            }
            "fixed" => {
                let size = schema
                    .get("size")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| NotASchema(format!("fixed {full} without an integer \"size\"")))?;
                self.out.push_str(&format!(",\"size\":{size}"));
            }
            _ => {
                let fields = schema
                    .get("fields")
                    .and_then(Value::as_array)
                    .ok_or_else(|| NotASchema(format!("record {full} without \"fields\"")))?;
                self.out.push_str(",\"fields\":[");
                for (i, field) in fields.iter().enumerate() {
                    let field_name = field
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| NotASchema(format!("a field of {full} without a \"name\"")))?;
                    let field_type = field
                        .get("type")
                        .ok_or_else(|| NotASchema(format!("{full}.{field_name} without a \"type\"")))?;
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.out.push_str(&format!("{{\"name\":\"{field_name}\",\"type\":"));
                    self.write(field_type, namespace)?;
                    self.out.push('}');
                }
                self.out.push(']');
            }
        }
        self.out.push('}');
        Ok(())
    }
}

fn full_name(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}.{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cases from the Avro specification's text and its test data (`share/test/data/
    /// schema-tests.txt`): canonical forms and the fingerprints Java computes for them.
    #[test]
    fn canonical_forms_and_fingerprints_follow_the_specification() {
        let cases = [
            (r#""int""#, r#""int""#),
            (r#"{"type":"long","logicalType":"timestamp-micros"}"#, r#""long""#),
            (r#"{"type":"fixed","name":"Bar","namespace":"x","size":"0"}"#, "ERR"),
            (r#"{"type":"fixed","name":"x.Bar","size":10,"doc":"d"}"#, r#"{"name":"x.Bar","type":"fixed","size":10}"#),
            (
                r#"{"type":"record","name":"R","namespace":"a","fields":[{"name":"f","type":{"type":"enum","name":"E","symbols":["X"]}},{"name":"g","type":"E","default":"X"}]}"#,
                r#"{"name":"a.R","type":"record","fields":[{"name":"f","type":{"name":"a.E","type":"enum","symbols":["X"]}},{"name":"g","type":"a.E"}]}"#,
            ),
            (
                r#"{"type":"map","values":{"type":"array","items":"bytes"}}"#,
                r#"{"type":"map","values":{"type":"array","items":"bytes"}}"#,
            ),
            (r#"["null",{"type":"int","logicalType":"date"}]"#, r#"["null","int"]"#),
        ];
        for (schema, expected) in cases {
            match parsing_canonical_form(schema) {
                Ok(pcf) => assert_eq!(pcf, expected, "{schema}"),
                Err(e) => assert_eq!("ERR", expected, "{schema}: {e}"),
            }
        }
    }

    /// Fingerprints from the specification's test data (`schema-tests.txt`, Java's values).
    #[test]
    fn fingerprints_of_primitives_match_the_reference() {
        for (schema, expected) in [
            (r#""null""#, 7_195_948_357_588_979_594_i64),
            (r#""boolean""#, -6_970_731_678_124_411_036_i64),
            (r#""int""#, 8_247_732_601_305_521_295_i64),
            (r#""long""#, -3_434_872_931_120_570_953_i64),
            (r#""string""#, -8_142_146_995_180_207_161_i64),
            (r#"{"type":"fixed","name":"foo","size":15}"#, 1_756_455_273_707_447_556_i64),
            (
                r#"{"type":"record","name":"foo","fields":[{"name":"f1","type":"boolean"}]}"#,
                7_843_277_075_252_814_651_i64,
            ),
        ] {
            assert_eq!(fingerprint(schema).unwrap() as i64, expected, "{schema}");
        }
    }
}
