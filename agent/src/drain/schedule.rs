//! When the next drain is due.

use std::{sync::mpsc, time::Duration};

/// Waits until the next drain is due: `interval` passed, `early()` says so (asked every 200 ms),
/// or the agent stops (then true).
pub fn wait_for_drain(
    stop: &mpsc::Receiver<()>,
    interval: Duration,
    mut early: impl FnMut() -> bool,
) -> bool {
    const CHECK: Duration = Duration::from_millis(200);
    let due = std::time::Instant::now() + interval;
    loop {
        let left = due.saturating_duration_since(std::time::Instant::now());
        match stop.recv_timeout(left.min(CHECK)) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return true,
        }
        if left <= CHECK || early() {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_comes_at_the_interval_early_when_asked_or_at_once_when_stopping() {
        let (tx, rx) = mpsc::channel::<()>();
        let t = std::time::Instant::now();
        assert!(!wait_for_drain(&rx, Duration::from_millis(300), || false));
        assert!(t.elapsed() >= Duration::from_millis(300));
        let t = std::time::Instant::now();
        let mut asked = 0;
        assert!(!wait_for_drain(&rx, Duration::from_secs(60), || {
            asked += 1;
            asked == 2
        }));
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "early: {:?}",
            t.elapsed()
        );
        tx.send(()).unwrap();
        assert!(wait_for_drain(&rx, Duration::from_secs(60), || false));
    }
}
