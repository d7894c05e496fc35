//! Test inputs shared by the unit tests and the integration tests (`tests/`), so the
//! bad-input cases the detector must dead-letter are built one way everywhere.

/// A PNG of `width`×`height` whose header is valid but whose pixels were never stored:
/// the shape of a decompression bomb (a decoder that trusts the header allocates
/// width × height × 3 bytes). IHDR, a tiny valid zlib IDAT, IEND, with correct CRCs.
#[doc(hidden)]
pub fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for (name, data) in
        [(&b"IHDR"[..], ihdr), (&b"IDAT"[..], vec![0x78, 0x9c, 0x03, 0, 0, 0, 0, 1]), (&b"IEND"[..], vec![])]
    {
        let mut chunk = name.to_vec();
        chunk.extend_from_slice(&data);
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        png.extend_from_slice(&chunk);
        png.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    png
}

/// CRC-32 (IEEE) as PNG chunks use it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Vigil's side of the Avro conformance test (`tests/tests/avro_conformance.rs`), which
/// compares it with the Java reference implementation and fastavro.
#[doc(hidden)]
pub mod avro {
    use crate::codec::{DetectionResult, Frame, RecordType};

    /// Decodes a single-object record of `record` (`Frame` or `DetectionResult`) as this
    /// build reads it, and encodes it again as this build writes it.
    pub fn reencode(record: &str, bytes: &[u8]) -> Result<Vec<u8>, String> {
        let again = match record {
            "Frame" => Frame::decode(bytes).and_then(|f| f.encode()),
            "DetectionResult" => DetectionResult::decode(bytes).and_then(|r| r.encode()),
            other => return Err(format!("no record {other}")),
        };
        again.map_err(|e| e.to_string())
    }

    /// Every schema version this build reads, current first: `(record, canonical form,
    /// the fingerprint's 8 bytes as written after 0xC3 0x01)`.
    pub fn schema_versions() -> Vec<(String, String, [u8; 8])> {
        RecordType::ALL
            .into_iter()
            .flat_map(|record| {
                record
                    .schemas()
                    .writers
                    .iter()
                    .map(move |s| (record.to_string(), s.canonical_form.clone(), s.fingerprint.to_le_bytes()))
            })
            .collect()
    }
}
