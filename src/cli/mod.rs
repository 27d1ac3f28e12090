//! Command-line options (clap) and the subcommands. Raw options are resolved here into a
//! cache, a checked pipeline and a DAG; the library does the rest. What the commands print,
//! and how a closed stdout is handled, lives in `output`.

mod cache;
mod compare;
mod filter;
mod log;
pub mod output;
mod plan;
mod slurm;
use cache::cache_cmd;
pub use cache::{open_remote, CacheCmd, RootsCmd};
use output::{out, Lines};
use slurm::{detach, detached_jobs};

use crate::cache::roots::{RootOwner, RootRecorder};
use crate::cache::{Cache, CacheConfig, CacheError};
use crate::config::Config;
use crate::error::CliError;
use crate::exec::{resolve, ExecOptions, Executor, Outcome};
use crate::graph::Dag;
use crate::report::figures;
use crate::spec::DataCheck;
use crate::stages::{self, Backend};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Parser)]
#[command(
    name = "cfpipe",
    version,
    about = "Cached, content-hashed continual-learning pipelines"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Cache directory [default: $CFPIPE_CACHE, else `[cache] dir` in cfpipe.toml, else ./cache].
    #[arg(long, value_name = "DIR", global = true)]
    pub cache: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct PipelineArgs {
    /// Pipeline YAML file.
    pub pipeline: PathBuf,
    /// Override a value: `--set strategies.rnf.prune.threshold=0.05` (repeatable; quote values
    /// with spaces: `--set 'seeds=[0, 1]'`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Sweep a value: `--sweep strategies.rnf.prune.threshold=0.01,0.05` (repeatable: the
    /// grid of every combination, beside the file's own `sweep:` block). Each strategy a sweep
    /// changes runs once per value, named like `rnf@threshold=0.05`; shared stages run once.
    #[arg(long = "sweep", value_name = "KEY=V1,V2,...")]
    pub sweep: Vec<String>,
}

impl PipelineArgs {
    /// The pipeline and its DAG, with `--set` and `--sweep` applied.
    fn load(
        &self,
        data: DataCheck,
    ) -> Result<(crate::spec::Pipeline, crate::graph::Dag), CliError> {
        Ok(crate::load_sweep(
            &self.pipeline,
            &self.set,
            &self.sweep,
            data,
        )?)
    }
}

/// The remote cache, for the commands that read from or write to one.
#[derive(Debug, Args, Clone, Default)]
pub struct RemoteArgs {
    /// Remote cache (s3://BUCKET/PREFIX, http(s)://HOST/PATH for WebDAV, file:///DIR, DIR),
    /// or `none` [default: $CFPIPE_REMOTE, else `[remote] url` in cfpipe.toml].
    #[arg(long, value_name = "URL")]
    pub remote: Option<String>,
}

/// How a team shares the cache, for the commands that create entries or judge leases.
#[derive(Debug, Args, Clone, Default)]
pub struct TeamArgs {
    /// Make what cfpipe creates in the cache owned by GROUP, group-writable, directories
    /// setgid, for a team cache [default: $CFPIPE_SHARED_GROUP, else `[cache] shared_group` in
    /// cfpipe.toml, else none].
    #[arg(long, value_name = "GROUP")]
    pub shared_group: Option<String>,
    /// Seconds without a heartbeat before another process's lease on a stage is taken over
    /// [default: $CFPIPE_LEASE_TIMEOUT, else 60].
    #[arg(long, value_name = "SECS")]
    pub lease_timeout: Option<f64>,
}

/// Where stages that are not cached compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorKind {
    /// In this process, `--jobs` at a time.
    Local,
    /// As Slurm jobs running `cfpipe exec-stage` on compute nodes (`[slurm]` in cfpipe.toml).
    Slurm,
}

#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// Where stages compute.
    #[arg(long, value_enum, default_value = "local")]
    pub executor: ExecutorKind,
    /// Slurm jobs in flight at once [default: 100].
    #[arg(long, value_name = "N")]
    pub max_jobs: Option<usize>,
    /// Submissions again of a job that failed in the cluster (node failure, preemption, time
    /// limit, out of memory); a stage's own error is not retried.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub retries: u32,
    /// Submit every stage that is not cached at once, each job after its inputs' jobs
    /// (`afterok`), and exit; `cfpipe status` then shows the jobs (with `--executor slurm`).
    #[arg(long)]
    pub detach: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline: compute what is not cached.
    Run {
        #[command(flatten)]
        p: PipelineArgs,
        /// Stages run in parallel [default: number of CPUs].
        #[arg(long, short = 'j')]
        jobs: Option<usize>,
        /// `cpu`, or `cuda[:N]` with a CUDA build.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// No progress bars, and no per-stage lines when stdout is not a terminal; failures
        /// and the summary line are still printed.
        #[arg(long, short)]
        quiet: bool,
        #[command(flatten)]
        team: TeamArgs,
        #[command(flatten)]
        remote: RemoteArgs,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Show, per stage, whether it is cached and why not.
    Status {
        #[command(flatten)]
        p: PipelineArgs,
        /// Print `{"stages":[{"id","aliases","kind","key","cached","reason"}]}` instead of a
        /// table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        filter: filter::StageFilter,
        /// Only the stages that are not cached.
        #[arg(long)]
        pending: bool,
    },
    /// Before running: per stage kind, how many stages `run` would compute and how many are
    /// cached, with compute time estimated from the wall times the cache recorded.
    Plan {
        #[command(flatten)]
        p: PipelineArgs,
        /// Print `{"kinds":[…],"total":{…},"stages":[{"id","kind","run","estimate_s","basis"}]}`.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        filter: filter::StageFilter,
        /// List only the stages that would run (with `--json`).
        #[arg(long)]
        pending: bool,
    },
    /// Print the stage graph (no data needed).
    Dag {
        #[command(flatten)]
        p: PipelineArgs,
        /// Graphviz output.
        #[arg(long)]
        dot: bool,
        #[command(flatten)]
        filter: filter::StageFilter,
        /// One block per stage and seed, rather than one per stage with its seeds listed.
        #[arg(long)]
        all_seeds: bool,
    },
    /// Print accuracy matrices from the cache; exit 1 if results are missing.
    Show {
        #[command(flatten)]
        p: PipelineArgs,
        /// Print every strategy's and seed's results as JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Compare strategies, sweep variants and pipelines in one table from the cache: final
    /// and task-1 accuracy, forgetting, BWT, free capacity (mean ± std over seeds) and compute
    /// time; exit 1 if results are missing.
    Compare {
        /// Pipeline YAML files; with two or more, each one's rows, and the settings that
        /// differ between them as columns.
        #[arg(required = true, value_name = "PIPELINE")]
        pipelines: Vec<PathBuf>,
        /// `--set` overrides, applied to every pipeline.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// `--sweep` axes, applied to every pipeline.
        #[arg(long = "sweep", value_name = "KEY=V1,V2,...")]
        sweep: Vec<String>,
        /// Add each row's final-accuracy difference to this strategy (`NAME`, or
        /// `PIPELINE:NAME` across files), with a paired t-test and an exact sign-flip test
        /// over the seeds both have.
        #[arg(long, value_name = "STRATEGY")]
        baseline: Option<String>,
        /// Sort rows best first by this metric.
        #[arg(long, value_enum, value_name = "METRIC")]
        sort: Option<crate::report::compare::Metric>,
        /// Print the rows as JSON.
        #[arg(long, conflicts_with_all = ["csv", "md"])]
        json: bool,
        /// Print the rows as CSV (means and stds in their own columns, fractions).
        #[arg(long, conflicts_with = "md")]
        csv: bool,
        /// Print a markdown table.
        #[arg(long)]
        md: bool,
    },
    /// Print one cached stage's log, and a train stage's loss and accuracy per epoch.
    Log {
        /// The stage id (e.g. `rnf/seed0/task2/train`), or a key prefix (8+ hex digits).
        stage: String,
        /// Find the stage id in this pipeline (any of its ids, with `--set` and `--sweep`);
        /// without it, among the ids the cache's entries were first computed under.
        #[arg(long, value_name = "PIPELINE")]
        pipeline: Option<PathBuf>,
        /// `--set` overrides of `--pipeline`.
        #[arg(long = "set", value_name = "KEY=VALUE", requires = "pipeline")]
        set: Vec<String>,
        /// `--sweep` axes of `--pipeline`.
        #[arg(long = "sweep", value_name = "KEY=V1,V2,...", requires = "pipeline")]
        sweep: Vec<String>,
    },
    /// Write report.md, CSV/JSON exports and figures from the cache (never trains).
    Report {
        #[command(flatten)]
        p: PipelineArgs,
        /// Output directory [default: reports/<pipeline name>, or
        /// reports/<name>@<digest of the --set and --sweep arguments> with either].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Report into reports/NAME: a name of your own for this configuration's report
        /// (e.g. `--name lr-sweep`). Not with --out, which names the whole path.
        #[arg(long, value_name = "NAME", conflicts_with = "out")]
        name: Option<String>,
        /// Replace a report of another configuration (file, overrides, sweep) in the output
        /// directory.
        #[arg(long)]
        force: bool,
        /// Also write TensorBoard event files under DIR (one run per strategy and seed:
        /// training loss and accuracy per epoch, mean accuracy and free capacity per task).
        #[arg(long, value_name = "DIR")]
        tensorboard: Option<PathBuf>,
        /// Resolution of the PNG figures. The layout is that of a 9 × 6 inch figure at any
        /// resolution (300 for print); the SVGs are vector.
        #[arg(long, value_name = "N", default_value_t = figures::BASE_DPI, value_parser = dpi)]
        dpi: u32,
        /// Percent axes (accuracy, free capacity) span 0–100 instead of fitting the data.
        #[arg(long)]
        full_range: bool,
    },
    /// Write PNG heatmaps of LRP input relevance for test images, from a cached train stage
    /// (never trains).
    Explain {
        #[command(flatten)]
        p: PipelineArgs,
        /// A train stage id, e.g. `rnf/seed0/task2/train` (see `cfpipe dag`).
        #[arg(long, value_name = "ID")]
        stage: String,
        /// Indices into the head task's test split, comma-separated [default: 0,1,2,3].
        #[arg(long, value_name = "LIST", value_delimiter = ',')]
        images: Vec<usize>,
        /// The task (1-based) whose head explains [default: the stage's task].
        #[arg(long, value_name = "T")]
        head: Option<usize>,
        /// LRP rule of dense layers: epsilon, zplus, alpha_beta, gamma, flat, w_square, z_box.
        #[arg(long, default_value = "epsilon")]
        rule: String,
        /// LRP rule of conv layers.
        #[arg(long, default_value = "zplus")]
        conv_rule: String,
        /// ε of the ε rule.
        #[arg(long, default_value_t = 1e-6)]
        epsilon: f64,
        /// Whose conventions the rules follow: cfpipe (the bias left out of z⁺, αβ and w²,
        /// stabilizer 1e-9) or zennit (zennit 0.5.1's: the bias counted, stabilizer 1e-6).
        #[arg(long, default_value = "cfpipe", value_parser = ["cfpipe", "zennit"])]
        convention: String,
        /// Output directory [default: reports/<pipeline name>/explain/<stage id, `/` → `-`>].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Resolution of the PNG figures (the SVGs beside them are vector).
        #[arg(long, value_name = "N", default_value_t = figures::BASE_DPI, value_parser = dpi)]
        dpi: u32,
        /// `cpu`, or `cuda[:N]` with a CUDA build.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Inspect and maintain the cache.
    Cache {
        #[command(subcommand)]
        cmd: CacheCmd,
    },
    /// Run one stage by key from its request file (for cluster executors). Exits 0 when the
    /// entry is published (ran or cached), 1 when the stage failed, 128 + N on signal N.
    ExecStage {
        /// The stage key (64 hex digits) of a request that `cfpipe run` wrote to the cache's
        /// `requests/`; or give `--pipeline` and `--stage` instead.
        #[arg(required_unless_present = "stage")]
        key: Option<String>,
        /// The pipeline whose stage `--stage` to compute, from its inputs in the cache (what a
        /// job of `run --detach` runs: its key is derived on the node).
        #[arg(long, requires = "stage", conflicts_with = "key")]
        pipeline: Option<PathBuf>,
        /// `--set` overrides of `--pipeline`.
        #[arg(long = "set", value_name = "KEY=VALUE", requires = "pipeline")]
        set: Vec<String>,
        /// `--sweep` axes of `--pipeline`.
        #[arg(long = "sweep", value_name = "KEY=V1,V2,...", requires = "pipeline")]
        sweep: Vec<String>,
        /// The stage id in `--pipeline`, e.g. `rnf/seed0/task2/train`.
        #[arg(long, requires = "pipeline")]
        stage: Option<String>,
        /// `cpu`, or `cuda[:N]` with a CUDA build.
        #[arg(long, default_value = "cpu")]
        device: String,
        #[command(flatten)]
        team: TeamArgs,
    },
}

impl Command {
    /// The team-cache options, where the command has them.
    fn team(&self) -> TeamArgs {
        match self {
            Command::Run { team, .. }
            | Command::ExecStage { team, .. }
            | Command::Cache {
                cmd: CacheCmd::Gc { team, .. } | CacheCmd::Pull { team, .. },
            } => team.clone(),
            _ => TeamArgs::default(),
        }
    }

    /// The pipeline files a command is about, where the config file is looked for first.
    fn pipelines(&self) -> Vec<PathBuf> {
        match self {
            Command::Run { p, .. }
            | Command::Status { p, .. }
            | Command::Plan { p, .. }
            | Command::Dag { p, .. }
            | Command::Show { p, .. }
            | Command::Report { p, .. }
            | Command::Explain { p, .. } => vec![p.pipeline.clone()],
            Command::Cache {
                cmd:
                    CacheCmd::Gc { pipelines, .. }
                    | CacheCmd::Push { pipelines, .. }
                    | CacheCmd::Pull { pipelines, .. },
            }
            | Command::Compare { pipelines, .. } => pipelines.clone(),
            _ => vec![],
        }
    }
}

/// Where the cache is and how it is shared, from flags and environment.
pub struct CacheLoc {
    pub dir: Option<PathBuf>,
    pub config: CacheConfig,
    /// The `--cache` flag as given, for commands suggested to the user.
    flag: Option<PathBuf>,
}

impl CacheLoc {
    /// Each setting comes from its flag, else its environment variable, else the `[cache]`
    /// table of the config file found for the command's pipelines (see `config`).
    fn from_cli(cli: &Cli) -> Result<CacheLoc, CliError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let file = Config::for_pipelines(&cli.command.pipelines())?.cache;
        let team = cli.command.team();
        let mut config = CacheConfig {
            shared_group: team
                .shared_group
                .clone()
                .or_else(|| env("CFPIPE_SHARED_GROUP"))
                .or(file.shared_group),
            ..CacheConfig::default()
        };
        let timeout = match (team.lease_timeout, env("CFPIPE_LEASE_TIMEOUT")) {
            (Some(t), _) => Some(t),
            (None, Some(v)) => Some(v.parse::<f64>().map_err(|_| {
                CliError::BadOption(format!(
                    "CFPIPE_LEASE_TIMEOUT=`{v}` is not a number of seconds"
                ))
            })?),
            (None, None) => None,
        };
        if let Some(t) = timeout {
            if !(t.is_finite() && t > 0.0) {
                return Err(CliError::BadOption(format!(
                    "lease timeout must be a positive number of seconds, got {t}"
                )));
            }
            config.lease_timeout_s = t;
        }
        Ok(CacheLoc {
            dir: cli
                .cache
                .clone()
                .or_else(|| env("CFPIPE_CACHE").map(PathBuf::from))
                .or(file.dir),
            config,
            flag: cli.cache.clone(),
        })
    }

    fn dir(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| PathBuf::from("cache"))
    }

    /// The command that computes what a read-only command found missing: the same pipeline,
    /// overrides and `--cache` (a cache named by environment or config file applies anyway).
    fn run_command(&self, p: &PipelineArgs) -> String {
        self.command("run", p)
    }

    /// `cfpipe VERB PIPELINE --set … --cache …`, as the user would type it again.
    fn command(&self, verb: &str, p: &PipelineArgs) -> String {
        let cache = self
            .flag
            .as_ref()
            .map(|d| format!(" --cache {}", shell_word(&d.display().to_string())))
            .unwrap_or_default();
        format!(
            "cfpipe {verb} {}{}{cache}",
            shell_word(&p.pipeline.display().to_string()),
            set_args(&p.set)
                + &p.sweep
                    .iter()
                    .map(|s| format!(" --sweep {}", shell_word(s)))
                    .collect::<String>()
        )
    }
}

/// Open (creating if needed) the cache, for commands that write to it.
fn open_cache(loc: &CacheLoc) -> Result<Cache, CliError> {
    Cache::open_with(loc.dir(), &loc.config).map_err(|e| match e {
        CacheError::Group(g) => CliError::Group(g),
        e => e.into(),
    })
}

/// The cache for commands that only read it: nothing is created or written, and a cache
/// directory that does not exist reads as an empty cache.
fn open_cache_read(loc: &CacheLoc) -> Cache {
    Cache::open_read_only(loc.dir())
}

pub fn run(cli: Cli) -> Result<(), CliError> {
    let c = &CacheLoc::from_cli(&cli)?;
    match cli.command {
        Command::Run {
            p,
            jobs,
            device,
            quiet,
            team: _,
            remote,
            cluster,
        } => run_cmd(&p, jobs, device, quiet, &remote, &cluster, c),
        Command::Status {
            p,
            json,
            filter,
            pending,
        } => status_cmd(&p, json, &filter, pending, c),
        Command::Dag {
            p,
            dot,
            filter,
            all_seeds,
        } => {
            let (_, dag) = p.load(DataCheck::Skip)?;
            if dot && !filter.is_empty() {
                return Err(CliError::BadOption(
                    "--dot draws the whole graph; --strategy, --seed and --kind filter the text listing".into(),
                ));
            }
            let text = match (dot, all_seeds && filter.is_empty()) {
                (true, _) => dag.render_dot(),
                (false, true) => dag.render_text(),
                (false, false) => filter::render_text(&dag, &filter, !all_seeds),
            };
            output::write_stdout(format_args!("{text}"))
        }
        Command::Show { p, json } => show_cmd(&p, json, c),
        Command::Plan {
            p,
            json,
            filter,
            pending,
        } => plan::plan_cmd(&p, json, &filter, pending, c),
        Command::Log {
            stage,
            pipeline,
            set,
            sweep,
        } => log::log_cmd(
            log::LogArgs {
                stage,
                pipeline: pipeline.map(|pipeline| PipelineArgs {
                    pipeline,
                    set,
                    sweep,
                }),
            },
            c,
        ),
        Command::Compare {
            pipelines,
            set,
            sweep,
            baseline,
            sort,
            json,
            csv,
            md,
        } => compare::compare_cmd(
            compare::CompareArgs {
                pipelines: pipelines
                    .into_iter()
                    .map(|pipeline| PipelineArgs {
                        pipeline,
                        set: set.clone(),
                        sweep: sweep.clone(),
                    })
                    .collect(),
                baseline,
                sort,
                format: match (json, csv, md) {
                    (true, _, _) => crate::report::compare::Format::Json,
                    (_, true, _) => crate::report::compare::Format::Csv,
                    (_, _, true) => crate::report::compare::Format::Markdown,
                    _ => crate::report::compare::Format::Text,
                },
            },
            c,
        ),
        Command::Report {
            p,
            out,
            name,
            force,
            tensorboard,
            dpi,
            full_range,
        } => {
            let look = figures::Look { dpi, full_range };
            let out = match name {
                Some(n) => Some(named_report_dir(&n)?),
                None => out,
            };
            report_cmd(&p, out, force, tensorboard, &look, c)
        }
        Command::Explain {
            p,
            stage,
            images,
            head,
            rule,
            conv_rule,
            epsilon,
            convention,
            out,
            device,
            dpi,
        } => {
            let parse_rule = |flag: &str, v: &str| {
                serde_json::from_value::<crate::xai::lrp::LrpRule>(serde_json::json!(v)).map_err(
                    |_| {
                        CliError::BadOption(format!(
                            "--{flag} `{v}`: expected one of epsilon, zplus, alpha_beta, gamma, flat, w_square, z_box"
                        ))
                    },
                )
            };
            let mut rules = crate::xai::lrp::LrpRules::epsilon(epsilon as f32);
            rules.dense = parse_rule("rule", &rule)?;
            rules.conv = parse_rule("conv-rule", &conv_rule)?;
            if convention == "zennit" {
                if rules.dense == crate::xai::lrp::LrpRule::Gamma
                    || rules.conv == crate::xai::lrp::LrpRule::Gamma
                {
                    return Err(CliError::BadOption(
                        "--convention zennit: zennit's γ rule is not cfpipe's (see the score key `convention`); use another rule".into(),
                    ));
                }
                rules = rules.zennit();
            }
            let opts = ExplainArgs {
                stage,
                images: if images.is_empty() {
                    vec![0, 1, 2, 3]
                } else {
                    images
                },
                head,
                rules,
                out,
                device,
                dpi,
            };
            explain_cmd(&p, opts, c)
        }
        Command::Cache { cmd } => cache_cmd(cmd, c),
        Command::ExecStage {
            key,
            pipeline,
            set,
            sweep,
            stage,
            device,
            ..
        } => exec_stage_cmd(
            key.as_deref(),
            pipeline.as_deref(),
            (&set, &sweep),
            stage.as_deref(),
            &device,
            c,
        ),
    }
}

/// `exec-stage`: compute one stage in this process, as a Slurm job does, from a request key
/// or from the pipeline and a stage id; print `ID ran: HASH` or `ID cached: HASH`.
fn exec_stage_cmd(
    key: Option<&str>,
    pipeline: Option<&std::path::Path>,
    (set, sweep): (&[String], &[String]),
    stage: Option<&str>,
    device: &str,
    c: &CacheLoc,
) -> Result<(), CliError> {
    let (device, resources) = open_device(device)?;
    let cache = open_cache(c)?;
    let registry = stages::registry();
    let interrupt = crate::signals::Interrupt::install();
    let lines = Arc::new(Lines::new(
        !output::stdout_is_terminal(),
        interrupt.cancel.clone(),
    ));
    let opts = ExecOptions {
        device,
        resources,
        cancel: interrupt.cancel.clone(),
        observer: Some(lines.clone()),
        ..ExecOptions::default()
    };
    let exec = Executor::new(&cache, &registry, opts);
    let res = match (key, pipeline, stage) {
        (Some(key), _, _) => exec.exec_request(key),
        (None, Some(pipeline), Some(stage)) => {
            let (_, dag) = crate::load_sweep(pipeline, set, sweep, DataCheck::Required)?;
            let n = dag.find(stage).ok_or_else(|| {
                CliError::BadOption(format!(
                    "--stage `{stage}`: no such stage in {} (list them with `cfpipe dag {}{}`)",
                    pipeline.display(),
                    pipeline.display(),
                    set_args(set)
                ))
            })?;
            exec.run_from_cache(&dag, n)
        }
        _ => unreachable!("clap requires a key or --pipeline with --stage"),
    };
    if let Some(signal) = interrupt.signal() {
        return Err(CliError::Interrupted { signal });
    }
    let (entry, outcome) = res?;
    let what = if matches!(outcome, Outcome::Cached) {
        "cached"
    } else {
        "ran"
    };
    lines.say(&format!(
        "{} {what}: {}",
        entry.manifest()?.stage_id,
        entry.content_hash()
    ));
    Ok(())
}

/// `--device` parsed and opened once, before any work starts, for every stage of the process:
/// the name manifests record and the opened device as the executor carries it.
fn open_device(raw: &str) -> Result<(String, crate::exec::Resources), CliError> {
    let backend = Backend::open(raw)?;
    Ok((backend.label(), crate::exec::Resources::new().with(backend)))
}

/// `cfpipe run`: compute what is not cached, report failures, end with the summary line.
fn run_cmd(
    p: &PipelineArgs,
    jobs: Option<usize>,
    device: String,
    quiet: bool,
    remote: &RemoteArgs,
    cluster: &ClusterArgs,
    c: &CacheLoc,
) -> Result<(), CliError> {
    let (device, resources) = open_device(&device)?;
    crate::spec::idx_data::remember_checks_in(c.dir().join("index").join("datachecks.json"));
    let (pipe, dag) = p.load(DataCheck::Required)?;
    // The graph and the report live until the process ends, which frees them at once:
    // dropping them node by node took ~8% of a cached rerun of a few thousand stages.
    let dag = std::mem::ManuallyDrop::new(dag);
    let cache = open_cache(c)?;
    let remote = open_remote(&remote.remote, std::slice::from_ref(&p.pipeline))?;
    let roots = RootRecorder::new(&cache, RootOwner::new(&pipe.name, &p.pipeline, &p.set));
    let interrupt = crate::signals::Interrupt::install();
    // Bars when someone watches a terminal; plain lines for logs, pipes and batch jobs.
    let terminal = output::stdout_is_terminal();
    let lines = Arc::new(Lines::new(!quiet && !terminal, interrupt.cancel.clone()));
    let slurm = match cluster.executor {
        ExecutorKind::Local => None,
        ExecutorKind::Slurm => Some(crate::exec::slurm::SlurmRunner::new(
            Config::for_pipelines(std::slice::from_ref(&p.pipeline))?.slurm,
            std::env::current_exe()?,
            cache.root(),
            &device,
            pipe.resources.clone(),
        )),
    };
    if let Some(s) = &slurm {
        eprintln!(
            "note: this run's Slurm jobs are named {0} (follow them with `squeue --name {0}`)",
            s.job_name
        );
    }
    if cluster.detach {
        let Some(s) = &slurm else {
            return Err(CliError::BadOption(
                "--detach submits jobs to Slurm: add `--executor slurm`".into(),
            ));
        };
        return detach(p, &pipe.name, &dag, &cache, s, c);
    }
    let jobs = match &slurm {
        Some(_) => cluster.max_jobs.unwrap_or(100),
        None => jobs.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }),
    };
    let opts = ExecOptions {
        jobs,
        device,
        resources,
        // A driver's bars would show nothing: the jobs compute, and their logs say how far.
        show_progress: !quiet && terminal && slurm.is_none(),
        cancel: interrupt.cancel.clone(),
        roots: Some(Arc::new(roots)),
        observer: Some(lines.clone()),
        slurm,
        retries: cluster.retries,
    };
    let registry = stages::registry();
    let report = std::mem::ManuallyDrop::new(
        Executor::new(&cache, &registry, opts)
            .with_remote(remote.as_ref())
            .run(&dag),
    );
    // For the report's estimate beside the actual time; a run never fails for want of it.
    if let Err(e) = plan::record_estimates(&cache, &dag, &report) {
        eprintln!("warning: the plan estimates of this run were not recorded: {e}");
    }
    for e in &report.events {
        match &e.outcome {
            Outcome::Failed { error } => eprintln!("FAILED {}: {error}", e.id),
            // After a signal, the stages it kept from running are counted, not listed.
            Outcome::Skipped { failed_input } if !report.interrupted => {
                eprintln!("skipped {} (input `{failed_input}` failed)", e.id)
            }
            Outcome::Ran {
                replaced_corrupt: Some(f),
                ..
            } => {
                eprintln!("recomputed {} (its cache entry was corrupt: {f})", e.id)
            }
            _ => {}
        }
    }
    if let Some(r) = remote.as_ref().filter(|_| !report.pulled().is_empty()) {
        let bytes: u64 = report
            .events
            .iter()
            .map(|e| match e.outcome {
                Outcome::Pulled { bytes, .. } => bytes,
                _ => 0,
            })
            .sum();
        lines.say(&format!(
            "pulled {} entries ({}) from {}",
            report.pulled().len(),
            human_bytes(bytes),
            r.url()
        ));
    }
    if report.interrupted {
        eprintln!("{}", report.interrupted_line());
    }
    lines.say(&report.summary_line());
    if report.interrupted {
        return Err(CliError::Interrupted {
            signal: interrupt.signal().unwrap_or(libc::SIGINT),
        });
    }
    let failed = report.failed();
    if !failed.is_empty() {
        return Err(CliError::StagesFailed {
            failed: failed.len(),
            names: failed
                .iter()
                .map(|e| e.id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(())
}

fn status_cmd(
    p: &PipelineArgs,
    json: bool,
    filter: &filter::StageFilter,
    pending: bool,
    c: &CacheLoc,
) -> Result<(), CliError> {
    let cache = open_cache_read(c);
    let (dag, all, res) = filter::resolved(p, &cache, filter, pending)?;
    let jobs = detached_jobs(p, &cache, &dag, &all)?;
    if json {
        let stages: Vec<_> = res
            .iter()
            .map(|r| {
                let n = dag.node(r.node);
                let job = jobs
                    .get(&n.id)
                    .map(|j| serde_json::json!({"id": j.id, "name": j.name, "state": j.state}));
                serde_json::json!({
                    "id": n.id,
                    "aliases": n.aliases,
                    "kind": n.kind,
                    "key": r.key.map(|k| k.to_hex()),
                    "cached": r.cached(),
                    "reason": r.reason.describe(),
                    "job": job,
                })
            })
            .collect();
        out!("{}", serde_json::json!({ "stages": stages }));
        return Ok(());
    }
    // Per kind first: on a large pipeline the table below is long.
    let mut kinds: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for r in &res {
        let k = kinds.entry(dag.node(r.node).kind.as_str()).or_default();
        if r.cached() {
            k.0 += 1;
        } else {
            k.1 += 1;
        }
    }
    // Indented, so that a line starting with a stage id is that stage's.
    out!("by kind:      cached  to run");
    for (kind, (cached, to_run)) in &kinds {
        out!("  {kind:<12} {cached:>6} {to_run:>7}");
    }
    out!("");
    let w = res
        .iter()
        .map(|r| dag.node(r.node).id.len())
        .max()
        .unwrap_or(10);
    for r in &res {
        let n = dag.node(r.node);
        let key = r.key.map(|k| k.short()).unwrap_or_else(|| "-".repeat(12));
        let state = match (r.cached(), jobs.get(&n.id)) {
            (true, _) => "cached".into(),
            (false, Some(j)) if j.live() => format!(
                "{} as Slurm job {} ({})",
                if j.state.as_deref() == Some("RUNNING") {
                    "running"
                } else {
                    "queued"
                },
                j.id,
                j.name
            ),
            (false, Some(j)) => format!(
                "will run: {}; its Slurm job {} {}",
                r.reason.describe(),
                j.id,
                match &j.state {
                    Some(st) => format!("ended {st}"),
                    None => "is no longer in the queue".into(),
                }
            ),
            (false, None) => format!("will run: {}", r.reason.describe()),
        };
        out!("{:<w$}  {:<8}  {}  {}", n.id, n.kind, key, state);
    }
    let cached = res.iter().filter(|r| r.cached()).count();
    let live = jobs.values().filter(|j| j.live()).count();
    out!(
        "{} stages: {} cached, {} to run{}",
        res.len(),
        cached,
        res.len() - cached,
        if live > 0 {
            format!(" ({live} of them queued or running on Slurm)")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// The stages whose results `show` and `report` need but the cache lacks, as an error that
/// names them (the first eight) and the command that computes them.
fn missing_results(missing: &[String], p: &PipelineArgs, c: &CacheLoc) -> CliError {
    let shown: Vec<&str> = missing.iter().take(8).map(|s| s.as_str()).collect();
    let more = missing.len().saturating_sub(shown.len());
    CliError::MissingResults {
        stages: if more > 0 {
            format!("{} and {more} more", shown.join(", "))
        } else {
            shown.join(", ")
        },
        command: c.run_command(p),
    }
}

fn show_cmd(p: &PipelineArgs, json: bool, c: &CacheLoc) -> Result<(), CliError> {
    let (pipe, dag) = p.load(DataCheck::Required)?;
    let cache = open_cache_read(c);
    let res = resolve::resolve(&dag, &cache);
    let results = crate::report::collect(&pipe, &dag, &res);
    let missing: Vec<String> = results.iter().flat_map(|r| r.missing.clone()).collect();
    if json {
        out!(
            "{}",
            serde_json::to_string_pretty(&results).expect("plain data")
        );
    } else {
        let summaries = crate::report::summary::summarize(&results);
        for r in &results {
            output::write_stdout(format_args!("{}", crate::report::render_matrix(r)))?;
            if !r.complete() {
                out!(
                    "  missing from the cache: {} (compute with `{}`)",
                    r.missing.join(", "),
                    c.run_command(p)
                );
            }
            out!();
        }
        if pipe.seeds.len() > 1 {
            out!("over seeds (mean ± std):");
            for x in &summaries {
                out!(
                    "  {:<12} final mean accuracy {:>14}   task 1 {:>14}   free capacity {:>14}",
                    x.strategy,
                    x.final_mean_accuracy.fmt(100.0),
                    x.final_task1_accuracy.fmt(100.0),
                    x.free_capacity
                        .last()
                        .map(|m| m.fmt(100.0))
                        .unwrap_or_default()
                );
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing_results(&missing, p, c))
    }
}

/// The git commit of the repository holding `file`, and whether it has uncommitted changes;
/// `None` outside a repository or without git.
fn git_state(file: &std::path::Path) -> Option<crate::report::write::GitState> {
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "HEAD"])?;
    let dirty = git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
    Some(crate::report::write::GitState { commit, dirty })
}

/// The default report folder: the pipeline's name, and with overrides or a sweep a digest of
/// them, so that each configuration keeps its own report.
fn default_report_dir(name: &str, p: &PipelineArgs) -> PathBuf {
    if p.set.is_empty() && p.sweep.is_empty() {
        return PathBuf::from("reports").join(name);
    }
    let mut h = blake3::Hasher::new();
    for (flag, args) in [("--set", &p.set), ("--sweep", &p.sweep)] {
        for a in args {
            h.update(flag.as_bytes());
            h.update(&[0]);
            h.update(a.as_bytes());
            h.update(&[0]);
        }
    }
    let hex = h.finalize().to_hex();
    PathBuf::from("reports").join(format!("{name}@{}", &hex[..8]))
}

/// The folder of `report --name NAME`: `reports/NAME`. The name is one folder name, so a
/// named report lands beside the default ones and never outside `reports/`.
fn named_report_dir(name: &str) -> Result<PathBuf, CliError> {
    let problem = if name.trim().is_empty() {
        Some("is empty")
    } else if name == "." || name == ".." {
        Some("is not a folder name")
    } else if name.contains(['/', '\\']) {
        Some("holds a path separator")
    } else {
        None
    };
    match problem {
        None => Ok(PathBuf::from("reports").join(name)),
        Some(why) => Err(CliError::BadOption(format!(
            "--name `{name}` {why}: give one folder name (the report goes to reports/NAME), or a whole path with --out DIR"
        ))),
    }
}

fn report_cmd(
    p: &PipelineArgs,
    out: Option<PathBuf>,
    force: bool,
    tensorboard: Option<PathBuf>,
    look: &figures::Look,
    c: &CacheLoc,
) -> Result<(), CliError> {
    let (pipe, dag) = p.load(DataCheck::Required)?;
    let cache = open_cache_read(c);
    let res = resolve::resolve(&dag, &cache);
    let results = crate::report::collect(&pipe, &dag, &res);
    let missing: Vec<String> = results.iter().flat_map(|r| r.missing.clone()).collect();
    if !missing.is_empty() {
        return Err(missing_results(&missing, p, c));
    }
    let summaries = crate::report::summary::summarize(&results);
    let estimates = plan::read_estimates(&cache, &dag);
    let times: Vec<_> = res
        .iter()
        .filter_map(|r| {
            let e = r.entry.as_ref()?;
            let n = dag.node(r.node);
            let key = e.key().to_hex();
            let m = e.manifest().ok()?;
            // The estimate of the run that computed this very entry, if one of this
            // pipeline's did.
            let est = estimates.get(&n.id).filter(|x| x.key == key);
            Some(crate::report::write::StageTime {
                id: n.id.clone(),
                kind: n.kind.clone(),
                key,
                wall_s: m.run.wall_s,
                device: m.run.device.clone(),
                estimate_s: est.and_then(|x| x.estimate_s),
                basis: est.map(|x| x.basis),
            })
        })
        .collect();
    let points: crate::report::write::Points = pipe
        .strategies
        .iter()
        .map(|s| (s.name.clone(), s.point.clone()))
        .collect();
    // The last evaluation of each run: the stage its final results are read from.
    let mut final_stages = std::collections::BTreeMap::new();
    for s in &pipe.strategies {
        for &seed in &pipe.seeds {
            let id = if s.joint {
                format!("{}/seed{seed}/evaluate", s.name)
            } else {
                stages::plan::stage_id(&s.name, seed, pipe.task_count() - 1, "evaluate")
            };
            let key = dag.find(&id).and_then(|n| {
                res.iter()
                    .find(|r| r.node == n)
                    .and_then(|r| r.entry.as_ref())
                    .map(|e| e.key().to_hex())
            });
            if let Some(k) = key {
                final_stages.insert(id, k);
            }
        }
    }
    let mut devices: Vec<String> = times.iter().map(|t| t.device.clone()).collect();
    devices.sort();
    devices.dedup();
    let provenance = crate::report::write::Provenance {
        pipeline: std::path::absolute(&p.pipeline)?.display().to_string(),
        set: p.set.clone(),
        sweep: p.sweep.clone(),
        settings: crate::spec::settings(&p.pipeline, &p.set)
            .map_err(|e| CliError::Load(crate::LoadError::Spec(e)))?,
        strategies: pipe.strategies.iter().map(|s| s.name.clone()).collect(),
        cfpipe_version: env!("CARGO_PKG_VERSION").to_string(),
        git: git_state(&p.pipeline),
        final_stages,
        devices,
    };
    let out = out.unwrap_or_else(|| default_report_dir(&pipe.name, p));
    // Never replace the report of another configuration without being asked to.
    if let Ok(bytes) = std::fs::read(out.join("report.json")) {
        let earlier = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                serde_json::from_value::<crate::report::write::Provenance>(v["provenance"].clone())
                    .ok()
            });
        let same = earlier
            .as_ref()
            .is_some_and(|e| e.same_configuration(&provenance));
        if !same && !force {
            let what = match &earlier {
                Some(e) => format!(
                    "the report of {}{}{}",
                    e.pipeline,
                    set_args(&e.set),
                    e.sweep
                        .iter()
                        .map(|s| format!(" --sweep {s}"))
                        .collect::<String>()
                ),
                None => "a report of unknown configuration (written by an older cfpipe)".into(),
            };
            return Err(CliError::BadOption(format!(
                "{} holds {what}; write this one elsewhere with --name NAME or --out DIR, or replace it with --force",
                out.display()
            )));
        }
    }
    let meta = crate::report::write::ReportMeta {
        points: &points,
        provenance: &provenance,
        look,
        labels: &pipe.tasks,
    };
    let files =
        crate::report::write::write_report(&out, &pipe.name, &results, &summaries, &times, &meta)?;
    out!("wrote {} files to {}", files.len(), out.display());
    if let Some(dir) = tensorboard {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let runs = crate::report::tensorboard::runs(&results);
        let written = crate::report::tensorboard::write(&dir, &runs, now).map_err(|source| {
            crate::report::write::ReportError::Io {
                path: dir.clone(),
                source,
            }
        })?;
        out!(
            "wrote {} TensorBoard runs to {} (view with `tensorboard --logdir {}`)",
            written.len(),
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

struct ExplainArgs {
    stage: String,
    images: Vec<usize>,
    /// 1-based.
    head: Option<usize>,
    rules: crate::xai::lrp::LrpRules,
    out: Option<PathBuf>,
    device: String,
    dpi: u32,
}

/// `cfpipe explain`: the train stage's cached model and its split's test images, from the
/// cache only.
fn explain_cmd(p: &PipelineArgs, a: ExplainArgs, c: &CacheLoc) -> Result<(), CliError> {
    use crate::xai::explain;
    let (pipe, dag) = p.load(DataCheck::Required)?;
    let trains = || {
        let ids: Vec<&str> = dag
            .topo_order()
            .iter()
            .map(|&n| dag.node(n))
            .filter(|n| n.kind == "train")
            .map(|n| n.id.as_str())
            .collect();
        let more = ids.len().saturating_sub(6);
        let mut s = ids[..ids.len().min(6)].join(", ");
        if more > 0 {
            s.push_str(&format!(" and {more} more"));
        }
        s
    };
    let dag_cmd = format!("cfpipe dag {}{}", p.pipeline.display(), set_args(&p.set));
    let node = dag.find(&a.stage).ok_or_else(|| {
        CliError::BadOption(format!(
            "--stage `{}`: no such stage in pipeline `{}`; expected a train stage id such as {} (list them with `{dag_cmd}`)",
            a.stage,
            pipe.name,
            trains()
        ))
    })?;
    let n = dag.node(node);
    if n.kind != "train" {
        return Err(CliError::BadOption(format!(
            "--stage `{}` is a {} stage; expected a train stage id such as {}",
            a.stage,
            n.kind,
            trains()
        )));
    }
    let Some(&split_node) = n.inputs.get("split") else {
        return Err(CliError::BadOption(format!(
            "--stage `{}` has no split input to take test images from",
            a.stage
        )));
    };
    let stage_task = n
        .params
        .get("task_index")
        .and_then(|v| v.as_u64())
        .unwrap_or(0) as usize;
    let head = match a.head {
        Some(0) => {
            return Err(CliError::BadOption(
                "--head 0: tasks are numbered from 1".to_string(),
            ))
        }
        Some(h) => h - 1,
        None => stage_task,
    };
    let (device, resources) = open_device(&a.device)?;
    // The explain stage on top of the train stage and what it depends on, nothing else.
    let params = stages::explain::Params {
        head,
        images: a.images.clone(),
        rules: a.rules,
    };
    let explain_id = format!("{}/explain", a.stage);
    let mut decls = dag.decls(&dag.upstream(node));
    decls.push(stages::explain::declare(
        explain_id.clone(),
        &n.id,
        &dag.node(split_node).id,
        &params,
    ));
    let part = Dag::build(decls).map_err(crate::LoadError::from)?;
    let cache = open_cache(c)?;
    let res = resolve::resolve(&part, &cache);
    let entry = |id: &str| {
        let at = part.find(id)?;
        res.iter()
            .find(|r| r.node == at)
            .and_then(|r| r.entry.clone())
    };
    let missing = |id: &str| missing_results(&[id.to_string()], p, c);
    let split_id = &dag.node(split_node).id;
    let model = entry(&n.id).ok_or_else(|| missing(&a.stage))?;
    let split = entry(split_id).ok_or_else(|| missing(split_id))?;
    let inputs: std::collections::BTreeMap<String, crate::cache::Entry> =
        [("split".to_string(), split), ("model".to_string(), model)].into();
    let registry = stages::registry();
    let opts = ExecOptions {
        device,
        resources,
        ..ExecOptions::default()
    };
    let explain_node = part.find(&explain_id).expect("just declared");
    let (explained, outcome) = Executor::new(&cache, &registry, opts)
        .run_stage(&part, explain_node, &inputs)
        .map_err(|e| match e {
            // Its parameters are the command's options: a head or an image that does not exist
            // is bad input.
            crate::exec::ExecError::Stage {
                source: crate::exec::StageError::Invalid(why),
                ..
            } => CliError::BadOption(format!("explain: {why}")),
            e => CliError::Exec(e),
        })?;
    let file: explain::ExplainedFile = serde_json::from_slice(
        &std::fs::read(explained.output_path(explain::EXPLAINED)).map_err(CliError::Io)?,
    )
    .map_err(|e| CliError::Io(std::io::Error::other(e.to_string())))?;
    let out = a.out.unwrap_or_else(|| {
        PathBuf::from("reports")
            .join(&pipe.name)
            .join("explain")
            .join(a.stage.replace('/', "-"))
    });
    let look = figures::Look {
        dpi: a.dpi,
        ..figures::Look::default()
    };
    let written = explain::write(&out, &a.stage, &file, &look)?;
    for e in &file.images {
        out!(
            "test image {} (class {}): logit {:.4}, relevance sum {:.4}",
            e.index,
            e.class,
            e.logit,
            e.relevance_sum
        );
    }
    let how = if matches!(outcome, Outcome::Cached) {
        "cached"
    } else {
        "computed"
    };
    out!(
        "wrote {} files to {} (relevance {how}: {explain_id})",
        written.len(),
        out.display()
    );
    Ok(())
}

/// `--dpi`: a whole number in [`figures::DPI_RANGE`].
fn dpi(v: &str) -> Result<u32, String> {
    let r = figures::DPI_RANGE;
    v.parse::<u32>()
        .ok()
        .filter(|d| r.contains(d))
        .ok_or_else(|| {
            format!(
                "expected a whole number of dots per inch in {}..={}",
                r.start(),
                r.end()
            )
        })
}

fn set_args(set: &[String]) -> String {
    set.iter()
        .map(|s| format!(" --set {}", shell_word(s)))
        .collect()
}

/// `s` as one shell word: as it is when that is safe, else single-quoted.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn human_bytes(b: u64) -> String {
    let mut v = b as f64;
    for unit in ["B", "KiB", "MiB", "GiB"] {
        if v < 1024.0 {
            return format!("{v:.1} {unit}");
        }
        v /= 1024.0;
    }
    format!("{v:.1} TiB")
}

/// For a command line clap rejected: when a `--set` value was cut at a space by the shell
/// (`--set seeds=[0, 1]` arrives as `seeds=[0,` and `1]`), say how to quote it.
pub fn quoting_hint(args: impl Iterator<Item = String>) -> Option<String> {
    let args: Vec<String> = args.collect();
    let open = |s: &str| {
        let depth = |o: char, c: char| {
            s.chars().filter(|&x| x == o).count() as i64
                - s.chars().filter(|&x| x == c).count() as i64
        };
        depth('[', ']') > 0 || depth('{', '}') > 0
    };
    let mut i = 0;
    while i < args.len() {
        let value = match args[i].strip_prefix("--set=") {
            Some(v) => Some(v.to_string()),
            None if args[i] == "--set" => args.get(i + 1).cloned(),
            None => None,
        };
        if let Some(v) = value.filter(|v| open(v)) {
            // The value as meant: the pieces up to the one that closes the bracket.
            let from = if args[i] == "--set" { i + 2 } else { i + 1 };
            let mut whole = v.clone();
            for piece in args.iter().skip(from) {
                whole.push(' ');
                whole.push_str(piece);
                if !open(&whole) {
                    break;
                }
            }
            return Some(format!(
                "the shell split `--set {whole}` at its spaces; quote the whole KEY=VALUE: --set '{whole}'"
            ));
        }
        i += 1;
    }
    None
}
