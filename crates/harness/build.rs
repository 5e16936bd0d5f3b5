//! Records the git commit and rustc version the binary was built from, for result provenance.
use std::process::Command;

fn run(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let commit = run("git", &["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        run("git", &["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty());
    println!("cargo:rustc-env=LONGCTX_GIT_COMMIT={commit}");
    println!(
        "cargo:rustc-env=LONGCTX_GIT_DIRTY={}",
        dirty.map_or("unknown".to_string(), |d| d.to_string())
    );
    println!(
        "cargo:rustc-env=LONGCTX_RUSTC_VERSION={}",
        run(&rustc, &["--version"]).unwrap_or_default()
    );
    if let Some(git_dir) = run("git", &["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
        println!("cargo:rerun-if-changed={git_dir}/index");
    }
}
