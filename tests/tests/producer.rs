//! `vigil produce` end to end: a producer killed with `kill -9` mid-run and run again
//! with the same command stores every frame once, and a source that breaks the input
//! contract is refused before anything is sent.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vigil_tests::{serial, stop, Pipeline};

/// A 64x48 24-bit BMP, a different colour for every `index` (the model decodes BMP; the
/// test crate has no image encoder).
fn bmp(index: u32) -> Vec<u8> {
    let (w, h) = (64u32, 48u32);
    let row = w * 3; // a multiple of 4: no padding
    let size = 54 + row * h;
    let mut out = Vec::with_capacity(size as usize);
    out.extend_from_slice(b"BM");
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&54u32.to_le_bytes());
    out.extend_from_slice(&40u32.to_le_bytes());
    out.extend_from_slice(&(w as i32).to_le_bytes());
    out.extend_from_slice(&(h as i32).to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&24u16.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // no compression
    out.extend_from_slice(&(row * h).to_le_bytes());
    out.extend_from_slice(&[0; 16]);
    for y in 0..h {
        for x in 0..w {
            out.extend_from_slice(&[(x * 4) as u8, (y * 5) as u8, (index * 37 % 256) as u8]);
        }
    }
    out
}

/// `n` images in `dir/frames`, two of them with the same bytes (in different folders).
fn image_dir(dir: &Path, n: u32) -> PathBuf {
    let root = dir.join("frames");
    std::fs::create_dir_all(root.join("a")).unwrap();
    std::fs::create_dir_all(root.join("b")).unwrap();
    std::fs::write(root.join("a/same.bmp"), bmp(1000)).unwrap();
    std::fs::write(root.join("b/same.bmp"), bmp(1000)).unwrap();
    for i in 0..n - 2 {
        std::fs::write(root.join(format!("{i:03}.bmp")), bmp(i)).unwrap();
    }
    root
}

/// Frames in `images` so far.
fn images_records(p: &Pipeline) -> usize {
    p.read_topic(&p.images).len()
}

/// kill -9 a producer while it sends a directory, run the same command again: the sink
/// stores one row per file (the rerun resends the delivered frames with the same ids)
/// and `vigil verify` is exact, counting the resent frames as input_resends.
#[test]
fn a_producer_killed_mid_run_and_run_again_stores_every_frame_once() {
    let _serial = serial();
    let p = Pipeline::start("produce-rerun", Default::default());
    let files = 40u32;
    let dir = image_dir(&p.dir, files);
    let dir_arg = dir.display().to_string();

    let mut first = p.spawn("produce-1", &["produce", &dir_arg, "--fps", "10"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while images_records(&p) < 5 {
        assert!(first.is_running(), "the producer finished before it was killed:\n{}", first.stderr());
        assert!(Instant::now() < deadline, "no frames in images after 60 s:\n{}", first.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    first.kill9();
    std::thread::sleep(Duration::from_millis(500)); // a produce request already on the wire
    let sent_before = images_records(&p);
    assert!(sent_before < files as usize, "the kill came too late: {sent_before} frames already sent");

    p.produce(&[&dir_arg]);
    assert_eq!(images_records(&p), sent_before + files as usize);

    let mut detector = p.detector("detector", None);
    let mut sink = p.sink("sink");
    p.wait_rows(u64::from(files), Duration::from_secs(180), &mut [&mut detector, &mut sink]);
    let report = p.wait_exact(Duration::from_secs(60));
    p.assert_exact(&report, u64::from(files), 0);
    assert_eq!(report["input_resends"], sent_before as u64, "{report}");
    eprintln!(
        "[producer] killed after {sent_before} of {files} frames, reran: rows {}, input_resends {}, exact {}",
        report["rows"], report["input_resends"], report["exact"]
    );
    stop(&mut detector);
    stop(&mut sink);
}

/// A `--source` that breaks the input contract is a usage error (exit 2) that says what
/// is wrong, before anything is sent.
#[test]
fn a_source_that_breaks_the_input_contract_is_refused() {
    let p = Pipeline::start("produce-bad-source", Default::default());
    let dir = image_dir(&p.dir, 3);
    let long = "c".repeat(256);
    for (source, says) in [("cam\u{1}7", "control character"), (long.as_str(), "above the limit of 255 bytes")] {
        let out = p.command(&["produce", &dir.display().to_string(), "--source", source]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{source:?}: {stderr}");
        assert!(stderr.contains("producer.source_id") && stderr.contains(says), "{source:?}: {stderr}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("delivered"), "{source:?}: sent something");
    }
}
