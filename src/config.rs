//! The optional project configuration file: `cfpipe.toml`, or `.cfpipe/config` (same TOML
//! format), looked up next to the pipeline file and then in the current directory. It says where
//! the team's remote cache is (`[remote]`) and holds the local cache settings (`[cache]`) that
//! the command line and environment variables override. It never holds credentials: those come
//! only from the standard environment variables of each backend (`AWS_ACCESS_KEY_ID`, …), so a
//! config file can be committed next to the pipelines.
//!
//! ```toml
//! [remote]
//! url = "s3://bucket/prefix"          # or http(s)://host/dav/prefix, file:///path, /path
//! endpoint = "http://127.0.0.1:9000"  # S3-compatible servers (MinIO, moto, …)
//! region = "us-east-1"
//! allow_http = true                   # plain-HTTP endpoints
//! read_through = true                 # `run` pulls missing stages before computing them
//! push = true                         # `run` pushes what it computed
//!
//! [cache]
//! dir = "cache"                       # relative to this file
//! shared_group = "ml-team"
//!
//! [slurm]                             # for `run --executor slurm`
//! partition = "gpu"
//! account = "ml-lab"
//! qos = "normal"
//! sbatch_args = ["--constraint=a100"]
//! setup = ["module load cuda/12"]     # shell lines run in each job before cfpipe
//! ```

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// File names tried, in order, in each directory searched.
pub const CONFIG_FILES: [&str; 2] = ["cfpipe.toml", ".cfpipe/config"];

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub remote: Option<RemoteConfig>,
    #[serde(default)]
    pub cache: CacheConfig,
    /// Cluster-local Slurm settings for `run --executor slurm`.
    #[serde(default)]
    pub slurm: SlurmConfig,
    /// The file this was read from (not a TOML key).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// The remote's settings are the engine's (the cache owns its transport); this file only
/// reads them.
pub use crate::cache::remote::RemoteConfig;

/// The Slurm settings are the executor's; this file only reads them.
pub use crate::exec::slurm::SlurmConfig;

/// Local cache settings. `dir` is resolved against the config file's directory.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    pub dir: Option<PathBuf>,
    /// Unix group that a team-shared cache directory belongs to.
    pub shared_group: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `message` comes from the TOML parser and names the line, column and key.
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

impl Config {
    /// Parse config text; `path` is used for messages and to resolve `cache.dir`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        if let Some(dir) = &c.cache.dir {
            if dir.is_relative() {
                let base = config_base(path);
                c.cache.dir = Some(base.join(dir));
            }
        }
        c.source = Some(path.to_path_buf());
        Ok(c)
    }

    /// The first config file found in `dirs` (in order); an empty config if there is none.
    pub fn find(dirs: &[&Path]) -> Result<Config, ConfigError> {
        for dir in dirs {
            for name in CONFIG_FILES {
                let p = dir.join(name);
                match std::fs::read_to_string(&p) {
                    Ok(text) => return Config::parse(&text, &p),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(_) if p.is_dir() => {}
                    Err(source) => return Err(ConfigError::Io { path: p, source }),
                }
            }
        }
        Ok(Config::default())
    }

    /// The config for commands about `pipelines`: next to the first pipeline, then in the
    /// current directory.
    pub fn for_pipelines(pipelines: &[PathBuf]) -> Result<Config, ConfigError> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        if let Some(p) = pipelines.first() {
            let parent = p.parent().unwrap_or(Path::new(""));
            dirs.push(if parent.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                parent.to_path_buf()
            });
        }
        dirs.push(PathBuf::from("."));
        let refs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
        Config::find(&refs)
    }
}

/// `.cfpipe/config` is relative to the directory holding `.cfpipe/`.
fn config_base(path: &Path) -> PathBuf {
    let parent = path.parent().unwrap_or(Path::new("."));
    if parent.file_name().is_some_and(|n| n == ".cfpipe") {
        parent.parent().unwrap_or(Path::new(".")).to_path_buf()
    } else {
        parent.to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_config_parses_and_resolves_the_cache_dir() {
        let c = Config::parse(
            "[remote]\nurl = \"s3://b/p\"\nendpoint = \"http://127.0.0.1:9\"\nregion = \"eu\"\n\
             allow_http = true\nread_through = false\n\n[cache]\ndir = \"c\"\nshared_group = \"g\"\n",
            Path::new("/proj/.cfpipe/config"),
        )
        .unwrap();
        let r = c.remote.unwrap();
        assert_eq!(r.url, "s3://b/p");
        assert_eq!(r.endpoint.as_deref(), Some("http://127.0.0.1:9"));
        assert!(!r.read_through && r.push);
        assert_eq!(c.cache.dir, Some(PathBuf::from("/proj/c")));
        assert_eq!(c.cache.shared_group.as_deref(), Some("g"));
    }

    #[test]
    fn unknown_keys_are_reported_with_a_location() {
        let e = Config::parse(
            "[remote]\nurl = \"x\"\nuri = \"y\"\n",
            Path::new("cfpipe.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cfpipe.toml"), "{e}");
        assert!(e.contains("uri"), "{e}");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn find_prefers_the_first_directory_and_tolerates_none() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        assert_eq!(Config::find(&[a.path()]).unwrap(), Config::default());
        std::fs::create_dir(b.path().join(".cfpipe")).unwrap();
        std::fs::write(b.path().join(".cfpipe/config"), "[remote]\nurl = \"/b\"\n").unwrap();
        std::fs::write(a.path().join("cfpipe.toml"), "[remote]\nurl = \"/a\"\n").unwrap();
        let c = Config::find(&[a.path(), b.path()]).unwrap();
        assert_eq!(c.remote.unwrap().url, "/a");
        let c = Config::find(&[b.path()]).unwrap();
        assert_eq!(c.remote.unwrap().url, "/b");
    }
}
