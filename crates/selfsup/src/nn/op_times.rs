//! Wall time per fused CPU kernel, for profiles by op (issue 6 item 2): off unless
//! [`enable`]d (`train_step --op-times`), one relaxed atomic load per kernel call then.
//!
//! The kernels run on rayon's pool but are called from one thread, so the time of a call is the
//! wall time of the whole parallel op. Each record is keyed by the op's name and sizes (a linear
//! layer's rows, inputs and outputs), so that a GEMM's rate can be read off per shape. Phases
//! (forward, backward, optimizer) are recorded the same way by the caller ([`span`]).

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// (name, sizes) → (total time, calls), in first-seen order.
static TIMES: Mutex<Vec<OpTime>> = Mutex::new(Vec::new());

/// The time spent in one op (with one set of sizes) since the last [`take`].
#[derive(Clone, Debug, PartialEq)]
pub struct OpTime {
    pub name: &'static str,
    /// The op's sizes, as its [`span_sized`] call gives them (empty when it gives none).
    pub sizes: Vec<usize>,
    pub total: Duration,
    pub calls: usize,
}

/// Starts recording (for the rest of the process).
pub fn enable() {
    ENABLED.store(true, Relaxed);
}

/// Whether ops are being timed.
pub fn enabled() -> bool {
    ENABLED.load(Relaxed)
}

/// Everything recorded since the last call, and starts afresh.
pub fn take() -> Vec<OpTime> {
    std::mem::take(&mut *TIMES.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Times the rest of the scope (until the returned guard drops) as `name`, when enabled.
pub fn span(name: &'static str) -> Option<Span> {
    span_sized(name, &[])
}

/// [`span`] keyed by sizes too.
pub fn span_sized(name: &'static str, sizes: &[usize]) -> Option<Span> {
    enabled().then(|| Span {
        name,
        sizes: sizes.to_vec(),
        start: Instant::now(),
    })
}

/// A running [`span`]; records its time when dropped.
pub struct Span {
    name: &'static str,
    sizes: Vec<usize>,
    start: Instant,
}

impl Drop for Span {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        let mut times = TIMES.lock().unwrap_or_else(|e| e.into_inner());
        match times
            .iter_mut()
            .find(|t| t.name == self.name && t.sizes == self.sizes)
        {
            Some(t) => {
                t.total += elapsed;
                t.calls += 1;
            }
            None => times.push(OpTime {
                name: self.name,
                sizes: std::mem::take(&mut self.sizes),
                total: elapsed,
                calls: 1,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_add_up_per_name_and_sizes() {
        // The only test that reads the global table in this crate's unit tests.
        enable();
        take();
        for _ in 0..3 {
            let _s = span_sized("op", &[2, 3]);
            std::thread::sleep(Duration::from_millis(2));
        }
        drop(span_sized("op", &[4]));
        drop(span("phase"));
        // Other unit tests may run kernels meanwhile: only this test's names count.
        let mine = |t: &OpTime| t.name == "op" || t.name == "phase";
        let times: Vec<OpTime> = take().into_iter().filter(mine).collect();
        let by = |n: &str, s: &[usize]| {
            times
                .iter()
                .find(|t| t.name == n && t.sizes == s)
                .cloned()
                .unwrap()
        };
        assert_eq!(times.len(), 3);
        let op = by("op", &[2, 3]);
        assert_eq!(op.calls, 3);
        assert!(op.total >= Duration::from_millis(6), "{op:?}");
        assert_eq!(by("op", &[4]).calls, 1);
        assert_eq!(by("phase", &[]).calls, 1);
        assert!(!take().iter().any(mine), "take() starts afresh");
    }
}
