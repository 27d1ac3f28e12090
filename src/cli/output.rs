//! What the commands print on stdout, and how they behave when nobody reads it.
//!
//! Every line goes through [`write_stdout`] (the `out!` macro), which turns a closed stdout
//! (`cfpipe cache ls | head -1`) into [`CliError::BrokenPipe`], a quiet exit, instead of the
//! panic of `println!`. `run` keeps computing when its reader goes away, since its work is worth
//! more than its log: it prints through [`Lines`], which stops printing at the first failed
//! write, and still exits with the run's own status.
//!
//! [`Lines`] is also the batch-job log: when stdout is not a terminal, `run` and `exec-stage`
//! print one plain line per stage start and finish, so a Slurm or CI log shows progress as it
//! happens instead of staying empty until the summary.

use crate::error::CliError;
use crate::exec::{Observer, Outcome, StageEvent};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Write to stdout; a closed stdout is [`CliError::BrokenPipe`].
pub fn write_stdout(args: std::fmt::Arguments) -> Result<(), CliError> {
    let mut o = std::io::stdout().lock();
    o.write_fmt(args)
        .and_then(|()| o.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => CliError::BrokenPipe,
            _ => CliError::Io(e),
        })
}

/// `println!` that returns [`CliError::BrokenPipe`] from the calling function when stdout is
/// closed.
macro_rules! out {
    () => { $crate::cli::output::write_stdout(format_args!("\n"))? };
    ($($arg:tt)*) => {
        $crate::cli::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))?
    };
}
pub(crate) use out;

/// Whether stdout is a terminal (then progress bars, else plain lines).
pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// Plain lines for a log: `start` when a stage begins computing, then one line when it is
/// settled (`ran`, `cached`, `pulled`, `FAILED`, `cancelled`, `skipped`) with its kind and wall
/// time. Writes nothing more once stdout is closed.
pub struct Lines {
    /// Stage per-line log enabled (stdout is not a terminal and `--quiet` is not given).
    per_stage: bool,
    closed: AtomicBool,
    /// Set by a signal: then the stages kept from starting are not listed one by one, the
    /// run's `interrupted:` line counts them.
    cancel: Arc<AtomicBool>,
    /// When each running stage started, for the wall time of stages that fail.
    started: Mutex<std::collections::HashMap<String, Instant>>,
}

impl Lines {
    pub fn new(per_stage: bool, cancel: Arc<AtomicBool>) -> Lines {
        Lines {
            per_stage,
            closed: AtomicBool::new(false),
            cancel,
            started: Mutex::new(Default::default()),
        }
    }

    /// Print one line unless stdout has been found closed.
    pub fn say(&self, line: &str) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        if write_stdout(format_args!("{line}\n")).is_err() {
            self.closed.store(true, Ordering::Relaxed);
        }
    }
}

impl Observer for Lines {
    fn started(&self, id: &str, kind: &str) {
        if !self.per_stage {
            return;
        }
        self.started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), Instant::now());
        self.say(&format!("start     {id} ({kind})"));
    }

    fn finished(&self, e: &StageEvent) {
        let interrupted = self.cancel.load(Ordering::Relaxed);
        if !self.per_stage || (interrupted && matches!(e.outcome, Outcome::Skipped { .. })) {
            return;
        }
        let since = self
            .started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&e.id)
            .map(|t| t.elapsed().as_secs_f64());
        let timed = |s: Option<f64>| s.map(|s| format!(" {s:.2} s")).unwrap_or_default();
        let line = match &e.outcome {
            Outcome::Ran { wall_s, .. } => {
                format!("ran       {} ({}){}", e.id, e.kind, timed(Some(*wall_s)))
            }
            Outcome::Cached => format!("cached    {} ({})", e.id, e.kind),
            Outcome::Pulled { wall_s, .. } => {
                format!("pulled    {} ({}){}", e.id, e.kind, timed(Some(*wall_s)))
            }
            Outcome::Failed { .. } => format!("FAILED    {} ({}){}", e.id, e.kind, timed(since)),
            Outcome::Cancelled => format!("cancelled {} ({}){}", e.id, e.kind, timed(since)),
            Outcome::Skipped { failed_input } => {
                format!(
                    "skipped   {} ({}): input `{failed_input}` did not complete",
                    e.id, e.kind
                )
            }
        };
        self.say(&line);
    }
}
