//! The remote cache against real servers on 127.0.0.1: an S3-compatible one (moto) and WebDAV
//! (nginx with dav_ext). Each test starts its own server on a free loopback port and kills it
//! when done. Without the server binaries the tests skip loudly; with `CI` set, a missing server
//! fails them.

mod common;

use common::{entry_keys, stderr, stdout, Fixture};
use object_store::ObjectStore;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ACCESS_KEY: &str = "AKIDCFPIPETESTACCESS7";
const SECRET_KEY: &str = "cfpipe-test-SECRET-do-not-print-9f3a";
const BUCKET: &str = "cfpipe-team";

/// Two tasks, one strategy, one epoch: a handful of stages that run in about a second.
const PIPELINE: &str = r#"name: tiny_remote
dataset:
  format: idx
  images: IMG
  labels: LBL
  test_fraction: 0.25
  split_seed: 0
tasks: [[0, 1], [2, 3]]
model:
  kind: mlp
  hidden: [8]
training:
  optimizer: adam
  lr: 0.01
  batch_size: 16
  epochs: 1
seeds: [0]
strategies:
  naive:
    freeze: none
"#;

struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server program is missing: skip loudly here, fail in CI.
fn missing(what: &str, install: &str) -> Option<Server> {
    if std::env::var_os("CI").is_some() {
        panic!("CI: {what} is required for the remote-cache tests; install it with: {install}");
    }
    eprintln!(
        "\n*** SKIPPED: {what} is not installed, so this remote-cache test did not run. \
         Install it with: {install} ***\n"
    );
    None
}

fn in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait until the server accepts connections; `Err` with its log if it died first.
fn wait_ready(child: &mut Child, port: u16, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "server exited ({status}) before listening: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            ));
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("server did not listen on 127.0.0.1:{port} within 120 s");
}

/// Start a server on a free port. The port is free when chosen but not reserved, so another
/// process (or a parallel test) may take it first; the server then exits with "address in
/// use" and is started again on another port.
fn start_on_free_port(spawn: impl Fn(u16) -> Child, log: &Path) -> (Child, u16) {
    let mut last = String::new();
    for _ in 0..5 {
        let port = free_port();
        let mut child = spawn(port);
        match wait_ready(&mut child, port, log) {
            Ok(()) => return (child, port),
            Err(e) => last = e,
        }
    }
    panic!("no server after 5 ports: {last}");
}

/// One plain HTTP/1.1 request; returns the status code.
fn http(port: u16, method: &str, path: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// moto's S3 server with an empty bucket `BUCKET`.
fn moto() -> Option<Server> {
    let install = "pip install 'moto[server]'";
    let moto_server = in_path("moto_server");
    if moto_server.is_none() {
        let ok = Command::new("python3")
            .args(["-c", "import moto.server"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return missing("moto (S3 server)", install);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("moto.log");
    let err = dir.path().join("moto.err");
    let (child, port) = start_on_free_port(
        |port| {
            let mut cmd = match &moto_server {
                Some(bin) => Command::new(bin),
                None => {
                    let mut c = Command::new("python3");
                    c.args(["-m", "moto.server"]);
                    c
                }
            };
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(std::fs::File::create(&err).unwrap())
                .spawn()
                .unwrap()
        },
        &err,
    );
    let status = http(port, "PUT", &format!("/{BUCKET}"));
    assert_eq!(status, 200, "creating the bucket");
    Some(Server {
        child,
        port,
        _dir: dir,
    })
}

const DAV_MODULE: &str = "/usr/lib/nginx/modules/ngx_http_dav_ext_module.so";

/// nginx serving WebDAV (PUT/DELETE/MKCOL, PROPFIND via dav_ext) from a temp dir at `/dav/`.
fn nginx_dav() -> Option<Server> {
    let install = "apt-get install nginx libnginx-mod-http-dav-ext";
    let Some(bin) = in_path("nginx") else {
        return missing("nginx", install);
    };
    if !Path::new(DAV_MODULE).is_file() {
        return missing("nginx's dav_ext module", install);
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("www/dav")).unwrap();
    let log = root.join("stderr.log");
    let (child, port) = start_on_free_port(
        |port| {
            let conf = format!(
                "load_module {DAV_MODULE};\n\
                 daemon off;\nmaster_process off;\nworker_processes 1;\n\
                 pid {r}/nginx.pid;\nerror_log {r}/error.log;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {r}/body;\n\
                   client_max_body_size 0;\n\
                   server {{\n    listen 127.0.0.1:{port};\n    root {r}/www;\n\
                     location /dav/ {{\n      dav_methods PUT DELETE MKCOL COPY MOVE;\n\
                       dav_ext_methods PROPFIND OPTIONS;\n      create_full_put_path on;\n\
                       dav_access user:rw group:rw all:r;\n    }}\n  }}\n}}\n",
                r = root.display()
            );
            std::fs::write(root.join("nginx.conf"), conf).unwrap();
            Command::new(&bin)
                .arg("-p")
                .arg(root)
                .arg("-c")
                .arg(root.join("nginx.conf"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap()
        },
        &log,
    );
    Some(Server {
        child,
        port,
        _dir: dir,
    })
}

/// Run the real binary with `args` (the cache dir and remote given by the caller), S3
/// credentials in the environment as a user would have them.
fn cfpipe(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut c = common::cfpipe();
    c.args(args)
        .env_remove("AWS_ENDPOINT_URL")
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// Extra environment variables for a child process.
type Env = Vec<(&'static str, String)>;

fn s3_env(s: &Server) -> Env {
    vec![("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", s.port))]
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
    stdout(o)
}

/// `(ran, cached, pulled)` from the summary line `N stages: R ran, C cached[, P pulled] (T s)`.
fn summary(out: &str) -> (usize, usize, usize, usize) {
    let line = out
        .lines()
        .rev()
        .find(|l| l.contains(" stages: "))
        .unwrap_or_else(|| panic!("no summary line in:\n{out}"));
    let num = |word: &str| -> usize {
        let words: Vec<&str> = line.split_whitespace().collect();
        words
            .iter()
            .position(|w| w.trim_end_matches(',') == word)
            .map(|i| words[i - 1].parse().unwrap())
            .unwrap_or(0)
    };
    (num("stages:"), num("ran"), num("cached"), num("pulled"))
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A fixture with the tiny pipeline, computed into its own cache `a/`.
fn computed_fixture() -> (Fixture, usize) {
    let f = Fixture::with_pipeline(PIPELINE);
    let a = f.path().join("a");
    let out = ok(&cfpipe(
        &[
            "run",
            "-q",
            path_str(&f.pipeline()),
            "--cache",
            path_str(&a),
        ],
        &[],
    ));
    let (n, ran, _, _) = summary(&out);
    assert!(n >= 5 && ran == n, "{out}");
    (f, n)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Direct access to the moto bucket, to play the part of someone tampering with it.
fn raw_s3(s: &Server) -> Arc<dyn ObjectStore> {
    Arc::new(
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(format!("http://127.0.0.1:{}", s.port))
            .with_bucket_name(BUCKET)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_region("us-east-1")
            .with_allow_http(true)
            .build()
            .unwrap(),
    )
}

fn get_json(store: &dyn ObjectStore, path: &str) -> serde_json::Value {
    let p = object_store::path::Path::from(path);
    let bytes = block_on(async { store.get(&p).await.unwrap().bytes().await.unwrap() });
    serde_json::from_slice(&bytes).unwrap()
}

fn put(store: &dyn ObjectStore, path: &str, bytes: Vec<u8>) {
    let p = object_store::path::Path::from(path);
    block_on(store.put(&p, bytes.into())).unwrap();
}

#[test]
fn s3_push_then_pull_into_an_empty_cache_then_run_computes_nothing() {
    let Some(s3) = moto() else { return };
    let (f, n) = computed_fixture();
    let (a, b) = (f.path().join("a"), f.path().join("b"));
    let url = format!("s3://{BUCKET}/team");
    let pipe = f.pipeline();
    let env = s3_env(&s3);

    let out = ok(&cfpipe(
        &[
            "cache",
            "push",
            path_str(&pipe),
            "--cache",
            path_str(&a),
            "--remote",
            &url,
        ],
        &env,
    ));
    assert!(out.contains(&format!("push: {n} entries")), "{out}");
    // Pushing again moves nothing: every entry is already complete on the remote.
    let out = ok(&cfpipe(
        &[
            "cache",
            "push",
            path_str(&pipe),
            "--cache",
            path_str(&a),
            "--remote",
            &url,
        ],
        &env,
    ));
    assert!(out.contains("push: 0 entries") && out.contains(&format!("{n} already there")));

    let out = ok(&cfpipe(
        &[
            "cache",
            "pull",
            path_str(&pipe),
            "--cache",
            path_str(&b),
            "--remote",
            &url,
        ],
        &env,
    ));
    assert!(out.contains(&format!("pull: {n} entries")), "{out}");
    assert_eq!(entry_keys(&a), entry_keys(&b));

    let out = ok(&cfpipe(
        &[
            "run",
            "-q",
            path_str(&pipe),
            "--cache",
            path_str(&b),
            "--remote",
            "none",
        ],
        &[],
    ));
    assert_eq!(summary(&out), (n, 0, n, 0), "{out}");
    let out = ok(&cfpipe(&["cache", "verify", "--cache", path_str(&b)], &[]));
    assert!(
        out.contains(&format!("{n} entries verified, 0 corrupt")),
        "{out}"
    );
}

#[test]
fn tampered_remote_objects_are_rejected_on_pull_and_nothing_lands() {
    let Some(s3) = moto() else { return };
    let (f, n) = computed_fixture();
    let (a, b) = (f.path().join("a"), f.path().join("b"));
    let url = format!("s3://{BUCKET}/t");
    let env = s3_env(&s3);
    ok(&cfpipe(
        &["cache", "push", "--cache", path_str(&a), "--remote", &url],
        &env,
    ));

    // Pick two entries: flip the bytes of one's output file, rewrite the other's parameters.
    let keys = entry_keys(&a);
    assert_eq!(keys.len(), n);
    let store = raw_s3(&s3);
    let (k1, k2) = (&keys[0], &keys[1]);
    let mpath = |k: &str| format!("t/entries/{}/{k}/manifest.json", &k[..2]);
    let m1 = get_json(store.as_ref(), &mpath(k1));
    let (name, rec) = m1["outputs"]
        .as_object()
        .unwrap()
        .iter()
        .max_by_key(|(_, r)| r["size"].as_u64())
        .unwrap();
    let good_hash = rec["blake3"].as_str().unwrap().to_string();
    let size = rec["size"].as_u64().unwrap() as usize;
    let evil = vec![b'x'; size];
    let evil_hash = blake3::hash(&evil).to_hex().to_string();
    put(
        store.as_ref(),
        &format!("t/blobs/{}/{good_hash}", &good_hash[..2]),
        evil,
    );
    let mut m2 = get_json(store.as_ref(), &mpath(k2));
    m2["params"] = serde_json::json!({"tampered": true});
    put(store.as_ref(), &mpath(k2), serde_json::to_vec(&m2).unwrap());

    let o = cfpipe(
        &["cache", "pull", "--cache", path_str(&b), "--remote", &url],
        &env,
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{}\n{err}", stdout(&o));
    // The file, the key, and both hashes are named.
    assert!(err.contains(k1.as_str()), "{err}");
    assert!(err.contains(&format!("out/{name}")), "{err}");
    assert!(
        err.contains(&good_hash) && err.contains(&evil_hash),
        "{err}"
    );
    assert!(
        err.contains(k2.as_str()) && err.contains("derived from"),
        "{err}"
    );
    assert!(stdout(&o).contains("2 failed"), "{}", stdout(&o));

    // Everything else arrived; neither bad entry did, and nothing was left half-written.
    let got = entry_keys(&b);
    assert_eq!(got.len(), n - 2, "{got:?}");
    assert!(!got.contains(k1) && !got.contains(k2));
    assert_eq!(std::fs::read_dir(b.join("tmp")).unwrap().count(), 0);
    let out = ok(&cfpipe(&["cache", "verify", "--cache", path_str(&b)], &[]));
    assert!(out.contains(", 0 corrupt"), "{out}");

    // `run` reading through the same remote computes exactly the two rejected stages, warns,
    // and takes everything else from the remote (recomputed bytes are identical, so the keys
    // downstream are unchanged).
    let c = f.path().join("c");
    let o = cfpipe(
        &[
            "run",
            "-q",
            path_str(&f.pipeline()),
            "--cache",
            path_str(&c),
            "--remote",
            &url,
        ],
        &env,
    );
    assert_eq!(summary(&ok(&o)), (n, 2, 0, n - 2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("does not match its manifest"),
        "{}",
        stderr(&o)
    );
    assert_eq!(entry_keys(&a), entry_keys(&c));
}

#[test]
fn run_reads_through_the_remote_from_a_config_file_and_a_cached_run_never_contacts_it() {
    let Some(s3) = moto() else { return };
    let f = Fixture::with_pipeline(PIPELINE);
    std::fs::write(
        f.path().join("cfpipe.toml"),
        format!(
            "[remote]\nurl = \"s3://{BUCKET}/rt\"\nendpoint = \"http://127.0.0.1:{}\"\n\
             allow_http = true\n",
            s3.port
        ),
    )
    .unwrap();
    let pipe = f.pipeline();
    let (a, b) = (f.path().join("a"), f.path().join("b"));

    // First user: computes everything and pushes it as it goes.
    let out = ok(&cfpipe(
        &["run", "-q", path_str(&pipe), "--cache", path_str(&a)],
        &[],
    ));
    let (n, ran, _, pulled) = summary(&out);
    assert_eq!((ran, pulled), (n, 0), "{out}");

    // Second user, empty cache: every stage comes from the remote, none is computed.
    let o = cfpipe(
        &["run", "-q", path_str(&pipe), "--cache", path_str(&b)],
        &[],
    );
    let out = ok(&o);
    assert_eq!(summary(&out), (n, 0, 0, n), "{out}\n{}", stderr(&o));
    assert_eq!(entry_keys(&a), entry_keys(&b));

    // Fully cached: pointed at a port where nothing listens, the run neither fails nor warns,
    // so it never contacted the remote.
    let dead = format!("http://127.0.0.1:{}", free_port());
    std::fs::write(
        f.path().join("cfpipe.toml"),
        format!("[remote]\nurl = \"s3://{BUCKET}/rt\"\nendpoint = \"{dead}\"\n"),
    )
    .unwrap();
    let o = cfpipe(
        &["run", "-q", path_str(&pipe), "--cache", path_str(&b)],
        &[],
    );
    assert_eq!(summary(&ok(&o)), (n, 0, n, 0));
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
    // The same dead remote does make a run with something to compute warn, so the silence
    // above is meaningful.
    let c = f.path().join("c");
    let o = cfpipe(
        &["run", "-q", path_str(&pipe), "--cache", path_str(&c)],
        &[],
    );
    assert_eq!(summary(&ok(&o)).1, n);
    assert!(stderr(&o).contains("warning"), "{}", stderr(&o));
}

#[test]
fn webdav_push_and_pull_round_trip() {
    let Some(dav) = nginx_dav() else { return };
    let (f, n) = computed_fixture();
    let (a, b) = (f.path().join("a"), f.path().join("b"));
    let url = format!("http://127.0.0.1:{}/dav/cfpipe", dav.port);

    let out = ok(&cfpipe(
        &["cache", "push", "--cache", path_str(&a), "--remote", &url],
        &[],
    ));
    assert!(out.contains(&format!("push: {n} entries")), "{out}");
    // No pipeline named: the pull lists the remote (PROPFIND) and takes everything.
    let out = ok(&cfpipe(
        &["cache", "pull", "--cache", path_str(&b), "--remote", &url],
        &[],
    ));
    assert!(out.contains(&format!("pull: {n} entries")), "{out}");
    let out = ok(&cfpipe(
        &[
            "run",
            "-q",
            path_str(&f.pipeline()),
            "--cache",
            path_str(&b),
            "--remote",
            "none",
        ],
        &[],
    ));
    assert_eq!(summary(&out), (n, 0, n, 0), "{out}");

    // An entry without its manifest (a push cut short: manifests go last) is never pulled.
    let k = &entry_keys(&a)[0];
    let gone = format!("/dav/cfpipe/entries/{}/{k}/manifest.json", &k[..2]);
    assert_eq!(http(dav.port, "DELETE", &gone), 204);
    let c = f.path().join("c");
    let out = ok(&cfpipe(
        &["cache", "pull", "--cache", path_str(&c), "--remote", &url],
        &[],
    ));
    assert!(out.contains(&format!("pull: {} entries", n - 1)), "{out}");
    assert!(out.contains("1 unavailable"), "{out}");
    assert!(!entry_keys(&c).contains(k));
}

#[test]
fn credentials_never_appear_in_messages() {
    let (f, _) = computed_fixture();
    let a = f.path().join("a");
    let b = f.path().join("b");
    let dead = free_port();
    let dav_password = "hunter2-SECRET-pw";
    let mut attempts: Vec<(Vec<String>, Env)> = vec![
        // S3 endpoint where nothing listens.
        (
            vec!["--remote".into(), format!("s3://{BUCKET}/x")],
            vec![("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{dead}"))],
        ),
        // WebDAV with user info in the URL, nothing listening.
        (
            vec![
                "--remote".into(),
                format!("http://alice:{dav_password}@127.0.0.1:{dead}/dav"),
            ],
            vec![],
        ),
    ];
    let s3 = moto();
    if let Some(s) = &s3 {
        // A real server that refuses: the bucket does not exist.
        attempts.push((
            vec!["--remote".into(), "s3://no-such-bucket/x".into()],
            s3_env(s),
        ));
    }
    for (remote, env) in &attempts {
        for cmd in ["push", "pull"] {
            let cache = if cmd == "push" { &a } else { &b };
            let mut args = vec!["cache", cmd, "--cache", path_str(cache)];
            args.extend(remote.iter().map(|s| s.as_str()));
            let o = cfpipe(&args, env);
            let all = format!("{}{}", stdout(&o), stderr(&o));
            assert_eq!(o.status.code(), Some(1), "{args:?}: {all}");
            assert!(all.contains("remote cache"), "{args:?}: {all}");
            for secret in [SECRET_KEY, ACCESS_KEY, dav_password] {
                assert!(
                    !all.contains(secret),
                    "{args:?} printed a credential: {all}"
                );
            }
        }
        // `run` warns about the remote and computes locally, still without printing them.
        let pipe = f.pipeline();
        let mut args = vec!["run", "-q", path_str(&pipe), "--cache"];
        let c = f.path().join("c");
        args.push(path_str(&c));
        args.extend(remote.iter().map(|s| s.as_str()));
        let o = cfpipe(&args, env);
        let all = format!("{}{}", stdout(&o), stderr(&o));
        assert!(o.status.success(), "{all}");
        assert!(all.contains("warning"), "{all}");
        for secret in [SECRET_KEY, ACCESS_KEY, dav_password] {
            assert!(
                !all.contains(secret),
                "{args:?} printed a credential: {all}"
            );
        }
        let _ = std::fs::remove_dir_all(&c);
    }
}

#[test]
fn config_mistakes_and_a_missing_remote_are_bad_input() {
    let f = Fixture::with_pipeline(PIPELINE);
    let pipe = f.pipeline();
    let cache = f.path().join("a");
    let push = || {
        cfpipe(
            &[
                "cache",
                "push",
                path_str(&pipe),
                "--cache",
                path_str(&cache),
            ],
            &[],
        )
    };
    let o = push();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no remote cache configured"),
        "{}",
        stderr(&o)
    );

    std::fs::write(
        f.path().join("cfpipe.toml"),
        "[remote]\nurl = \"s3://b/p\"\nregoin = \"eu\"\n",
    )
    .unwrap();
    let o = push();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("cfpipe.toml") && err.contains("line 3") && err.contains("regoin"));

    std::fs::write(
        f.path().join("cfpipe.toml"),
        "[remote]\nurl = \"ftp://x/y\"\n",
    )
    .unwrap();
    let o = push();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("unsupported scheme `ftp`"),
        "{}",
        stderr(&o)
    );
}
