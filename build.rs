//! Names the git commit the binary is built from, for `jitgate --version`.
//!
//! `JITGATE_COMMIT` wins when set (a container build has no `.git`; the Dockerfile passes
//! it as a build argument); otherwise `git rev-parse --short HEAD`; otherwise "unknown".

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=JITGATE_COMMIT");
    let commit = std::env::var("JITGATE_COMMIT")
        .ok()
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .or_else(|| {
            watch_git_files();
            git(&["rev-parse", "--short", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=JITGATE_COMMIT={commit}");
}

/// Runs git in the package's directory; `None` when git is missing or fails.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// Reruns this script when HEAD moves: HEAD itself (another branch), the branch's ref
/// (a commit), and packed-refs. Asked of git, so a worktree's files are found too.
/// Only paths that exist are named: cargo reruns on every build for a missing one.
fn watch_git_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let locate = |git_path: &str| git(&["rev-parse", "--git-path", git_path]).map(|p| root.join(p));
    for file in ["HEAD", "packed-refs"] {
        if let Some(p) = locate(file).filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
    if let Some(p) = git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| locate(&r)) {
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        } else if let Some(dir) = p.parent().filter(|d| d.exists()) {
            // A ref that is only packed gets a file of its own at the next commit.
            println!("cargo:rerun-if-changed={}", dir.display());
        }
    }
}
