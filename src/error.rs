//! Errors at the command-line boundary and their exit codes.
//!
//! | code | meaning |
//! |------|---------|
//! | 0    | success |
//! | 1    | a stage failed (the run finished every independent branch) or a runtime error |
//! | 2    | bad input: pipeline file, `--set`, command-line arguments, unknown device, config file, remote URL |
//! | 3    | `cache verify` found corrupt entries |
//! | 4    | an output could not be written (a report, figures, explained images): the results are cached, only writing them failed |
//! | 128+N | stopped by signal N: 130 SIGINT (Ctrl-C), 143 SIGTERM (`kill`, `scancel`, a time limit, preemption), 129 SIGHUP; completed stages are cached, nothing partial was stored |
//!
//! A closed stdout (`cfpipe cache ls | head -1`) ends a command quietly with 0, as in ripgrep
//! and fd; `run` instead finishes its work and exits with its own status.

use crate::cache::CacheError;
use crate::exec::ExecError;
use crate::stages::DeviceError;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A pipeline file that did not check or compile.
    #[error("{0}")]
    Load(#[from] crate::LoadError),
    #[error("{0}")]
    Device(#[from] DeviceError),
    #[error("{0}")]
    Cache(#[from] CacheError),
    #[error("{0}")]
    Exec(#[from] ExecError),
    #[error("{failed} stage(s) failed: {names}")]
    StagesFailed { failed: usize, names: String },
    #[error("results missing from the cache: {stages}; compute them with `{command}`")]
    MissingResults { stages: String, command: String },
    #[error("no cached stage `{id}` {searched}")]
    NoSuchEntry { id: String, searched: String },
    #[error("{0} cache entries failed verification")]
    VerifyFailed(usize),
    #[error(
        "stopped by {}; completed stages are cached, nothing partial was stored",
        crate::signals::name(*signal)
    )]
    Interrupted { signal: i32 },
    /// Whoever read stdout has gone (EPIPE); nothing more to say.
    #[error("stdout closed")]
    BrokenPipe,
    /// A command-line option or environment value that cannot work.
    #[error("{0}")]
    BadOption(String),
    #[error(
        "no remote cache configured: pass --remote URL, set CFPIPE_REMOTE, or add \
         `[remote] url = ...` to cfpipe.toml"
    )]
    NoRemote,
    /// The team's shared group does not exist or this user is not in it.
    #[error("{0}")]
    Group(#[from] crate::cache::perms::GroupError),
    #[error("{0}")]
    Report(#[from] crate::report::write::ReportError),
    #[error("explain: {0}")]
    Explain(#[from] crate::xai::explain::ExplainError),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// Exit 2 for a remote URL or setting that cannot work, 1 for a failed transfer.
    #[error("{0}")]
    Remote(crate::cache::remote::RemoteError),
    #[error("{failed} entr{} failed to {op} (nothing of them was stored)", if *failed == 1 { "y" } else { "ies" })]
    SyncFailed { op: &'static str, failed: usize },
    #[error("{0}")]
    Detach(#[from] crate::exec::detach::DetachError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Load(_)
            | CliError::Device(_)
            | CliError::BadOption(_)
            | CliError::NoRemote
            | CliError::Group(_)
            | CliError::Config(_)
            | CliError::Remote(crate::cache::remote::RemoteError::Config { .. }) => 2,
            CliError::VerifyFailed(_) => 3,
            CliError::Report(_)
            | CliError::Explain(crate::xai::explain::ExplainError::Write { .. }) => 4,
            CliError::Explain(_) => 2,
            CliError::Interrupted { signal } => (128 + signal).clamp(129, 255) as u8,
            CliError::BrokenPipe => 0,
            CliError::Cache(_)
            | CliError::Exec(_)
            | CliError::StagesFailed { .. }
            | CliError::MissingResults { .. }
            | CliError::NoSuchEntry { .. }
            | CliError::SyncFailed { .. }
            | CliError::Remote(_)
            | CliError::Detach(_)
            | CliError::Io(_) => 1,
        }
    }
}
