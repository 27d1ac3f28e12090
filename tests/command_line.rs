//! The command line in pipes, batch jobs, terminals and typos: a closed stdout ends a command
//! quietly, SIGTERM cancels like Ctrl-C, logs get one line per stage, read-only commands change
//! nothing, `--help` documents every option, and an overflowing objective is never cached.

mod common;
use common::{cfpipe, stderr, stdout, without_cfpipe_settings, Fixture, PIPELINE};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};

/// A pipe whose reading end is already closed: every write to it fails with EPIPE, which is
/// what `| head -c 1` does to a writer once `head` has its byte, without the race.
fn closed_pipe() -> Stdio {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    Stdio::from(write)
}

#[test]
fn every_command_exits_quietly_when_its_stdout_is_closed() {
    let f = Fixture::new();
    let p = f.pipeline();
    let p = p.to_str().unwrap();
    let cache = f.cache_dir();
    let cache = cache.to_str().unwrap();
    // `run` first, itself into a closed pipe: it still computes everything and exits 0.
    let commands: Vec<Vec<&str>> = vec![
        vec!["run", p],
        vec!["status", p],
        vec!["status", p, "--json"],
        vec!["dag", p],
        vec!["dag", p, "--dot"],
        vec!["show", p],
        vec!["show", p, "--json"],
        vec!["cache", "ls"],
        vec!["cache", "du"],
        vec!["cache", "verify"],
        vec!["cache", "roots", "ls"],
        vec!["cache", "gc", p],
        vec!["exec-stage", "--help"],
        vec!["--help"],
        vec!["--version"],
    ];
    for args in &commands {
        let o = cfpipe()
            .args(args)
            .args(["--cache", cache])
            .stdout(closed_pipe())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let code = o.status.code();
        assert!(
            code == Some(0) || code == Some(141),
            "`cfpipe {}` into a closed pipe exited {:?}: {}",
            args.join(" "),
            o.status,
            stderr(&o)
        );
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
    // The run that printed into the void did its work.
    assert!(stdout(&f.cli(&["run", p, "--quiet"])).contains(" 0 ran, "));
}

fn lease_files(f: &Fixture) -> Vec<String> {
    std::fs::read_dir(f.cache_dir().join("leases"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn sigterm_cancels_a_run_like_ctrl_c_and_releases_its_leases() {
    let f = Fixture::new();
    let child = f.start_long_run(5000, &[]);
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(143), "{:?}: {err}", out.status);
    assert!(err.contains("SIGTERM"), "{err}");
    assert!(lease_files(&f).is_empty(), "{:?}", lease_files(&f));
    assert_eq!(f.cli(&["cache", "verify"]).status.code(), Some(0));
    // The next run completes what was cancelled.
    let again = f.cli(&["run", f.pipeline().to_str().unwrap(), "--quiet"]);
    assert!(again.status.success(), "{}", stderr(&again));
}

#[test]
fn an_interrupted_run_prints_one_summary_instead_of_a_line_per_stopped_stage() {
    let f = Fixture::new();
    let child = f.start_long_run(5000, &[]);
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("interrupted: "))
        .unwrap_or_else(|| panic!("no interrupted line: {err}"));
    // Both strategies' task-1 training was running (2 jobs); the rest never started.
    let (dag_len, _) = {
        let (_, dag) = cfpipe::load(
            &f.pipeline(),
            &["training.epochs=5000".into()],
            cfpipe::spec::DataCheck::Required,
        )
        .unwrap();
        (dag.len(), ())
    };
    let n = |word: &str| -> usize {
        let before = line.split(word).next().unwrap();
        before
            .split_whitespace()
            .last()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("{line}"))
    };
    let (cancelled, not_started) = (n(" stage"), n(" not started"));
    assert!(cancelled >= 1, "{line}");
    // Split ran; everything else was cancelled or not started.
    assert_eq!(1 + cancelled + not_started, dag_len, "{line}");
    assert!(line.ends_with("completed stages are cached"), "{line}");
    assert!(!err.contains("FAILED") && !err.contains("skipped"), "{err}");
}

#[test]
fn a_piped_run_logs_one_line_per_stage_start_and_finish_and_quiet_silences_them() {
    let f = Fixture::new();
    let p = f.pipeline();
    let p = p.to_str().unwrap();
    let (_, dag) = cfpipe::load(&f.pipeline(), &[], cfpipe::spec::DataCheck::Required).unwrap();
    let ids: Vec<String> = dag
        .topo_order()
        .iter()
        .map(|&n| dag.node(n).id.clone())
        .collect();
    let first = stdout(&f.cli(&["run", p]));
    for id in &ids {
        let kind = &dag.node(dag.find(id).unwrap()).kind;
        let start = format!("start     {id} ({kind})");
        let ran = format!("ran       {id} ({kind}) ");
        assert!(first.lines().any(|l| l == start), "no `{start}`: {first}");
        let done = first
            .lines()
            .find(|l| l.starts_with(&ran))
            .unwrap_or_else(|| panic!("no `{ran}`: {first}"));
        assert!(done.ends_with(" s"), "{done}");
    }
    assert!(first.lines().last().unwrap().contains(" ran, 0 cached"));

    let second = stdout(&f.cli(&["run", p]));
    for id in &ids {
        let kind = &dag.node(dag.find(id).unwrap()).kind;
        assert!(
            second
                .lines()
                .any(|l| l == format!("cached    {id} ({kind})")),
            "{second}"
        );
    }
    assert!(!second.contains("start "), "{second}");

    let quiet = stdout(&f.cli(&["run", p, "--quiet"]));
    assert_eq!(quiet.lines().count(), 1, "{quiet}");
}

#[test]
fn on_a_terminal_the_bars_show_eta_and_loss_and_no_empty_bar() {
    // `script` gives the run a pseudo-terminal, as a user's shell would.
    let f = Fixture::new();
    let cmd = format!(
        "{} run {} --cache {} --set training.epochs=400 -j 1",
        env!("CARGO_BIN_EXE_cfpipe"),
        f.pipeline().display(),
        f.cache_dir().display()
    );
    let o = without_cfpipe_settings(&mut Command::new("script"))
        .args(["-qfec", &cmd, "/dev/null"])
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output()
        .expect("`script` (util-linux) runs");
    let screen = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{screen}");
    assert!(screen.contains("eta "), "no ETA: {screen}");
    assert!(screen.contains(" loss 0."), "no loss: {screen}");
    assert!(!screen.contains(" 0/0 "), "an empty bar: {screen}");
}

#[test]
fn read_only_commands_on_a_missing_cache_create_nothing_and_name_the_cache_in_the_fix() {
    let f = Fixture::new();
    let p = f.pipeline();
    let p = p.to_str().unwrap();
    let missing = f.path().join("no-cache-here");
    let m = missing.to_str().unwrap();
    for args in [
        vec!["status", p],
        vec!["show", p],
        vec!["report", p, "--out", f.path().join("r").to_str().unwrap()],
        vec!["cache", "ls"],
        vec!["cache", "du"],
        vec!["cache", "verify"],
        vec!["cache", "roots", "ls"],
    ] {
        let o = cfpipe().args(&args).args(["--cache", m]).output().unwrap();
        assert!(!missing.exists(), "`{}` created the cache", args.join(" "));
        assert_ne!(o.status.code(), Some(101), "{}", stderr(&o));
    }
    let show = cfpipe()
        .args(["show", p, "--set", "training.epochs=2", "--cache", m])
        .output()
        .unwrap();
    assert_eq!(show.status.code(), Some(1), "{}", stderr(&show));
    let fix = format!("cfpipe run {p} --set training.epochs=2 --cache {m}");
    assert!(stdout(&show).contains(&fix), "{}", stdout(&show));
    assert!(stderr(&show).contains(&fix), "{}", stderr(&show));
    // A complete cache shows with success.
    let run = f.cli(&["run", p, "--quiet"]);
    assert!(run.status.success());
    assert_eq!(f.cli(&["show", p]).status.code(), Some(0));
}

#[test]
fn help_documents_every_option_and_team_options_only_where_they_act() {
    use clap::CommandFactory;
    fn walk(cmd: &clap::Command, path: &str, undocumented: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            if a.get_help().is_none() && a.get_long_help().is_none() {
                undocumented.push(format!("{path} {id}"));
            }
        }
        for s in cmd.get_subcommands() {
            walk(s, &format!("{path} {}", s.get_name()), undocumented);
        }
    }
    let mut undocumented = Vec::new();
    walk(&cfpipe::cli::Cli::command(), "cfpipe", &mut undocumented);
    assert!(undocumented.is_empty(), "undocumented: {undocumented:?}");

    let help = |args: &[&str]| stdout(&cfpipe().args(args).arg("--help").output().unwrap());
    for read_only in [
        &["status"][..],
        &["show"],
        &["dag"],
        &["report"],
        &["cache", "ls"],
    ] {
        let h = help(read_only);
        for team in ["--remote", "--shared-group", "--lease-timeout"] {
            assert!(!h.contains(team), "{read_only:?} --help offers {team}: {h}");
        }
    }
    let run = help(&["run"]);
    for team in ["--remote", "--shared-group", "--lease-timeout", "--cache"] {
        assert!(run.contains(team), "run --help lacks {team}");
    }
    assert!(help(&["cache", "push"]).contains("--remote"));
    assert!(help(&["cache", "pull"]).contains("--shared-group"));
}

#[test]
fn an_unquoted_set_value_split_by_the_shell_gets_a_hint_to_quote_it() {
    let f = Fixture::new();
    let o = f.cli(&[
        "run",
        f.pipeline().to_str().unwrap(),
        "--set",
        "seeds=[0,",
        "1]",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("hint: the shell split `--set seeds=[0, 1]` at its spaces; quote the whole KEY=VALUE: --set 'seeds=[0, 1]'"),
        "{}",
        stderr(&o)
    );
    assert!(!f.cache_dir().exists());
}

#[test]
fn an_overflowing_ewc_penalty_fails_its_stage_names_the_term_and_caches_nothing() {
    // λ = 1e38 is a valid f32, but its pull drives SGD's parameters past f32's range.
    let f = Fixture::with_pipeline(&format!(
        "{}  ewc_huge:\n    freeze: none\n    ewc:\n      lambda: 1.0e38\n      importance: {{method: mas, reference_size: 20, reference_split: train}}\n",
        PIPELINE
            .replace("optimizer: adam", "optimizer: sgd")
            .replace("lr: 0.01", "lr: 0.1")
    ));
    let p = f.pipeline();
    let p = p.to_str().unwrap();
    let o = f.cli(&["run", p, "--quiet"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("FAILED ewc_huge/seed0/task2/train"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains("EWC penalty") && line.contains("lambda"),
        "{line}"
    );
    // Nothing of the failed stage is cached; the other branches completed.
    let status = stdout(&f.cli(&["status", p]));
    let row = |id: &str| {
        status
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{status}"))
            .to_string()
    };
    assert!(row("ewc_huge/seed0/task2/train").contains("will run"));
    assert!(row("naive/seed0/task2/evaluate").ends_with("cached"));
    assert!(row("rnf/seed0/task2/evaluate").ends_with("cached"));
}

#[test]
fn a_report_that_cannot_be_written_exits_4_not_as_bad_input() {
    let f = Fixture::new();
    let p = f.pipeline();
    let p = p.to_str().unwrap();
    assert!(f.cli(&["run", p, "--quiet"]).status.success());
    // A file where the report directory should be: the results exist, only writing fails.
    let blocker = f.path().join("taken");
    std::fs::write(&blocker, b"").unwrap();
    let out = blocker.join("report");
    let o = f.cli(&["report", p, "--out", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("taken/report"), "{}", stderr(&o));
    // A mistyped option value is still bad input.
    let o = f.cli(&["cache", "gc", "--roots-max-age", "-1"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
