//! Endpoint selection: round robin, or least request by power of two random choices.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::LoadBalancing;
use crate::random;

#[derive(Debug)]
pub(super) enum Balancer {
    RoundRobin(AtomicUsize),
    LeastRequest,
}

impl Balancer {
    pub(super) fn new(kind: LoadBalancing) -> Balancer {
        match kind {
            LoadBalancing::RoundRobin => Balancer::RoundRobin(AtomicUsize::new(0)),
            LoadBalancing::LeastRequest => Balancer::LeastRequest,
        }
    }

    /// Index of the chosen endpoint among `items`; `load` reports an endpoint's in-flight count.
    pub(super) fn pick<T>(&self, items: &[T], load: impl Fn(&T) -> usize) -> Option<usize> {
        let n = items.len();
        if n <= 1 {
            return if n == 1 { Some(0) } else { None };
        }
        match self {
            Balancer::RoundRobin(next) => Some(next.fetch_add(1, Ordering::Relaxed) % n),
            Balancer::LeastRequest => {
                let r = random::next_u64();
                let a = (r % n as u64) as usize;
                // Second choice distinct from the first: offset by 1..n-1.
                let b = (a + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n;
                Some(if load(&items[b]) < load(&items[a]) { b } else { a })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_cycles_through_every_endpoint() {
        let b = Balancer::new(LoadBalancing::RoundRobin);
        let items = [0usize; 3];
        let picks: Vec<_> = (0..6).map(|_| b.pick(&items, |_| 0).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_request_prefers_the_less_loaded_of_two() {
        let b = Balancer::new(LoadBalancing::LeastRequest);
        // With two endpoints both are always compared, so the idle one always wins.
        let loads = [10usize, 0];
        for _ in 0..100 {
            assert_eq!(b.pick(&loads, |l| *l), Some(1));
        }
    }

    #[test]
    fn least_request_spreads_over_equal_endpoints() {
        let b = Balancer::new(LoadBalancing::LeastRequest);
        let loads = [0usize; 4];
        let mut seen = [0usize; 4];
        for _ in 0..400 {
            seen[b.pick(&loads, |l| *l).unwrap()] += 1;
        }
        assert!(seen.iter().all(|&c| c > 40), "uneven spread: {seen:?}");
    }

    #[test]
    fn pick_with_no_endpoints_is_none() {
        for kind in [LoadBalancing::RoundRobin, LoadBalancing::LeastRequest] {
            assert_eq!(Balancer::new(kind).pick(&[] as &[usize], |_| 0), None);
        }
    }
}
