//! The corpus of valid but unusual images in `tests/fixtures/unusual` (grayscale, 16-bit,
//! alpha, palettes, progressive, CMYK and YCCK JPEGs, BMP, WebP, GIF, 1×1, extreme aspect
//! ratios, EXIF rotation), made by its `make.py` with Pillow. Cameras rarely send them,
//! but scanners, print workflows and phones do, and refusing one loses a valid frame.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{decode_rgb8, DecodeLimits};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/unusual")
}

/// Every image of the corpus, `(file name, bytes)`, sorted by name.
pub(crate) fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir())
        .expect("tests/fixtures/unusual is readable")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| !matches!(path.extension().and_then(|e| e.to_str()), Some("py" | "json")))
        .map(|path| {
            let name = path.file_name().expect("a file name").to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("a readable fixture"))
        })
        .collect();
    files.sort();
    files
}

/// What `make.py` recorded for one file: the displayed size and a few pixels as Pillow
/// shows them.
#[derive(Deserialize)]
struct Expected {
    width: u32,
    height: u32,
    lossy: bool,
    pixels: Vec<(u32, u32, [u8; 3])>,
}

/// Lossless formats must match exactly; for lossy ones, the decoders (libjpeg-turbo
/// versions, `image-webp` against libwebp) and the YCCK round trip may differ a little.
/// A wrong colour conversion (CMYK not inverted, K ignored) is off by far more.
const LOSSY_TOLERANCE: u8 = 10;

#[test]
fn every_unusual_image_decodes_to_what_pillow_shows() {
    let expected: BTreeMap<String, Expected> =
        serde_json::from_str(&std::fs::read_to_string(dir().join("expected.json")).unwrap()).unwrap();
    let corpus = corpus();
    assert_eq!(corpus.len(), expected.len(), "every file has an entry in expected.json: run make.py again");
    let mut failures = Vec::new();
    for (name, bytes) in &corpus {
        let want = &expected[name];
        let rgb = match decode_rgb8(bytes, &DecodeLimits::default()) {
            Ok(rgb) => rgb,
            Err(e) => {
                failures.push(format!("{name}: refused ({}): {e}", e.kind()));
                continue;
            }
        };
        if rgb.dimensions() != (want.width, want.height) {
            failures.push(format!("{name}: {:?}, displayed {}x{}", rgb.dimensions(), want.width, want.height));
            continue;
        }
        let tolerance = if want.lossy { LOSSY_TOLERANCE } else { 0 };
        for &(x, y, pixel) in &want.pixels {
            let got = rgb.get_pixel(x, y).0;
            if got.iter().zip(pixel).any(|(&g, w)| g.abs_diff(w) > tolerance) {
                failures.push(format!("{name}: pixel ({x}, {y}) is {got:?}, Pillow shows {pixel:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
