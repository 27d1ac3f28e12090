//! Progress display: one overall bar for stages plus one line per running stage, via
//! indicatif. A stage's line is a spinner until the stage announces a phase with a known number
//! of steps (epochs, scoring batches), then a bar with its ETA and the latest metric (the
//! running loss). Hidden entirely when stderr is not a terminal or when disabled, so logs and CI
//! output stay clean; those get the plain lines of `cli::lines` instead.

use super::stage::Progress;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::Mutex;

pub struct Bars {
    multi: Option<MultiProgress>,
    overall: Option<ProgressBar>,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .expect("static template")
        .progress_chars("=> ")
}

impl Bars {
    pub fn new(enabled: bool, total: u64) -> Bars {
        if !enabled || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return Bars {
                multi: None,
                overall: None,
            };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let overall = multi.add(ProgressBar::new(total));
        overall.set_style(style(
            "{prefix:>8} [{bar:30}] {pos}/{len} stages {elapsed} (eta {eta})",
        ));
        overall.set_prefix("cfpipe");
        Bars {
            multi: Some(multi),
            overall: Some(overall),
        }
    }

    pub fn stage(&self, id: &str) -> StageBar {
        let bar = self.multi.as_ref().map(|m| {
            // No bar until a phase says how long it is: a stage without phases (most score
            // methods) would otherwise show an empty `0/0` bar for its whole run.
            let b = m.add(ProgressBar::new_spinner());
            b.set_style(style("  {prefix:40!} {spinner} {msg}"));
            b.set_prefix(id.to_string());
            b.enable_steady_tick(std::time::Duration::from_millis(200));
            b
        });
        StageBar {
            bar,
            phase: Mutex::new(String::new()),
        }
    }

    pub fn stage_done(&self) {
        if let Some(o) = &self.overall {
            o.inc(1);
        }
    }

    pub fn finish(&self) {
        if let Some(o) = &self.overall {
            o.finish_and_clear();
        }
    }
}

pub struct StageBar {
    bar: Option<ProgressBar>,
    phase: Mutex<String>,
}

impl StageBar {
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Progress for StageBar {
    fn phase(&self, name: &str, len: u64) {
        if let Some(b) = &self.bar {
            *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = name.to_string();
            // Length before style: the bar is never drawn as `0/0`.
            b.set_length(len);
            b.set_position(0);
            b.set_message(name.to_string());
            if len > 0 {
                b.disable_steady_tick();
                b.set_style(style(
                    "  {prefix:40!} {msg:32} [{bar:20}] {pos}/{len} eta {eta}",
                ));
            }
        }
    }
    fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }
    fn metric(&self, name: &str, value: f64) {
        if let Some(b) = &self.bar {
            let phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
            b.set_message(format!("{phase} {name} {value:.4}"));
        }
    }
}
