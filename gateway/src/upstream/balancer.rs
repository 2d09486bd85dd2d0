//! Endpoint selection: round robin, or least request by power of two random choices, among the
//! endpoints in rotation (among all of them when none is).

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

    /// Index of the chosen endpoint among `items`; `load` reports an endpoint's in-flight count,
    /// `available` whether it is in rotation. A lone endpoint is always the one.
    pub(super) fn pick<T>(
        &self,
        items: &[T],
        load: impl Fn(&T) -> usize,
        available: impl Fn(&T) -> bool,
    ) -> Option<usize> {
        let n = items.len();
        if n <= 1 {
            return if n == 1 { Some(0) } else { None };
        }
        match self {
            Balancer::RoundRobin(next) => {
                // Passing over one takes its turn too, so the others keep equal shares.
                let mut turns = (0..n).map(|_| next.fetch_add(1, Ordering::Relaxed) % n).peekable();
                let first = turns.peek().copied()?;
                // Other workers take turns meanwhile, so n turns need not visit every endpoint:
                // all of them may land on ones that are out.
                Some(turns.find(|&i| available(&items[i])).unwrap_or_else(|| next_available(items, first, &available)))
            }
            Balancer::LeastRequest => {
                let r = random::next_u64();
                let a = (r % n as u64) as usize;
                // Second choice distinct from the first: offset by 1..n-1.
                let b = (a + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n;
                // An endpoint due for its trial is claimed by `available`: one that then loses the
                // comparison waits one more period before it is tried (rare, and only a delay).
                Some(match (available(&items[a]), available(&items[b])) {
                    (true, true) if load(&items[b]) < load(&items[a]) => b,
                    (true, _) => a,
                    (false, true) => b,
                    (false, false) => next_available(items, a, &available),
                })
            }
        }
    }
}

/// The first endpoint in rotation after `from`, in list order; `from` itself when none is (only
/// then does one that is out get the request).
fn next_available<T>(items: &[T], from: usize, available: impl Fn(&T) -> bool) -> usize {
    let n = items.len();
    (1..n).map(|k| (from + k) % n).find(|&i| available(&items[i])).unwrap_or(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_cycles_through_every_endpoint() {
        let b = Balancer::new(LoadBalancing::RoundRobin);
        let items = [0usize; 3];
        let picks: Vec<_> = (0..6).map(|_| b.pick(&items, |_| 0, |_| true).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_request_prefers_the_less_loaded_of_two() {
        let b = Balancer::new(LoadBalancing::LeastRequest);
        // With two endpoints both are always compared, so the idle one always wins.
        let loads = [10usize, 0];
        for _ in 0..100 {
            assert_eq!(b.pick(&loads, |l| *l, |_| true), Some(1));
        }
    }

    #[test]
    fn least_request_spreads_over_equal_endpoints() {
        let b = Balancer::new(LoadBalancing::LeastRequest);
        let loads = [0usize; 4];
        let mut seen = [0usize; 4];
        for _ in 0..400 {
            seen[b.pick(&loads, |l| *l, |_| true).unwrap()] += 1;
        }
        assert!(seen.iter().all(|&c| c > 40), "uneven spread: {seen:?}");
    }

    #[test]
    fn pick_with_no_endpoints_is_none() {
        for kind in [LoadBalancing::RoundRobin, LoadBalancing::LeastRequest] {
            assert_eq!(Balancer::new(kind).pick(&[] as &[usize], |_| 0, |_| true), None);
        }
    }

    #[test]
    fn round_robin_passes_over_endpoints_out_of_rotation() {
        let b = Balancer::new(LoadBalancing::RoundRobin);
        let out = [false, true, false];
        let picks: Vec<_> = (0..6).map(|_| b.pick(&out, |_| 0, |out| !out).unwrap()).collect();
        assert_eq!(picks, [0, 2, 0, 2, 0, 2], "equal shares for the others");
    }

    /// Under load the other workers take turns between this one's: every turn it takes may land
    /// on the endpoint that is out, which must still not get the request.
    #[test]
    fn round_robin_passes_over_endpoints_out_of_rotation_while_other_workers_take_turns() {
        let b = Balancer::new(LoadBalancing::RoundRobin);
        let Balancer::RoundRobin(next) = &b else { unreachable!("a round robin balancer") };
        let out = [false, true];
        next.store(1, Ordering::Relaxed);
        let available_while_another_takes_a_turn = |out: &bool| {
            next.fetch_add(1, Ordering::Relaxed);
            !out
        };
        for _ in 0..10 {
            assert_eq!(b.pick(&out, |_| 0, available_while_another_takes_a_turn), Some(0));
        }
    }

    #[test]
    fn least_request_passes_over_endpoints_out_of_rotation() {
        let b = Balancer::new(LoadBalancing::LeastRequest);
        // The idle endpoint is out: every pick goes to one of the loaded ones in rotation.
        let endpoints = [(5usize, false), (0, true), (7, false)];
        for _ in 0..100 {
            let pick = b.pick(&endpoints, |e| e.0, |e| !e.1).unwrap();
            assert_ne!(pick, 1);
        }
    }

    #[test]
    fn with_every_endpoint_out_of_rotation_one_is_picked_anyway() {
        for kind in [LoadBalancing::RoundRobin, LoadBalancing::LeastRequest] {
            let b = Balancer::new(kind);
            assert!(b.pick(&[0usize; 3], |_| 0, |_| false).is_some_and(|i| i < 3));
        }
    }
}
