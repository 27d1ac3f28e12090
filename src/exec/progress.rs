//! Progress display: one overall bar for stages plus one bar per running stage (epochs,
//! scoring), via indicatif. Hidden entirely when stderr is not a terminal or when disabled,
//! so logs and CI output stay clean.

use super::stage::Progress;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Bars {
    multi: Option<MultiProgress>,
    overall: Option<ProgressBar>,
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
        overall.set_style(
            ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} stages {elapsed}")
                .expect("static template")
                .progress_chars("=> "),
        );
        overall.set_prefix("cfpipe");
        Bars {
            multi: Some(multi),
            overall: Some(overall),
        }
    }

    pub fn stage(&self, id: &str) -> StageBar {
        let bar = self.multi.as_ref().map(|m| {
            let b = m.add(ProgressBar::new(0));
            b.set_style(
                ProgressStyle::with_template("  {prefix:40!} {msg:12} [{bar:20}] {pos}/{len}")
                    .expect("static template")
                    .progress_chars("=> "),
            );
            b.set_prefix(id.to_string());
            b
        });
        StageBar { bar }
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
            b.set_message(name.to_string());
            b.set_length(len);
            b.set_position(0);
        }
    }
    fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }
}
