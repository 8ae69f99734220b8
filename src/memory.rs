//! Keeps the idle daemon small. glibc's malloc gives each thread that allocates its own arena and keeps
//! freed memory in them for reuse; after the startup burst (every application's savepoints listed once)
//! or a busy tick, most of that is free but still resident. Fewer arenas and an explicit trim give it
//! back to the system. Elsewhere (another libc) both are no-ops.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often free heap memory is returned while the daemon runs.
const TRIM_EVERY: Duration = Duration::from_secs(60);

/// At most two malloc arenas: the daemon does little allocation per thread, and every arena holds on
/// to its own free memory. Call before any thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns free heap memory to the system.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe; it only releases memory malloc holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trims now and then every minute until `shutdown`: a busy tick's buffers do not stay resident through
/// the hours until the next one.
pub async fn trim_periodically(shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(TRIM_EVERY) => trim(),
        }
    }
}
