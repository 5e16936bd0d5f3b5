use serde::{Deserialize, Serialize};

use longctx_backend::BackendInfo;
use longctx_core::model::ModelProvenance;

/// The burn version longctx is pinned to (`=0.21.0` in the workspace manifest; a test keeps
/// the two in step).
pub const BURN_VERSION: &str = "0.21.0";

/// Where a result came from: enough to reproduce it or to tell two results apart.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Provenance {
    pub longctx_version: String,
    pub git_commit: String,
    /// Whether tracked files differed from the commit at build time.
    pub git_dirty: String,
    pub rustc: String,
    pub burn: String,
    pub backend: BackendInfo,
    pub model: ModelProvenance,
    /// SHA-256 over the samples' prompts and references, in order.
    pub dataset_sha256: String,
    pub host: String,
    pub os: String,
    pub started_at: String,
    pub finished_at: String,
}

impl Provenance {
    /// Build-time and machine facts; the caller fills the rest.
    pub fn collect(
        backend: BackendInfo,
        model: ModelProvenance,
        dataset_sha256: String,
        started_at: String,
    ) -> Self {
        Self {
            longctx_version: env!("CARGO_PKG_VERSION").into(),
            git_commit: env!("LONGCTX_GIT_COMMIT").into(),
            git_dirty: env!("LONGCTX_GIT_DIRTY").into(),
            rustc: env!("LONGCTX_RUSTC_VERSION").into(),
            burn: BURN_VERSION.into(),
            backend,
            model,
            dataset_sha256,
            host: std::fs::read_to_string("/etc/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
            started_at,
            finished_at: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn burn_version_matches_the_workspace_pin() {
        let manifest = include_str!("../../../Cargo.toml");
        assert!(manifest.contains(&format!("version = \"={}\"", super::BURN_VERSION)));
    }
}
