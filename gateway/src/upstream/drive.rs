//! The waker an upstream connection is driven with, which keeps the connection's wake-ups of its
//! own driver from costing the client connection's task another poll.
//!
//! A pooled connection is driven inline by the task of the request that holds it (see `pool`).
//! hyper's client half signals across its internal channels by waking whoever last polled the
//! other end, which here is that same task: handing over the response head, taking a body piece,
//! asking for more. Each such wake-up during the task's own poll makes tokio poll the whole task
//! again (the client connection, hyper's server half, the request) just to find the work done.
//! Driven through this waker, a wake-up while the holder polls is only noted: the holder polls
//! again at once if it would otherwise wait, and needs no wake-up once it got what it polled for
//! (it drives the connection first whenever it next needs anything of it). A wake-up at any other
//! time (the upstream socket became readable) reaches the task as before.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// How many times in a row a poll that noted its own wake-up is repeated before the wake-up is
/// passed on to the task instead (hyper asks for a fresh poll after a long run of work).
const REPEATS: usize = 4;

#[derive(Debug)]
pub(super) struct DriveWaker {
    shared: Arc<Shared>,
    /// `shared` as a waker, made once per connection.
    waker: Waker,
}

#[derive(Debug, Default)]
struct Shared {
    /// The waker of the task holding the connection; `None` while it is idle in the pool.
    task: Mutex<Option<Waker>>,
    /// Set while the holder polls through [`DriveWaker::poll`].
    polling: AtomicBool,
    /// A wake-up arrived while `polling`.
    woken: AtomicBool,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.polling.load(Ordering::SeqCst) {
            self.woken.store(true, Ordering::SeqCst);
            // Woken from another thread just as the poll ended, the note may come too late to be
            // seen: then it is taken back here and passed on (whoever takes it acts on it).
            if self.polling.load(Ordering::SeqCst) || !self.woken.swap(false, Ordering::SeqCst) {
                return;
            }
        }
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

impl DriveWaker {
    pub(super) fn new() -> DriveWaker {
        let shared = Arc::new(Shared::default());
        DriveWaker { waker: Waker::from(shared.clone()), shared }
    }

    /// Runs `poll` for the task of `cx`, with this waker in its place. When `poll` is pending
    /// after waking itself, it runs again; when it is ready, the wake-up is dropped: the holder
    /// polls the connection again whenever it next needs anything of it.
    pub(super) fn poll<T>(&self, cx: &mut Context<'_>, mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
        self.set_task(Some(cx.waker()));
        let mut own = Context::from_waker(&self.waker);
        for _ in 0..REPEATS {
            self.shared.polling.store(true, Ordering::SeqCst);
            let polled = poll(&mut own);
            self.shared.polling.store(false, Ordering::SeqCst);
            let woken = self.shared.woken.swap(false, Ordering::SeqCst);
            if polled.is_ready() || !woken {
                return polled;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Forgets the holder's task once the connection goes idle (an idle connection wakes nobody).
    pub(super) fn release(&self) {
        self.set_task(None);
    }

    fn set_task(&self, waker: Option<&Waker>) {
        let mut task = self.shared.task.lock().unwrap_or_else(PoisonError::into_inner);
        match (task.as_ref(), waker) {
            (Some(current), Some(waker)) if current.will_wake(waker) => {}
            _ => *task = waker.cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn task() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count::default());
        (count.clone(), Waker::from(count))
    }

    #[test]
    fn a_wake_up_during_the_poll_repeats_it_instead_of_waking_the_task() {
        let drive = DriveWaker::new();
        let (count, waker) = task();
        let mut runs = 0;
        let polled = drive.poll(&mut Context::from_waker(&waker), |cx| {
            runs += 1;
            if runs == 1 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(runs)
        });
        assert_eq!(polled, Poll::Ready(2));
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_wake_up_before_a_ready_result_is_dropped() {
        let drive = DriveWaker::new();
        let (count, waker) = task();
        let polled = drive.poll(&mut Context::from_waker(&waker), |cx| {
            cx.waker().wake_by_ref();
            Poll::Ready(())
        });
        assert!(polled.is_ready());
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_poll_that_keeps_waking_itself_hands_the_wake_up_to_the_task() {
        let drive = DriveWaker::new();
        let (count, waker) = task();
        let mut runs = 0;
        let polled: Poll<()> = drive.poll(&mut Context::from_waker(&waker), |cx| {
            runs += 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        });
        assert!(polled.is_pending());
        assert_eq!(runs, REPEATS);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_later_wake_up_reaches_the_current_task_and_none_once_released() {
        let drive = DriveWaker::new();
        let (first, first_waker) = task();
        let (second, second_waker) = task();
        let mut registered = None;
        let _ = drive.poll(&mut Context::from_waker(&first_waker), |cx| {
            registered = Some(cx.waker().clone());
            Poll::<()>::Pending
        });
        let _ = drive.poll(&mut Context::from_waker(&second_waker), |_| Poll::<()>::Pending);
        let registered = registered.unwrap();
        registered.wake_by_ref();
        assert_eq!((first.0.load(Ordering::SeqCst), second.0.load(Ordering::SeqCst)), (0, 1));
        drive.release();
        registered.wake();
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
    }
}
