//! Failpoints: named places where a process aborts on purpose, so that crash tests can stop a
//! real service binary at an exact point (for example after storing a batch but before
//! acknowledging it) and check what a restart recovers.
//!
//! A failpoint is armed only by the environment variable [`ENV`] naming it
//! (`GRIDMESH_FAILPOINT=settlement_after_store_before_ack`). The variable is read once, at the
//! first check; after that a check is one load and a string comparison, and an unarmed process
//! never aborts.

use std::sync::OnceLock;

/// The environment variable that arms a failpoint by name.
pub const ENV: &str = "GRIDMESH_FAILPOINT";

fn armed_name() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var(ENV).ok().filter(|v| !v.is_empty()))
        .as_deref()
}

/// Whether the failpoint `name` is armed in this process.
pub fn armed(name: &str) -> bool {
    armed_name() == Some(name)
}

/// Aborts the process (no destructors, no flushing: like a crash or `kill -9`) if the failpoint
/// `name` is armed; otherwise does nothing.
pub fn hit(name: &str) {
    if armed(name) {
        // Written straight to stderr: the abort must not wait for a logging pipeline.
        eprintln!("failpoint {name} hit ({ENV}): aborting the process on purpose");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_unarmed_failpoint_does_nothing() {
        // The test process never sets GRIDMESH_FAILPOINT to this name.
        assert!(!super::armed("no_such_failpoint_in_tests"));
        super::hit("no_such_failpoint_in_tests");
    }
}
