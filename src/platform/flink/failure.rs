//! Why a Flink savepoint or disposal failed, read from the JobManager's failure cause. Its class is
//! always the wrapping `CompletionException`, so the stack trace's message lines are what tell.

/// The reason a savepoint failed, from Flink's failure cause (its class is always the wrapping
/// `CompletionException`, so the stack trace's message lines are what tell).
pub fn describe_failure(stack_trace: &str) -> String {
    let messages: Vec<&str> = stack_trace
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("at ") && !l.starts_with("..."))
        .collect();
    let has = |needle: &str| messages.iter().any(|l| l.contains(needle));
    if has("Checkpoint expired before completing") {
        return "expired before completing (checkpoint timeout)".into();
    }
    if has("FlinkJobNotFoundException") {
        return "job not found".into();
    }
    if has("Not all required tasks are currently running") {
        return "not all tasks running".into();
    }
    if has("IO-problem detected") {
        // The innermost cause names the path and the error.
        return match messages.iter().rev().find(|l| l.starts_with("Caused by:")) {
            Some(cause) => trim(&format!(
                "I/O problem: {}",
                cause.trim_start_matches("Caused by:").trim()
            )),
            None => "I/O problem".into(),
        };
    }
    let first = messages.first().copied().unwrap_or("no stack trace");
    trim(
        first
            .strip_prefix("java.util.concurrent.CompletionException: ")
            .unwrap_or(first),
    )
}

fn trim(text: &str) -> String {
    const MAX: usize = 300;
    if text.chars().count() <= MAX {
        text.to_owned()
    } else {
        let mut short: String = text.chars().take(MAX - 1).collect();
        short.push('…');
        short
    }
}

/// Whether a disposal's failure proves that the JobManager cannot read the savepoint (no `_metadata`,
/// or one it cannot decode). Only then are its files deleted directly: any other failure (the
/// JobManager busy, an HTTP error, a storage error) leaves the savepoint for the next run, listed and
/// whole.
pub fn proves_unreadable(stack_trace: &str) -> bool {
    const PROOFS: [&str; 6] = [
        "FileNotFoundException",
        "Cannot find meta data file",
        "Unexpected magic number",
        "Unknown checkpoint metadata version",
        "EOFException",
        "ClassNotFoundException",
    ];
    PROOFS.iter().any(|p| stack_trace.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPIRED: &str = "java.util.concurrent.CompletionException: org.apache.flink.runtime.checkpoint.CheckpointException: Checkpoint expired before completing.\n\tat java.base/java.util.concurrent.CompletableFuture.encodeRelay(CompletableFuture.java:368)\n\tat org.apache.flink.runtime.rpc.pekko.PekkoInvocationHandler.lambda$invokeRpc$1(PekkoInvocationHandler.java:261)\n";
    const NOT_FOUND: &str = "java.util.concurrent.CompletionException: org.apache.flink.runtime.messages.FlinkJobNotFoundException: Could not find Flink job (00000000000000000000000000000001)\n\tat java.base/java.util.concurrent.CompletableFuture.encodeThrowable(CompletableFuture.java:332)\n";
    const IO: &str = "java.util.concurrent.CompletionException: org.apache.flink.runtime.checkpoint.CheckpointException: An Exception occurred while triggering the checkpoint. IO-problem detected.\n\tat x.y(Z.java:1)\nCaused by: org.apache.flink.runtime.checkpoint.CheckpointException: An Exception occurred while triggering the checkpoint. IO-problem detected.\n\tat x.y(Z.java:2)\nCaused by: java.io.IOException: Failed to create savepoint directory at file:/proc/nope\n\t... 3 more\n";
    const NOT_RUNNING: &str = "java.util.concurrent.CompletionException: org.apache.flink.runtime.checkpoint.CheckpointException: Not all required tasks are currently running.\n\tat x.y(Z.java:1)\n";

    #[test]
    fn failure_causes_are_categorised_from_the_stack_trace() {
        assert_eq!(
            describe_failure(EXPIRED),
            "expired before completing (checkpoint timeout)"
        );
        assert_eq!(describe_failure(NOT_FOUND), "job not found");
        assert_eq!(describe_failure(NOT_RUNNING), "not all tasks running");
        assert_eq!(
            describe_failure(IO),
            "I/O problem: java.io.IOException: Failed to create savepoint directory at file:/proc/nope"
        );
        // The history's failure_message is the bare message.
        assert_eq!(
            describe_failure("Checkpoint expired before completing."),
            "expired before completing (checkpoint timeout)"
        );
    }

    #[test]
    fn an_unknown_cause_is_its_first_line_unwrapped_and_trimmed() {
        let other = "java.util.concurrent.CompletionException: java.lang.IllegalStateException: boom\n\tat a.b(C.java:1)\n";
        assert_eq!(
            describe_failure(other),
            "java.lang.IllegalStateException: boom"
        );
        let long = format!("{}\n\tat a.b(C.java:1)", "x".repeat(1000));
        let described = describe_failure(&long);
        assert_eq!(described.chars().count(), 300);
        assert!(described.ends_with('…'));
        assert_eq!(describe_failure(""), "no stack trace");
    }

    #[test]
    fn only_a_cause_that_shows_the_metadata_unreadable_allows_direct_deletion() {
        let missing = "java.util.concurrent.CompletionException: java.io.FileNotFoundException: Cannot find meta data file '_metadata' in directory 'file:/sp/orders/savepoint-1'. Please try to load the checkpoint/savepoint directly from the metadata file instead of the directory.\n\tat x.y(Z.java:1)\n";
        let garbage = "java.util.concurrent.CompletionException: java.io.IOException: Unexpected magic number 0x67617262\n";
        assert!(proves_unreadable(missing));
        assert!(proves_unreadable(garbage));
        for other in [
            EXPIRED,
            IO,
            NOT_RUNNING,
            "Service temporarily unavailable due to an ongoing leader election. Please refresh.",
            "",
        ] {
            assert!(!proves_unreadable(other), "{other}");
        }
    }
}
