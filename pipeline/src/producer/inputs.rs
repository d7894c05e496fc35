//! Where frames come from: files, directories and globs, or generated test images, and
//! which `frame_id` each gets.
//!
//! A file's frame id is a name-based UUID (v5) of its source, its path relative to the
//! argument that named it (the path as given when two arguments yield the same relative
//! path), the pass (`--loop`) and a digest of its bytes: sending the
//! same files again, after a crash say, gives the same ids, so the sink's primary key
//! stores each frame once and `vigil verify` counts the copies as `input_resends`. The
//! path keeps two identical frames of a static camera apart; the digest keeps a file
//! that changed between runs apart from its old version. A generated image gets a
//! random id: a rerun of `--synthetic N` sends N new frames.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use image::codecs::jpeg::JpegEncoder;
use image::{Rgb, RgbImage};

use uuid::Uuid;

use super::ProducerError;
use crate::codec::ImageEncoding;

/// Namespace of the name-based frame ids of files (a fixed, random UUID: never change
/// it, or a rerun after an upgrade would store every frame again).
const FILE_FRAMES: Uuid = Uuid::from_u128(0xe37769e7_d0fb_4dc4_9f3d_8a37a69a06ec);

/// One frame to publish: who sent it and the encoded bytes (never decoded here).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct FrameInput {
    /// The frame's id (see the module doc).
    pub frame_id: String,
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
    /// A frame from `source` with `data`, a random id and no metadata.
    pub(super) fn new(source: impl Into<String>, data: Vec<u8>) -> Self {
        Self {
            frame_id: Uuid::new_v4().to_string(),
            source: source.into(),
            data,
            width: None,
            height: None,
            attributes: HashMap::new(),
        }
    }
}

/// A file to send, and its name relative to the argument that named it (the part of its
/// frame id that does not depend on where the command runs from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InputFile {
    pub path: PathBuf,
    /// The path below a directory or a glob's fixed prefix; a file's own name.
    pub name: String,
}

/// The frame id of pass `pass` over file `name` of `source` holding `data`.
pub(super) fn file_frame_id(source: &str, name: &str, pass: u64, data: &[u8]) -> String {
    let digest = Uuid::new_v5(&FILE_FRAMES, data);
    let identity = format!("{source}\n{name}\n{pass}\n{digest}");
    Uuid::new_v5(&FILE_FRAMES, identity.as_bytes()).to_string()
}

fn is_glob(arg: &str) -> bool {
    arg.contains(['*', '?', '['])
}

/// Expands PATH arguments into a sorted file list: a file as is, a directory's files
/// (recursively, sorted), a glob's matching files. A path that matches nothing is an error.
pub(super) fn expand_paths(args: &[PathBuf]) -> Result<Vec<InputFile>, ProducerError> {
    let mut files = Vec::new();
    for arg in args {
        if arg.is_file() {
            let name = arg.file_name().map_or_else(|| arg.display().to_string(), |n| n.to_string_lossy().into());
            files.push(InputFile { path: arg.clone(), name });
        } else if arg.is_dir() {
            let mut found = Vec::new();
            walk_dir(arg, &mut found)?;
            found.sort();
            files.extend(found.into_iter().map(|path| relative_to(arg, path)));
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
            let base: PathBuf = arg.components().take_while(|c| !is_glob(&c.as_os_str().to_string_lossy())).collect();
            files.extend(matched.into_iter().map(|path| relative_to(&base, path)));
        }
    }
    disambiguate(&mut files);
    Ok(files)
}

/// Names shared by files of different arguments (`a/x.jpg b/x.jpg`, two directories with
/// the same layout) become the paths as given: a name, with the content digest, is what
/// makes a frame id, and two files must never share one.
fn disambiguate(files: &mut [InputFile]) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for file in files.iter() {
        *seen.entry(file.name.clone()).or_default() += 1;
    }
    for file in files.iter_mut().filter(|f| seen[&f.name] > 1) {
        file.name = file.path.to_string_lossy().into_owned();
    }
}

fn relative_to(base: &Path, path: PathBuf) -> InputFile {
    let name = path.strip_prefix(base).unwrap_or(&path).to_string_lossy().into_owned();
    InputFile { path, name }
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

/// Reads one file as pass `pass`'s frame of `source` (attribute `file` = the path).
pub(super) fn read_file(source: &str, file: &InputFile, pass: u64) -> Result<FrameInput, ProducerError> {
    let path = &file.path;
    let data =
        std::fs::read(path).map_err(|e| ProducerError::Input { path: path.to_path_buf(), reason: e.to_string() })?;
    let frame_id = file_frame_id(source, &file.name, pass, &data);
    let mut input = FrameInput { frame_id, ..FrameInput::new(source, data) };
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
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a.jpg", "b.jpg", "sub/c.png"]);
        assert!(files.iter().all(|f| f.path == dir.join(&f.name)));
        let globbed = expand_paths(&[dir.join("*.jpg")]).unwrap();
        assert_eq!(globbed.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(), ["a.jpg", "b.jpg"]);
        let nested = expand_paths(&[dir.join("s*").join("*.png")]).unwrap();
        assert_eq!(nested[0].name, "sub/c.png");
        let one = expand_paths(&[dir.join("sub/c.png")]).unwrap();
        assert_eq!(one[0].name, "c.png");
        // Two files of the same name and bytes in two arguments stay two frames.
        for twin in ["x/same.jpg", "y/same.jpg"] {
            std::fs::create_dir_all(dir.join(twin).parent().unwrap()).unwrap();
            std::fs::write(dir.join(twin), b"same bytes").unwrap();
        }
        for args in [[dir.join("x/same.jpg"), dir.join("y/same.jpg")], [dir.join("x"), dir.join("y")]] {
            let twins = expand_paths(&args).unwrap();
            assert_ne!(twins[0].name, twins[1].name, "{args:?}");
            assert_ne!(
                file_frame_id("cam", &twins[0].name, 0, b"same bytes"),
                file_frame_id("cam", &twins[1].name, 0, b"same bytes")
            );
        }
        assert!(expand_paths(&[dir.join("nope.jpg")]).is_err());
        assert!(expand_paths(&[dir.join("*.gif")]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_files_frame_id_depends_on_source_name_pass_and_bytes_only() {
        let id = file_frame_id("cam-0", "sub/a.jpg", 0, b"jpeg bytes");
        assert_eq!(id, file_frame_id("cam-0", "sub/a.jpg", 0, b"jpeg bytes"), "deterministic");
        assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 5);
        for other in [
            file_frame_id("cam-1", "sub/a.jpg", 0, b"jpeg bytes"),
            file_frame_id("cam-0", "sub/b.jpg", 0, b"jpeg bytes"),
            file_frame_id("cam-0", "sub/a.jpg", 1, b"jpeg bytes"),
            file_frame_id("cam-0", "sub/a.jpg", 0, b"jpeg bytez"),
        ] {
            assert_ne!(id, other);
        }
    }
}
