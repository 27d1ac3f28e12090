//! Termination signals, handled the same way for every command that computes: SIGINT (Ctrl-C),
//! SIGTERM (what `kill`, Slurm's `scancel`, time limits and preemption send) and SIGHUP (a
//! closed terminal or login session).
//!
//! The first signal sets the run's cancel flag: no stage starts, running stages stop at their
//! next batch, nothing partial is published, and the leases are released by their owners. The
//! process then exits with 128 + the signal's number (130, 143, 129), the shell's convention, so
//! a batch system can tell a cancelled job from a failed one. A second signal exits at once,
//! after releasing the leases this process holds (the cache is consistent anyway, since entries
//! only appear by atomic rename).

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

/// The cancel flag a run polls, and which signal set it.
#[derive(Clone)]
pub struct Interrupt {
    pub cancel: Arc<AtomicBool>,
    signal: Arc<AtomicI32>,
}

impl Interrupt {
    /// A flag that only a caller sets (tests, library use).
    pub fn manual() -> Interrupt {
        Interrupt {
            cancel: Arc::new(AtomicBool::new(false)),
            signal: Arc::new(AtomicI32::new(0)),
        }
    }

    /// Install the handlers; from now on, SIGINT, SIGTERM and SIGHUP cancel instead of killing.
    pub fn install() -> Interrupt {
        let me = Interrupt::manual();
        let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
            // Without handlers the default (death by the signal) stays: still crash-safe.
            return me;
        };
        let (cancel, signal) = (me.cancel.clone(), me.signal.clone());
        std::thread::spawn(move || {
            for sig in signals.forever() {
                if cancel.swap(true, Ordering::SeqCst) {
                    // Destructors will not run; release the leases so teammates need not wait
                    // them out.
                    crate::cache::lease::release_all_held();
                    std::process::exit(128 + sig);
                }
                signal.store(sig, Ordering::SeqCst);
                eprintln!(
                    "{}: finishing up; completed stages stay cached (send it again to exit now)",
                    name(sig)
                );
            }
        });
        me
    }

    /// The signal that cancelled the run, if one did.
    pub fn signal(&self) -> Option<i32> {
        Some(self.signal.load(Ordering::SeqCst)).filter(|&s| s != 0)
    }
}

/// A signal's conventional name, for messages.
pub fn name(sig: i32) -> &'static str {
    match sig {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        _ => "signal",
    }
}
