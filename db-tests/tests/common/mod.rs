//! What the real-database tests share: whether they run in CI, and the throw-away servers'
//! control scripts (`.ci/postgres.sh` makes them).

use std::process::Command;

/// `CI=true` (or `1`): a test whose server is not configured fails instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Runs a server's control script: `stop` or `start` (each waits until done).
pub fn ctl(path: &str, action: &str) {
    let out = Command::new(path)
        .arg(action)
        .output()
        .unwrap_or_else(|e| panic!("run {path} {action}: {e}"));
    assert!(
        out.status.success(),
        "{path} {action} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An error and its `source()` chain, as one line.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
