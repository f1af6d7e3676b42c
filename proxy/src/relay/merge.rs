//! The relay's sort buffer: flows from several nodes, each stream roughly in time order, merged into one stream
//! in time order with bounded memory (Hubble relay's `sort-buffer-len-max` and `sort-buffer-drain-timeout`).
//!
//! Pure: the caller feeds items with the instant they arrived and asks what is due. An item leaves the buffer,
//! oldest flow time first, when the buffer holds more than its capacity or when it has waited `max_wait` (so a
//! quiet stream is not held back for ever). An item arriving after a younger one already left is still sent
//! (never dropped) and counted as out of order.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// Nanoseconds since the epoch: the merge key.
pub type TimeNs = i128;

/// One buffered item and what orders it.
#[derive(Debug)]
struct Entry<T> {
    time: TimeNs,
    /// Arrival order, so equal times leave in the order they came.
    seq: u64,
    arrived: Instant,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, o: &Self) -> bool {
        (self.time, self.seq) == (o.time, o.seq)
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.time, self.seq).cmp(&(o.time, o.seq))
    }
}

/// A bounded min-heap by flow time.
#[derive(Debug)]
pub struct SortBuffer<T> {
    heap: BinaryHeap<Reverse<Entry<T>>>,
    capacity: usize,
    max_wait: Duration,
    seq: u64,
    /// The newest time already sent.
    high_water: Option<TimeNs>,
    out_of_order: u64,
}

impl<T> SortBuffer<T> {
    /// `capacity` is at least 1.
    pub fn new(capacity: usize, max_wait: Duration) -> Self {
        SortBuffer {
            heap: BinaryHeap::new(),
            capacity: capacity.max(1),
            max_wait,
            seq: 0,
            high_water: None,
            out_of_order: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Items sent after a younger one (they arrived too late for the buffer to put them in place).
    pub fn out_of_order(&self) -> u64 {
        self.out_of_order
    }

    /// Adds an item; returns what must leave now because the buffer is over capacity.
    pub fn push(&mut self, time: TimeNs, item: T, now: Instant) -> Vec<T> {
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            time,
            seq: self.seq,
            arrived: now,
            item,
        }));
        let mut out = Vec::new();
        while self.heap.len() > self.capacity {
            out.extend(self.pop());
        }
        out
    }

    /// Items that waited `max_wait`, and every older one ahead of them (order is kept).
    pub fn due(&mut self, now: Instant) -> Vec<T> {
        let overdue = |e: &Entry<T>| now.saturating_duration_since(e.arrived) >= self.max_wait;
        // The youngest overdue time: everything up to it leaves, in time order.
        let Some(until) = self
            .heap
            .iter()
            .filter(|e| overdue(&e.0))
            .map(|e| e.0.time)
            .max()
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while self.heap.peek().is_some_and(|e| e.0.time <= until) {
            out.extend(self.pop());
        }
        out
    }

    /// When the oldest arrival becomes due; `None` when empty.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.iter().map(|e| e.0.arrived + self.max_wait).min()
    }

    /// Everything, in time order (the end of a stream).
    pub fn drain(&mut self) -> Vec<T> {
        let mut out = Vec::with_capacity(self.heap.len());
        while let Some(t) = self.pop() {
            out.push(t);
        }
        out
    }

    fn pop(&mut self) -> Option<T> {
        let Reverse(e) = self.heap.pop()?;
        if self.high_water.is_some_and(|h| e.time < h) {
            self.out_of_order += 1;
        } else {
            self.high_water = Some(e.time);
        }
        Some(e.item)
    }
}

/// Keeps the last `n` items of a stream (`--last N` over several nodes), or all of them when `n` is 0.
#[derive(Debug)]
pub struct Tail<T> {
    n: usize,
    items: std::collections::VecDeque<T>,
}

impl<T> Tail<T> {
    pub fn new(n: usize) -> Self {
        Tail {
            n,
            items: std::collections::VecDeque::new(),
        }
    }

    pub fn push(&mut self, item: T) {
        if self.n > 0 && self.items.len() == self.n {
            self.items.pop_front();
        }
        self.items.push_back(item);
    }

    pub fn into_vec(self) -> Vec<T> {
        self.items.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn interleaved_nodes_leave_in_time_order() {
        let t0 = Instant::now();
        let mut b = SortBuffer::new(100, 1000 * MS);
        // Node a sends 1,3,5 then node b 2,4,6 (each stream sorted, the two arriving one after the other).
        let mut out = Vec::new();
        for t in [1, 3, 5, 2, 4, 6] {
            out.extend(b.push(t, t, t0));
        }
        assert!(out.is_empty(), "nothing leaves before capacity or max wait");
        out.extend(b.drain());
        assert_eq!(out, [1, 2, 3, 4, 5, 6]);
        assert_eq!(b.out_of_order(), 0);
    }

    #[test]
    fn over_capacity_the_oldest_leaves_and_memory_stays_bounded() {
        let t0 = Instant::now();
        let mut b = SortBuffer::new(3, 1000 * MS);
        let mut out = Vec::new();
        for t in [10, 30, 20, 40, 50] {
            out.extend(b.push(t, t, t0));
            assert!(b.len() <= 3);
        }
        assert_eq!(out, [10, 20]);
        // A straggler older than what already left is still sent, counted out of order.
        out.extend(b.push(15, 15, t0));
        assert_eq!(out, [10, 20, 15]);
        assert_eq!(b.out_of_order(), 1);
        assert_eq!(b.drain(), [30, 40, 50]);
    }

    #[test]
    fn an_item_leaves_after_max_wait_with_the_older_ones_ahead_of_it() {
        let t0 = Instant::now();
        let mut b = SortBuffer::new(100, 10 * MS);
        b.push(5, 5, t0);
        b.push(9, 9, t0 + 8 * MS);
        b.push(1, 1, t0 + 9 * MS);
        assert!(b.due(t0 + 9 * MS).is_empty());
        assert_eq!(b.next_deadline(), Some(t0 + 10 * MS));
        // At 10 ms the item of time 5 is due; 1 is older, so it goes first; 9 waits for its own deadline.
        assert_eq!(b.due(t0 + 10 * MS), [1, 5]);
        assert_eq!(b.next_deadline(), Some(t0 + 18 * MS));
        assert_eq!(b.due(t0 + 18 * MS), [9]);
        assert!(b.is_empty() && b.next_deadline().is_none());
    }

    #[test]
    fn equal_times_keep_arrival_order() {
        let t0 = Instant::now();
        let mut b = SortBuffer::new(10, MS);
        for s in ["a", "b", "c"] {
            b.push(7, s, t0);
        }
        assert_eq!(b.drain(), ["a", "b", "c"]);
    }

    #[test]
    fn tail_keeps_the_last_n() {
        let mut t = Tail::new(2);
        (1..=5).for_each(|i| t.push(i));
        assert_eq!(t.into_vec(), [4, 5]);
        let mut all = Tail::new(0);
        (1..=3).for_each(|i| all.push(i));
        assert_eq!(all.into_vec(), [1, 2, 3]);
    }
}
