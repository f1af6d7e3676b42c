//! The process-wide memory budget for Kafka request frames being received (`--kafka-inflight-budget-bytes`).
//!
//! A frame's buffer grows only with bytes that arrived, and every byte of buffer is taken from this budget first,
//! so connections announcing large frames and sending them slowly hold at most the budget between them. The first
//! `HEAD_BYTES` of a frame (all of a small request: Metadata, ApiVersions, group calls, most Produce acks) may use
//! the whole budget; bytes beyond them ("bulk") may use only three quarters of it, so large frames can never take
//! the quarter that keeps small requests flowing on every other connection.
//! Outside it: each connection's fixed 2 KiB read-ahead (`kafka::handler`), bounded per connection like a socket buffer.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of a frame read before its header is decided: every request up to this size is read whole first.
pub const HEAD_BYTES: usize = 64 * 1024;

/// Which part of a frame the bytes are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Within the frame's first `HEAD_BYTES`.
    Head,
    /// Beyond them.
    Bulk,
}

/// Why bytes cannot be taken from the budget.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error(
        "{wanted} bytes of a Kafka frame body exceed the {bulk}-byte share of the in-flight budget that frame bodies may \
         use (--kafka-inflight-budget-bytes)"
    )]
    NeverFits { wanted: usize, bulk: usize },
}

/// Bytes of the budget a frame holds; given back when dropped.
#[derive(Debug, Default)]
pub struct Held {
    any: Option<OwnedSemaphorePermit>,
    bulk: Option<OwnedSemaphorePermit>,
}

impl Held {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.any.as_ref().map_or(0, |p| p.num_permits())
    }

    fn merge(slot: &mut Option<OwnedSemaphorePermit>, p: OwnedSemaphorePermit) {
        match slot {
            Some(held) => held.merge(p),
            None => *slot = Some(p),
        }
    }
}

/// See the module documentation. Shared by every Kafka connection of the daemon.
#[derive(Debug)]
pub struct FrameBudget {
    total: usize,
    /// Every held byte, head or bulk.
    any: Arc<Semaphore>,
    /// Bulk bytes only: `total - total / 4`.
    bulk: Arc<Semaphore>,
}

impl FrameBudget {
    pub fn new(total: usize) -> Self {
        let total = total.min(Semaphore::MAX_PERMITS);
        FrameBudget {
            total,
            any: Arc::new(Semaphore::new(total)),
            bulk: Arc::new(Semaphore::new(Self::bulk_share(total))),
        }
    }

    /// The part of `total` frame bodies beyond their first `HEAD_BYTES` may hold.
    pub fn bulk_share(total: usize) -> usize {
        total - total / 4
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes not held by any frame now.
    pub fn available(&self) -> usize {
        self.any.available_permits()
    }

    /// Waits until `n` bytes for `part` of a frame are free and adds them to `held`. Bulk bytes are taken from
    /// the bulk share before the whole budget, always in that order, so two frames never wait on each other's
    /// half. Waiting has no limit of its own: the caller bounds it with the frame deadline.
    pub async fn take(&self, held: &mut Held, n: usize, part: Part) -> Result<(), BudgetError> {
        let permits = |limit: usize| {
            u32::try_from(n)
                .ok()
                .filter(|&p| p as usize <= limit)
                .ok_or(BudgetError::NeverFits {
                    wanted: n,
                    bulk: limit,
                })
        };
        if part == Part::Bulk {
            let p = permits(Self::bulk_share(self.total))?;
            let bulk = self.bulk.clone().acquire_many_owned(p).await;
            Held::merge(&mut held.bulk, bulk.expect("the budget is never closed"));
        }
        let p = permits(self.total)?;
        let any = self.any.clone().acquire_many_owned(p).await;
        Held::merge(&mut held.any, any.expect("the budget is never closed"));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn take_within(b: &FrameBudget, held: &mut Held, n: usize, part: Part) -> bool {
        tokio::time::timeout(Duration::from_millis(50), b.take(held, n, part))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    #[tokio::test]
    async fn bulk_bytes_leave_a_quarter_for_small_frames() {
        let b = FrameBudget::new(1000);
        let mut large = Held::default();
        assert!(take_within(&b, &mut large, 750, Part::Bulk).await);
        assert_eq!(large.bytes(), 750);
        // The bulk share is used up: another large frame waits...
        let mut other = Held::default();
        assert!(!take_within(&b, &mut other, 1, Part::Bulk).await);
        assert_eq!(other.bytes(), 0, "a timed-out wait holds nothing");
        // ...while a small frame still gets the rest of the budget.
        let mut small = Held::default();
        assert!(take_within(&b, &mut small, 250, Part::Head).await);
        assert!(!take_within(&b, &mut small, 1, Part::Head).await);
        assert_eq!(b.available(), 0);
        // Dropping a frame gives its bytes back to both shares.
        drop(large);
        assert_eq!(b.available(), 750);
        assert!(take_within(&b, &mut other, 750, Part::Bulk).await);
        drop((other, small));
        assert_eq!(b.available(), 1000);
    }

    #[tokio::test]
    async fn holdings_accumulate_and_oversized_wants_fail_at_once() {
        let b = FrameBudget::new(1000);
        let mut held = Held::default();
        assert!(take_within(&b, &mut held, 100, Part::Head).await);
        assert!(take_within(&b, &mut held, 200, Part::Bulk).await);
        assert_eq!(held.bytes(), 300);
        assert_eq!(b.available(), 700);
        assert_eq!(
            b.take(&mut held, 751, Part::Bulk).await,
            Err(BudgetError::NeverFits {
                wanted: 751,
                bulk: 750
            })
        );
        drop(held);
        assert_eq!(b.available(), 1000);
    }
}
