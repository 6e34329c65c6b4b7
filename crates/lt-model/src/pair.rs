//! A team of two for the fused step: one closure run at once on the calling thread and on a
//! second thread, its two members meeting at a barrier ([`team`], [`Member::sync`]).
//!
//! The second thread is libtorch's own OpenMP worker when the process has GNU OpenMP (libtorch's
//! CPU builds link `libgomp`): `GOMP_parallel` with a team of two, found at run time. libgomp's
//! worker spins for a few milliseconds after every parallel region, so a step right after a
//! libtorch operator (a prefill) or another step starts at once; a thread of our own would be a
//! third runnable thread fighting that spinning worker for two cores (measured: an 8-row step of a
//! 4-layer model 136 µs with a thread of our own, 114 µs on the OpenMP worker).
//!
//! When libtorch runs on one thread (`tch::set_num_threads(1)`, `OMP_NUM_THREADS=1`), inside an
//! OpenMP region, or while another thread's step holds the team, the work runs on the calling
//! thread as a team of one. Without OpenMP (or with `LT_PAIR=helper`) a helper thread of ours is
//! the second thread: it stays awake briefly between calls.
//!
//! A decode step of a small model takes ~0.03–0.2 ms; handing half of it to a sleeping thread
//! pool costs tens of microseconds in wake-ups (measured: rayon's `join` from outside its pool
//! made an 8-row step only ~8 % faster on two cores). The helper here spins for a while after
//! each job (about a millisecond, enough to cover the gap to the next step), then parks. The
//! barrier spins too (a fused step meets there ~4 times per layer, a few hundred nanoseconds
//! each), then yields; a member that panics releases the other.
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
            // team members catch their own panics (and report them to the caller); this only
            // keeps the helper alive should a job ever unwind
            let _ = catch_unwind(AssertUnwindSafe(job));
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

/// One member of a [`team`]: which part of the work is its own, and the barrier.
pub(crate) struct Member<'a> {
    /// 0 on the calling thread, 1 on the second thread.
    pub index: usize,
    /// 2, or 1 when the whole work runs on the calling thread.
    pub count: usize,
    barrier: Option<&'a Barrier>,
    passed: std::cell::Cell<usize>,
}

impl Member<'_> {
    pub fn solo() -> Member<'static> {
        Member {
            index: 0,
            count: 1,
            barrier: None,
            passed: std::cell::Cell::new(0),
        }
    }

    /// Wait until the other member has reached its same call (every member makes the same
    /// sequence of calls); what either wrote before is visible to both after. Panics when the
    /// other member panicked (instead of waiting forever).
    pub fn sync(&self) {
        if let Some(b) = self.barrier {
            let k = self.passed.get() + 1;
            self.passed.set(k);
            b.wait(k);
        }
    }

    /// This member's share of `0..n` cut at a multiple of `align` (the first member takes the
    /// lower part, about half).
    pub fn part(&self, n: usize, align: usize) -> std::ops::Range<usize> {
        if self.count < 2 {
            return 0..n;
        }
        half(n, align, self.index)
    }
}

/// Half `i` (0 or 1) of `0..n` as a team of two splits it ([`Member::part`]): cut at a multiple
/// of `align`, the first half about half.
pub(crate) fn half(n: usize, align: usize, i: usize) -> std::ops::Range<usize> {
    let cut = ((n / 2).div_ceil(align.max(1)) * align.max(1)).min(n);
    if i == 0 {
        0..cut
    } else {
        cut..n
    }
}

/// A reusable barrier of two: a monotonic arrival count (the k-th wait of each member returns
/// once 2k arrivals happened), spinning briefly, then yielding.
struct Barrier {
    arrived: AtomicUsize,
    poisoned: AtomicBool,
}

impl Barrier {
    fn wait(&self, k: usize) {
        self.arrived.fetch_add(1, SeqCst);
        let mut spins = 0u32;
        while self.arrived.load(SeqCst) < 2 * k {
            if self.poisoned.load(SeqCst) {
                panic!("lt-model: the other half of a fused step panicked");
            }
            if spins < 1 << 16 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// What a team run shares: the work, the barrier, the first panic.
struct TeamJob<'f, F> {
    f: &'f F,
    barrier: Barrier,
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

impl<F: Fn(&Member<'_>) + Sync> TeamJob<'_, F> {
    fn new(f: &F) -> TeamJob<'_, F> {
        TeamJob {
            f,
            barrier: Barrier {
                arrived: AtomicUsize::new(0),
                poisoned: AtomicBool::new(false),
            },
            panic: Mutex::new(None),
        }
    }

    /// Run member `index` of `count`; a panic poisons the barrier (the other member stops
    /// waiting) and is kept for the caller.
    fn member(&self, index: usize, count: usize) {
        let m = Member {
            index,
            count,
            barrier: (count > 1).then_some(&self.barrier),
            passed: std::cell::Cell::new(0),
        };
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| (self.f)(&m))) {
            self.barrier.poisoned.store(true, SeqCst);
            let mut slot = self.panic.lock().unwrap_or_else(|e| e.into_inner());
            // the first panic is the cause; the other member's is "the other half panicked"
            if slot.is_none() {
                *slot = Some(p);
            }
        }
    }

    fn finish(self) {
        if let Some(p) = self.panic.into_inner().unwrap_or_else(|e| e.into_inner()) {
            resume_unwind(p);
        }
    }
}

unsafe extern "C" fn omp_member<F: Fn(&Member<'_>) + Sync>(data: *mut libc::c_void) {
    let job = &*(data as *const (TeamJob<'_, F>, &'static Omp));
    let (me, team) = ((job.1.thread_num)(), (job.1.num_threads)());
    match (me, team) {
        (0, ..2) => job.0.member(0, 1),
        (0 | 1, _) => job.0.member(me as usize, 2),
        _ => {}
    }
}

/// Run `f` as two members at once — member 0 on this thread, member 1 on a second thread
/// (libtorch's OpenMP worker, else our helper) — that may meet at [`Member::sync`]. When no
/// second thread is free (a nested call, another caller holds it, one thread asked for), `f`
/// runs once here as a team of one (`count == 1`: the whole work, `sync` does nothing). A panic
/// of either member is resumed here after both stopped.
pub(crate) fn team<F: Fn(&Member<'_>) + Sync>(f: F) {
    match omp() {
        Some(o) => team_omp(o, &f),
        None => team_helper(&f),
    }
}

/// [`team`] on an OpenMP team of two (a team of one when the runtime gives one thread).
fn team_omp<F: Fn(&Member<'_>) + Sync>(o: &'static Omp, f: &F) {
    // SAFETY: a plain query of the OpenMP runtime
    let inside = unsafe { (o.in_parallel)() };
    // libtorch's view: its thread count applies to a thread lazily, at its first parallel
    // operator, so a fresh thread's own OpenMP setting may not reflect `set_num_threads` yet
    let max = tch::get_num_threads();
    // one caller at a time takes a team: two generation threads each splitting their steps would
    // put four busy threads on what is typically two cores
    static TEAM_BUSY: AtomicBool = AtomicBool::new(false);
    if inside != 0 || max < 2 || TEAM_BUSY.swap(true, SeqCst) {
        // inside a region, one thread asked for, or another caller has the team
        return f(&Member::solo());
    }
    let job = (TeamJob::new(f), o);
    // SAFETY: `job` outlives the region (GOMP_parallel returns when every member is done);
    // members never unwind (they run under catch_unwind)
    unsafe {
        (o.parallel)(
            omp_member::<F>,
            &job as *const (TeamJob<'_, F>, &Omp) as *mut libc::c_void,
            2,
            0,
        )
    };
    TEAM_BUSY.store(false, SeqCst);
    job.0.finish();
}

/// [`team`] with our helper thread as the second thread.
fn team_helper<F: Fn(&Member<'_>) + Sync>(f: &F) {
    let Some(h) = helper() else {
        return f(&Member::solo());
    };
    if h.busy.swap(true, SeqCst) {
        return f(&Member::solo());
    }
    let job = TeamJob::new(f);
    {
        let job = &job;
        // SAFETY: the closure borrows `job` from this frame; it is erased to 'static only to
        // cross to the helper, and this function does not return (nor unwind: members run
        // under catch_unwind) before the helper has finished running it.
        let second: Box<dyn FnOnce() + Send + '_> = Box::new(move || job.member(1, 2));
        let second: Job = unsafe { std::mem::transmute(second) };
        *h.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(second);
        let ticket = h.posted.fetch_add(1, SeqCst) + 1;
        if h.sleeping.load(SeqCst) {
            h.thread.unpark();
        }
        job.member(0, 2);
        let mut spins = 0u32;
        while h.finished.load(SeqCst) < ticket {
            if spins < 2048 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }
    h.busy.store(false, SeqCst);
    job.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests below share the process-wide team and helper: one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn team_via<F: Fn(&Member<'_>) + Sync>(helper: bool, f: F) {
        match (helper, omp()) {
            (false, Some(o)) => team_omp(o, &f),
            _ => team_helper(&f),
        }
    }

    /// On the OpenMP team the members really run at the same time on two threads (member 0 on
    /// the caller's): each waits for the other to have started (run one after the other, this
    /// would time out) — also right after a member panicked (the team is released). Meanwhile a
    /// second caller (another thread) runs as a team of one instead of taking a second team.
    #[test]
    fn omp_members_run_concurrently() {
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        if omp().is_none() {
            eprintln!("no OpenMP runtime in this process: skipped");
            return;
        }
        if tch::get_num_threads() < 2 {
            eprintln!("OpenMP limited to one thread: skipped");
            return;
        }
        let r = std::panic::catch_unwind(|| {
            team_via(false, |m| {
                if m.index == 0 {
                    panic!("boom")
                }
            })
        });
        assert!(r.is_err());
        let started = [AtomicBool::new(false), AtomicBool::new(false)];
        let ids = Mutex::new(vec![None; 2]);
        let other = Mutex::new(Vec::new());
        team_via(false, |m| {
            assert_eq!(m.count, 2);
            started[m.index].store(true, SeqCst);
            let t0 = Instant::now();
            while !started[1 - m.index].load(SeqCst) {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "the other member never started"
                );
                std::hint::spin_loop();
            }
            ids.lock().unwrap()[m.index] = Some(std::thread::current().id());
            if m.index == 0 {
                std::thread::scope(|s| {
                    s.spawn(|| {
                        team_via(false, |inner| {
                            other
                                .lock()
                                .unwrap()
                                .push((inner.count, std::thread::current().id()))
                        })
                    });
                });
            }
        });
        let ids = ids.into_inner().unwrap();
        assert_eq!(ids[0], Some(std::thread::current().id()));
        assert!(ids[1].is_some() && ids[1] != ids[0]);
        let other = other.into_inner().unwrap();
        assert_eq!(other.len(), 1, "the second caller ran as a team of one");
        assert_eq!(other[0].0, 1);
    }

    /// A team's members meet at `sync`: what one wrote before is what the other reads after,
    /// round after round, in both directions; the parts split a range disjointly; a team inside
    /// a team is a team of one (the whole range, `sync` a no-op) — on both kinds of second
    /// thread. With a second thread, both members ran (a team of one would do all the rounds).
    #[test]
    fn team_members_meet_at_sync() {
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        for helper in [false, true] {
            let n = 4096;
            let buf: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            let bad = AtomicUsize::new(0);
            let counts = Mutex::new(Vec::new());
            team_via(helper, |m| {
                counts.lock().unwrap().push(m.count);
                let mine = m.part(n, 16);
                for round in 1..200usize {
                    // each writes its part, then checks the whole buffer after the barrier
                    for i in mine.clone() {
                        buf[i].store(round * 2 + i % 2, SeqCst);
                    }
                    m.sync();
                    if (0..n).any(|i| buf[i].load(SeqCst) != round * 2 + i % 2) {
                        bad.fetch_add(1, SeqCst);
                    }
                    m.sync();
                }
                // nested (on the same kind of second thread): a team of one
                team_via(helper, |inner| {
                    assert_eq!((inner.count, inner.part(10, 4)), (1, 0..10));
                    inner.sync();
                });
            });
            assert_eq!(bad.load(SeqCst), 0);
            let counts = counts.into_inner().unwrap();
            if tch::get_num_threads() >= 2 {
                assert_eq!(counts, vec![2, 2], "helper {helper}");
            }
        }
        let two = |index| Member {
            index,
            count: 2,
            barrier: None,
            passed: std::cell::Cell::new(0),
        };
        for (n, align) in [(344, 16), (7, 16), (0, 16), (1024, 48), (5, 1)] {
            let (a, b) = (two(0).part(n, align), two(1).part(n, align));
            assert_eq!((a.start, a.end, b.end), (0, b.start, n));
            assert!(a.end % align == 0 || a.end == n);
        }
    }

    /// A member that panics releases the other one waiting at the barrier (no deadlock) and the
    /// caller gets the first panic's message; the team is usable afterwards.
    #[test]
    fn team_panic_releases_the_barrier() {
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        for helper in [false, true] {
            for panicking in [0usize, 1] {
                let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    team_via(helper, |m| {
                        if m.index == panicking && m.count == 2 {
                            panic!("boom {panicking}");
                        }
                        if m.count == 1 {
                            panic!("boom {panicking}");
                        }
                        m.sync();
                        m.sync();
                    })
                }));
                let msg = r.expect_err("the panic comes back");
                let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
                assert_eq!(msg, format!("boom {panicking}"), "helper {helper}");
                let ran = AtomicUsize::new(0);
                team_via(helper, |m| {
                    m.sync();
                    ran.fetch_add(1, SeqCst);
                });
                assert!(ran.load(SeqCst) >= 1);
            }
        }
    }
}
