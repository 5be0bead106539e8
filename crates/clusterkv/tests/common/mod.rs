//! What the command-line tests share.

use std::path::PathBuf;

/// The default model and text in the workspace's `assets/`, when `cargo xtask fetch` has
/// fetched them.
pub fn assets() -> Option<(PathBuf, PathBuf)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets");
    let (model, text) = (dir.join(ckv_eval::DEFAULT_MODEL), dir.join(ckv_eval::DEFAULT_TEXT));
    (model.exists() && text.exists()).then_some((model, text))
}
