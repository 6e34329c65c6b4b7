//! Run two closures at once — one on the calling thread, one on a second thread — for the fused
//! step's two-way splits.
//!
//! The second thread is libtorch's own OpenMP worker when the process has GNU OpenMP (libtorch's
//! CPU builds link `libgomp`): `GOMP_parallel` with a team of two, found at run time. libgomp's
//! worker spins for a few milliseconds after every parallel region, so a step right after a
//! libtorch operator (a prefill) or another step starts at once; a thread of our own would be a
//! third runnable thread fighting that spinning worker for two cores (measured: an 8-row step of a
//! 4-layer model 136 µs with a thread of our own, 114 µs on the OpenMP worker).
//!
//! When libtorch runs on one thread (`tch::set_num_threads(1)`, `OMP_NUM_THREADS=1`), inside an
//! OpenMP region, or while another thread's step holds the team, both halves run on the calling
//! thread. Without OpenMP (or with
//! `LT_PAIR=helper`) a helper thread of ours is the second thread: it stays awake briefly between
//! calls.
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

/// `GOMP_parallel(fn, data, num_threads, flags)`.
type GompParallel = unsafe extern "C" fn(
    unsafe extern "C" fn(*mut libc::c_void),
    *mut libc::c_void,
    libc::c_uint,
    libc::c_uint,
);
/// `omp_get_thread_num` and the like.
type OmpQuery = unsafe extern "C" fn() -> libc::c_int;

/// GNU OpenMP entry points of the loaded libgomp (or a compatible runtime), if any.
struct Omp {
    parallel: GompParallel,
    thread_num: OmpQuery,
    num_threads: OmpQuery,
    in_parallel: OmpQuery,
}

fn omp() -> Option<&'static Omp> {
    static O: OnceLock<Option<Omp>> = OnceLock::new();
    O.get_or_init(|| {
        if std::env::var("LT_PAIR").is_ok_and(|v| v == "helper") {
            return None;
        }
        let sym = |name: &std::ffi::CStr| {
            // SAFETY: dlsym on the global scope with a NUL-terminated name
            let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
            (!p.is_null()).then_some(p)
        };
        let query = |name: &std::ffi::CStr| {
            // SAFETY: these OpenMP API functions take nothing and return an int
            sym(name).map(|p| unsafe { std::mem::transmute::<*mut libc::c_void, OmpQuery>(p) })
        };
        Some(Omp {
            // SAFETY: the GNU OpenMP ABI's signature of GOMP_parallel
            parallel: unsafe {
                std::mem::transmute::<*mut libc::c_void, GompParallel>(sym(c"GOMP_parallel")?)
            },
            thread_num: query(c"omp_get_thread_num")?,
            num_threads: query(c"omp_get_num_threads")?,
            in_parallel: query(c"omp_in_parallel")?,
        })
    })
    .as_ref()
}

/// The two halves of an OpenMP `join`, each taken once by the team member that runs it.
struct OmpJob<A, B> {
    a: std::cell::UnsafeCell<Option<A>>,
    b: std::cell::UnsafeCell<Option<B>>,
    a_panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    b_panicked: AtomicBool,
    omp: &'static Omp,
}

// SAFETY: `a` is touched only by team member 0, `b` only by member 1 (or by member 0 when the
// team has one thread, after `a`)
unsafe impl<A, B: Send> Sync for OmpJob<A, B> {}

unsafe extern "C" fn omp_member<A: FnOnce(), B: FnOnce() + Send>(data: *mut libc::c_void) {
    let job = &*(data as *const OmpJob<A, B>);
    let (me, team) = ((job.omp.thread_num)(), (job.omp.num_threads)());
    let run_b = || {
        if let Some(b) = (*job.b.get()).take() {
            if catch_unwind(AssertUnwindSafe(b)).is_err() {
                job.b_panicked.store(true, SeqCst);
            }
        }
    };
    if me == 0 {
        if let Some(a) = (*job.a.get()).take() {
            if let Err(p) = catch_unwind(AssertUnwindSafe(a)) {
                *job.a_panic.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
            }
        }
        if team < 2 {
            run_b();
        }
    } else if me == 1 {
        run_b();
    }
}

/// Run `a` on this thread and `b` on a second thread at the same time (libtorch's OpenMP worker,
/// else our helper); returns when both are done. Falls back to running both here when no second
/// thread is free (a nested call, another caller using the helper). A panic in either is resumed
/// here after both finished.
pub(crate) fn join<A, B>(a: A, b: B)
where
    A: FnOnce(),
    B: FnOnce() + Send,
{
    match omp() {
        Some(o) => join_omp(o, a, b),
        None => join_helper(a, b),
    }
}

/// [`join`] on an OpenMP team of two (both halves here when the runtime allows one thread).
fn join_omp<A, B>(o: &'static Omp, a: A, b: B)
where
    A: FnOnce(),
    B: FnOnce() + Send,
{
    // SAFETY: a plain query of the OpenMP runtime
    let inside = unsafe { (o.in_parallel)() };
    // libtorch's view: its thread count applies to a thread lazily, at its first parallel
    // operator, so a fresh thread's own OpenMP setting may not reflect `set_num_threads` yet
    let max = tch::get_num_threads();
    if inside != 0 {
        a();
        b();
        return;
    }
    // one caller at a time takes a team: two generation threads each splitting their steps would
    // put four busy threads on what is typically two cores
    static TEAM_BUSY: AtomicBool = AtomicBool::new(false);
    if max < 2 || TEAM_BUSY.swap(true, SeqCst) {
        // this thread asked libtorch / OpenMP for one thread, or another caller has the team
        a();
        b();
        return;
    }
    let mut job = OmpJob {
        a: std::cell::UnsafeCell::new(Some(a)),
        b: std::cell::UnsafeCell::new(Some(b)),
        a_panic: Mutex::new(None),
        b_panicked: AtomicBool::new(false),
        omp: o,
    };
    // SAFETY: `job` outlives the region (GOMP_parallel returns when every member is done);
    // members never unwind (both halves run under catch_unwind)
    unsafe {
        (o.parallel)(
            omp_member::<A, B>,
            &job as *const OmpJob<A, B> as *mut libc::c_void,
            2,
            0,
        )
    };
    TEAM_BUSY.store(false, SeqCst);
    if let Some(p) = job
        .a_panic
        .get_mut()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        resume_unwind(p);
    }
    if job.b_panicked.load(SeqCst) {
        panic!("lt-model: a fused-step worker panicked");
    }
    // a team that somehow ran without members 0 or 1: what was not run, run here
    if let Some(a) = job.a.get_mut().take() {
        a();
    }
    if let Some(b) = job.b.get_mut().take() {
        b();
    }
}

/// [`join`] with our helper thread as the second thread.
fn join_helper<A, B>(a: A, b: B)
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

    /// The tests below share the process-wide team and helper: one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn join_via<A: FnOnce(), B: FnOnce() + Send>(helper: bool, a: A, b: B) {
        match (helper, omp()) {
            (false, Some(o)) => join_omp(o, a, b),
            _ => join_helper(a, b),
        }
    }

    /// Both halves run and see the caller's data; repeated calls; a nested call runs inline; a
    /// panic on either side comes back to the caller and leaves the second thread usable — on
    /// the OpenMP team (when libtorch brought one) and on the helper.
    #[test]
    fn join_runs_both_and_recovers() {
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        for helper in [false, true] {
            for round in 0..200usize {
                let mut left = vec![0usize; 64];
                let mut right = vec![0usize; 64];
                join_via(
                    helper,
                    || left.iter_mut().for_each(|x| *x = round),
                    || right.iter_mut().for_each(|x| *x = round + 1),
                );
                assert!(left.iter().all(|&x| x == round) && right.iter().all(|&x| x == round + 1));
            }
            let (mut n, mut k, mut m) = (0usize, 0usize, 0usize);
            join_via(helper, || join(|| n += 1, || k += 1), || m += 1);
            assert_eq!((n, k, m), (1, 1, 1));
            let r = std::panic::catch_unwind(|| join_via(helper, || (), || panic!("boom")));
            assert!(r.is_err());
            let r = std::panic::catch_unwind(|| join_via(helper, || panic!("boom"), || ()));
            assert!(r.is_err());
            let mut ok = false;
            join_via(helper, || (), || ok = true);
            assert!(ok);
        }
    }

    /// On the OpenMP team the halves really run at the same time on two threads: each waits for
    /// the other to have started (run one after the other, this would time out) — also right
    /// after a half panicked (the team is released). Meanwhile a second caller (another thread)
    /// runs both of its halves itself instead of taking a second team.
    #[test]
    fn omp_halves_run_concurrently() {
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let Some(o) = omp() else {
            eprintln!("no OpenMP runtime in this process: skipped");
            return;
        };
        if tch::get_num_threads() < 2 {
            eprintln!("OpenMP limited to one thread: skipped");
            return;
        }
        let r = std::panic::catch_unwind(|| join_omp(o, || panic!("boom"), || ()));
        assert!(r.is_err());
        let (a_in, b_in) = (AtomicBool::new(false), AtomicBool::new(false));
        let wait = |flag: &AtomicBool| {
            let t0 = Instant::now();
            while !flag.load(SeqCst) {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "the other half never started"
                );
                std::hint::spin_loop();
            }
        };
        let (mut ta, mut tb, mut other) = (None, None, (None, None));
        join_omp(
            o,
            || {
                a_in.store(true, SeqCst);
                wait(&b_in);
                ta = Some(std::thread::current().id());
                std::thread::scope(|s| {
                    s.spawn(|| {
                        join_omp(
                            o,
                            || other.0 = Some(std::thread::current().id()),
                            || other.1 = Some(std::thread::current().id()),
                        )
                    });
                });
            },
            || {
                b_in.store(true, SeqCst);
                wait(&a_in);
                tb = Some(std::thread::current().id());
            },
        );
        assert_eq!(ta, Some(std::thread::current().id()));
        assert!(tb.is_some() && tb != ta);
        assert!(
            other.0.is_some() && other.0 == other.1,
            "the second caller ran inline"
        );
    }
}
