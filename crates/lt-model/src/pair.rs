//! Run two closures at once — one on the calling thread, one on a helper thread that stays
//! awake briefly between calls — for the fused step's two-way splits.
//!
//! A decode step of a small model takes ~0.1–0.2 ms; handing half of it to a sleeping thread pool
//! costs tens of microseconds in wake-ups (measured: rayon's `join` from outside its pool made an
//! 8-row step only ~8 % faster on two cores). The helper here spins for a while after each job
//! (about a millisecond, enough to cover the gap to the next step), then parks; the caller runs
//! its half itself and waits for the other.
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

type Job = Box<dyn FnOnce() + Send + 'static>;

struct Helper {
    job: Mutex<Option<Job>>,
    /// Jobs posted / finished.
    posted: AtomicUsize,
    finished: AtomicUsize,
    /// The helper is (about to be) parked.
    sleeping: AtomicBool,
    /// A caller is using the helper.
    busy: AtomicBool,
    /// The last job panicked.
    panicked: AtomicBool,
    thread: Thread,
}

/// How long the helper stays awake (spinning, then yielding) after a job.
const SPIN: Duration = Duration::from_millis(1);

fn helper() -> Option<&'static Helper> {
    static H: OnceLock<Option<&'static Helper>> = OnceLock::new();
    *H.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<&'static Helper>();
        let spawned = std::thread::Builder::new()
            .name("lt-model-pair".into())
            .spawn(move || {
                let h: &'static Helper = Box::leak(Box::new(Helper {
                    job: Mutex::new(None),
                    posted: AtomicUsize::new(0),
                    finished: AtomicUsize::new(0),
                    sleeping: AtomicBool::new(false),
                    busy: AtomicBool::new(false),
                    panicked: AtomicBool::new(false),
                    thread: std::thread::current(),
                }));
                if tx.send(h).is_err() {
                    return;
                }
                run(h)
            });
        spawned.ok()?;
        rx.recv().ok()
    })
}

fn run(h: &'static Helper) -> ! {
    loop {
        let mut since = Instant::now();
        let mut spins = 0u32;
        while h.posted.load(SeqCst) == h.finished.load(SeqCst) {
            // spin briefly, then keep watching but yield the core to anyone who needs it (a
            // libtorch worker, the caller), then park
            if spins < 2048 {
                std::hint::spin_loop();
                spins += 1;
                continue;
            }
            if since.elapsed() < SPIN {
                std::thread::yield_now();
                continue;
            }
            h.sleeping.store(true, SeqCst);
            if h.posted.load(SeqCst) == h.finished.load(SeqCst) {
                std::thread::park_timeout(Duration::from_millis(100));
            }
            h.sleeping.store(false, SeqCst);
            since = Instant::now();
            spins = 0;
        }
        let job = h.job.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(job) = job {
            if catch_unwind(AssertUnwindSafe(job)).is_err() {
                h.panicked.store(true, SeqCst);
            }
        }
        h.finished.fetch_add(1, SeqCst);
    }
}

/// Run `a` on this thread and `b` on the helper at the same time; returns when both are done.
/// Falls back to running both here when the helper is in use (another caller, or a nested
/// call) or could not be started. A panic in either is resumed here after both finished.
pub(crate) fn join<A, B>(a: A, b: B)
where
    A: FnOnce(),
    B: FnOnce() + Send,
{
    let Some(h) = helper() else {
        a();
        b();
        return;
    };
    if h.busy.swap(true, SeqCst) {
        a();
        b();
        return;
    }
    // SAFETY: `b` borrows from the caller's stack; it is erased to 'static only to cross to the
    // helper, and this function does not return (nor unwind: `a` runs under catch_unwind) before
    // the helper has finished running it.
    let job: Box<dyn FnOnce() + Send + '_> = Box::new(b);
    let job: Job = unsafe { std::mem::transmute(job) };
    *h.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job);
    let ticket = h.posted.fetch_add(1, SeqCst) + 1;
    if h.sleeping.load(SeqCst) {
        h.thread.unpark();
    }
    let ra = catch_unwind(AssertUnwindSafe(a));
    let mut spins = 0u32;
    while h.finished.load(SeqCst) < ticket {
        if spins < 2048 {
            std::hint::spin_loop();
            spins += 1;
        } else {
            std::thread::yield_now();
        }
    }
    let b_panicked = h.panicked.swap(false, SeqCst);
    h.busy.store(false, SeqCst);
    if let Err(p) = ra {
        resume_unwind(p);
    }
    if b_panicked {
        panic!("lt-model: a fused-step worker panicked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both halves run and see the caller's data; repeated calls; a nested call runs inline; a
    /// panic on the helper comes back to the caller and leaves the helper usable.
    #[test]
    fn join_runs_both_and_recovers() {
        for round in 0..200usize {
            let mut left = vec![0usize; 64];
            let mut right = vec![0usize; 64];
            join(
                || left.iter_mut().for_each(|x| *x = round),
                || right.iter_mut().for_each(|x| *x = round + 1),
            );
            assert!(left.iter().all(|&x| x == round) && right.iter().all(|&x| x == round + 1));
        }
        let (mut n, mut k, mut m) = (0usize, 0usize, 0usize);
        join(|| join(|| n += 1, || k += 1), || m += 1);
        assert_eq!((n, k, m), (1, 1, 1));
        let r = std::panic::catch_unwind(|| join(|| (), || panic!("boom")));
        assert!(r.is_err());
        let mut ok = false;
        join(|| (), || ok = true);
        assert!(ok);
    }
}
