//! A listing that every application of a platform shares: the runs of one cron tick all resolve their
//! names at once, and one list of the platform's deployments or jobs answers them all, instead of one
//! list per application (O(N²) over a tick). Callers that find the last listing stale wait for one fetch
//! rather than each sending their own.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// How long one listing answers resolves: a tick's resolves fall within it, and a name that changed its
/// id or a job that stopped shows at the next tick.
pub const FRESH_FOR: Duration = Duration::from_secs(1);

pub struct SharedListing<T> {
    last: Mutex<Option<(Instant, Arc<T>)>>,
    fresh_for: Duration,
}

impl<T> SharedListing<T> {
    pub fn new(fresh_for: Duration) -> Self {
        Self {
            last: Mutex::new(None),
            fresh_for,
        }
    }

    /// The last listing while it is fresh, or a new one from `fetch`. A failed fetch is not kept: the
    /// next caller tries again.
    pub async fn get<E, F, Fut>(&self, fetch: F) -> Result<Arc<T>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        // Held across the fetch: the callers behind it get its answer.
        let mut last = self.last.lock().await;
        if let Some((at, listing)) = last.as_ref()
            && at.elapsed() < self.fresh_for
        {
            return Ok(listing.clone());
        }
        let listing = Arc::new(fetch().await?);
        *last = Some((Instant::now(), listing.clone()));
        Ok(listing)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_fetch_and_a_stale_listing_is_fetched_again() {
        let shared = Arc::new(SharedListing::new(FRESH_FOR));
        let fetches = Arc::new(AtomicUsize::new(0));
        let fetch = |fetches: Arc<AtomicUsize>| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, ()>(fetches.fetch_add(1, Ordering::SeqCst))
        };
        let calls = (0..100).map(|_| {
            let (shared, fetches) = (shared.clone(), fetches.clone());
            async move { *shared.get(|| fetch(fetches)).await.unwrap() }
        });
        let seen = futures::future::join_all(calls).await;
        assert!(seen.iter().all(|n| *n == 0), "one listing answered all");
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        tokio::time::advance(FRESH_FOR).await;
        assert_eq!(*shared.get(|| fetch(fetches.clone())).await.unwrap(), 1);
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_fetch_is_not_kept() {
        let shared = SharedListing::<u32>::new(FRESH_FOR);
        assert!(
            shared
                .get(|| async { Err::<u32, _>("down") })
                .await
                .is_err()
        );
        assert_eq!(*shared.get(|| async { Ok::<_, &str>(7) }).await.unwrap(), 7);
    }
}
