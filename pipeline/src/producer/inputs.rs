//! Where frames come from: files, directories and globs, or generated test images.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use image::codecs::jpeg::JpegEncoder;
use image::{Rgb, RgbImage};

use super::ProducerError;
use crate::codec::ImageEncoding;

/// One frame to publish: who sent it and the encoded bytes (never decoded here).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct FrameInput {
    /// Source (camera) id: record key and per-source sequence.
    pub source: String,
    /// The encoded image, sent unchanged.
    pub data: Vec<u8>,
    /// Width in pixels when known without decoding (generated images), else `None`.
    pub width: Option<i32>,
    /// Height in pixels when known without decoding, else `None`.
    pub height: Option<i32>,
    /// Metadata copied into `Frame.attributes` (e.g. `file`).
    pub attributes: HashMap<String, String>,
}

impl FrameInput {
    /// A frame from `source` with `data` and no metadata.
    pub(super) fn new(source: impl Into<String>, data: Vec<u8>) -> Self {
        Self { source: source.into(), data, width: None, height: None, attributes: HashMap::new() }
    }
}

impl From<(String, Vec<u8>)> for FrameInput {
    fn from((source, data): (String, Vec<u8>)) -> Self {
        FrameInput::new(source, data)
    }
}

fn is_glob(arg: &str) -> bool {
    arg.contains(['*', '?', '['])
}

/// Expands PATH arguments into a sorted file list: a file as is, a directory's files
/// (recursively, sorted), a glob's matching files. A path that matches nothing is an error.
pub(super) fn expand_paths(args: &[PathBuf]) -> Result<Vec<PathBuf>, ProducerError> {
    let mut files = Vec::new();
    for arg in args {
        if arg.is_file() {
            files.push(arg.clone());
        } else if arg.is_dir() {
            let before = files.len();
            walk_dir(arg, &mut files)?;
            files[before..].sort();
        } else {
            let text = arg.to_string_lossy();
            if !is_glob(&text) {
                return Err(ProducerError::Input { path: arg.clone(), reason: "no such file or directory".into() });
            }
            let pattern = glob::glob(&text)
                .map_err(|e| ProducerError::Input { path: arg.clone(), reason: format!("bad glob pattern: {e}") })?;
            let mut matched: Vec<PathBuf> = pattern.filter_map(Result::ok).filter(|p| p.is_file()).collect();
            if matched.is_empty() {
                return Err(ProducerError::Input { path: arg.clone(), reason: "the pattern matches no files".into() });
            }
            matched.sort();
            files.extend(matched);
        }
    }
    Ok(files)
}

fn walk_dir(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ProducerError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| ProducerError::Input { path: dir.to_path_buf(), reason: e.to_string() })?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            walk_dir(&path, out)?;
        } else if path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// The image format of a file from its first bytes (`Unknown` when it cannot be read).
pub(super) fn sniff_file(path: &Path) -> ImageEncoding {
    let mut head = Vec::with_capacity(16);
    match std::fs::File::open(path).and_then(|f| f.take(16).read_to_end(&mut head)) {
        Ok(_) => ImageEncoding::sniff(&head),
        Err(_) => ImageEncoding::Unknown,
    }
}

/// Reads one file as a frame of `source` (attribute `file` = the path).
pub(super) fn read_file(source: &str, path: &Path) -> Result<FrameInput, ProducerError> {
    let data =
        std::fs::read(path).map_err(|e| ProducerError::Input { path: path.to_path_buf(), reason: e.to_string() })?;
    let mut input = FrameInput::new(source, data);
    input.attributes.insert("file".into(), path.display().to_string());
    Ok(input)
}

/// Width and height of generated test images.
pub(super) const SYNTHETIC_SIZE: (u32, u32) = (320, 240);

/// Generates test image number `index` (a JPEG with a gradient and a few coloured boxes,
/// different for every index; deterministic).
pub(super) fn synthetic_jpeg(index: u64) -> Vec<u8> {
    let (w, h) = SYNTHETIC_SIZE;
    let mut img =
        RgbImage::from_fn(w, h, |x, y| Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, ((index * 37) % 256) as u8]));
    let mut state = index.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    for _ in 0..3 {
        let (bw, bh) = (20 + next() % 100, 20 + next() % 100);
        let (x0, y0) = (next() % (w - bw), next() % (h - bh));
        let colour = Rgb([next() as u8, next() as u8, next() as u8]);
        for y in y0..y0 + bh {
            for x in x0..x0 + bw {
                img.put_pixel(x, y, colour);
            }
        }
    }
    let mut out = Cursor::new(Vec::new());
    JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(&img)
        .expect("encoding an in-memory RGB image as JPEG cannot fail");
    out.into_inner()
}

/// Generated test image `index` as a frame of `source`.
pub(super) fn synthetic_frame(source: &str, index: u64) -> FrameInput {
    let mut input = FrameInput::new(source, synthetic_jpeg(index));
    input.width = Some(SYNTHETIC_SIZE.0 as i32);
    input.height = Some(SYNTHETIC_SIZE.1 as i32);
    input.attributes.insert("synthetic".into(), index.to_string());
    input
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::ImageEncoding;

    #[test]
    fn synthetic_images_are_distinct_jpegs() {
        let a = synthetic_jpeg(0);
        let b = synthetic_jpeg(1);
        assert_eq!(ImageEncoding::sniff(&a), ImageEncoding::Jpeg);
        assert_ne!(a, b);
        assert_eq!(a, synthetic_jpeg(0), "deterministic");
        let decoded = image::load_from_memory(&a).unwrap();
        assert_eq!((decoded.width(), decoded.height()), SYNTHETIC_SIZE);
    }

    #[test]
    fn sniffs_a_file_from_its_first_bytes() {
        let dir = std::env::temp_dir().join(format!("vigil-sniff-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.jpg"), synthetic_jpeg(3)).unwrap();
        std::fs::write(dir.join("README.md"), b"# not an image").unwrap();
        assert_eq!(sniff_file(&dir.join("a.jpg")), ImageEncoding::Jpeg);
        assert_eq!(sniff_file(&dir.join("README.md")), ImageEncoding::Unknown);
        assert_eq!(sniff_file(&dir.join("missing.png")), ImageEncoding::Unknown);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn expands_files_dirs_and_globs() {
        let dir = std::env::temp_dir().join(format!("vigil-inputs-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for name in ["b.jpg", "a.jpg", "sub/c.png", ".hidden"] {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        let files = expand_paths(std::slice::from_ref(&dir)).unwrap();
        let names: Vec<String> = files.iter().map(|p| p.strip_prefix(&dir).unwrap().display().to_string()).collect();
        assert_eq!(names, ["a.jpg", "b.jpg", "sub/c.png"]);
        let globbed = expand_paths(&[dir.join("*.jpg")]).unwrap();
        assert_eq!(globbed.len(), 2);
        assert!(expand_paths(&[dir.join("nope.jpg")]).is_err());
        assert!(expand_paths(&[dir.join("*.gif")]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
