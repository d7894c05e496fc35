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

/// Vigil's record codec, for the criterion benches of the per-frame hot paths
/// (`benches/benches/codec.rs`).
#[doc(hidden)]
pub mod codec {
    use std::collections::HashMap;

    use crate::codec::{DetectedObject, DetectionResult, Frame, ImageEncoding};

    /// A Frame carrying `image`, encoded as `vigil produce` writes it.
    pub fn encode_frame(image: &[u8]) -> Vec<u8> {
        let frame = Frame {
            frame_id: "5f0c6c1e-8d4b-4f43-9d67-1b1b4f7d2a10".into(),
            source: "cam-1".into(),
            seq: 7,
            captured_at_us: 1_700_000_000_000_000,
            encoding: ImageEncoding::sniff(image),
            width: None,
            height: None,
            data: image.to_vec(),
            attributes: HashMap::from([("file".to_string(), "dog.jpg".to_string())]),
            session: Some("0b7e7c1a-3f8e-4a55-9a8e-2f4f2b1c9d11".into()),
        };
        frame.encode().expect("a valid frame encodes")
    }

    /// Decodes a Frame record as the detector does; the length of its image.
    pub fn decode_frame(bytes: &[u8]) -> usize {
        Frame::decode(bytes).expect("a frame record").data.len()
    }

    /// A DetectionResult with `objects` detections, encoded as the detector writes it.
    pub fn encode_result(objects: usize) -> Vec<u8> {
        let object = |i: usize| DetectedObject {
            label: "person".into(),
            class_id: 0,
            score: 0.5 + (i % 50) as f32 / 100.0,
            x_min: i as f32,
            y_min: 2.0 * i as f32,
            x_max: 100.0 + i as f32,
            y_max: 200.0 + i as f32,
        };
        let result = DetectionResult {
            frame_id: "5f0c6c1e-8d4b-4f43-9d67-1b1b4f7d2a10".into(),
            source: "cam-1".into(),
            seq: 7,
            captured_at_us: 1_700_000_000_000_000,
            width: 768,
            height: 576,
            model_name: "nanodet-g".into(),
            model_version: "human-models@3.0.4".into(),
            detections: (0..objects).map(object).collect(),
            processed_at_us: 1_700_000_000_050_000,
            batch_size: 8,
            inference_ms: 25.0,
            source_partition: 3,
            source_offset: 42,
        };
        result.encode().expect("a valid result encodes")
    }
}
