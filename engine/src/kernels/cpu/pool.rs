//! The one thread pool a CPU forward pass runs in.
//!
//! The engine thread used to call rayon from outside any pool: every parallel op (about 240 per
//! token at batch 1) queued its job, woke a worker and put the engine thread to sleep until the
//! op ended. Now the engine runs each whole step inside this pool ([`compute_pool`]`.install`):
//! the engine thread sleeps once per step, one worker runs the step's serial code, and the
//! parallel ops inside it split across the pool's workers, which park when a step ends (rayon
//! workers sleep when idle; they never spin between steps). Every engine in the process shares
//! the pool, so two local models on one machine do not oversubscribe its cores.
//!
//! Its size: `WICK_THREADS`, else `RAYON_NUM_THREADS`, else the cores available to the process.

use std::sync::OnceLock;

static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();

fn threads() -> usize {
    ["WICK_THREADS", "RAYON_NUM_THREADS"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse::<usize>().ok().filter(|&n| n > 0))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The process-wide compute pool (built on first use).
pub fn compute_pool() -> &'static rayon::ThreadPool {
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads())
            .thread_name(|i| format!("wick-compute-{i}"))
            .build()
            .unwrap_or_else(|e| panic!("cannot start the compute thread pool: {e}"))
    })
}
