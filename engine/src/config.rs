//! Server configuration: built-in defaults, then a YAML file, then `VMCLUSTER_<KEY>` variables.
//!
//! The keys are seed 000's (`topology_dir`, `overlay_dir`, `ssh_key_path`, `ssh_user`,
//! `libvirt_uri`, `log_level`, the artifact and fault registry paths) plus `state_dir` (where the
//! journal lives) and `domain_type`. Precedence is env > file > defaults. With no file and no
//! variables everything still works: root gets system paths (`/etc/vmcluster`,
//! `/var/lib/vmcluster`, `qemu:///system`), any other user gets XDG paths and `qemu:///session`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::topology::DomainType;

/// Errors while loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named by `VMCLUSTER_CONFIG` (or the default path) could not be read.
    #[error("Cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid YAML for the config schema.
    #[error("Invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A `VMCLUSTER_*` variable holds a value of the wrong kind.
    #[error("Invalid value {value:?} in {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
        /// Why it was refused.
        message: String,
    },
}

/// The config file's shape: every key optional, unknown keys refused.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    topology_dir: Option<PathBuf>,
    overlay_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    artifact_registry: Option<PathBuf>,
    artifact_store_dir: Option<PathBuf>,
    fault_registry: Option<PathBuf>,
    ssh_key_path: Option<PathBuf>,
    ssh_user: Option<String>,
    libvirt_uri: Option<String>,
    log_level: Option<String>,
    domain_type: Option<DomainType>,
    ready_timeout_s: Option<u64>,
    cache_dir: Option<PathBuf>,
    transfer_max_bytes: Option<u64>,
}

/// The effective configuration of one server or CLI process.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// Where `<topology_name>.yaml` files are looked up.
    pub topology_dir: PathBuf,
    /// Default directory for per-node overlays, seeds and console logs (a topology may override).
    pub overlay_dir: PathBuf,
    /// Where the journal lives.
    pub state_dir: PathBuf,
    /// Artifact registry file (seed 000 key; used by the artifact tools).
    pub artifact_registry: PathBuf,
    /// Artifact store directory (seed 000 key).
    pub artifact_store_dir: PathBuf,
    /// Fault registry file (seed 000 key; faults live in the journal).
    pub fault_registry: PathBuf,
    /// Private key used for every node unless a topology names another; generated on first use.
    pub ssh_key_path: PathBuf,
    /// SSH user unless a topology names another.
    pub ssh_user: String,
    /// libvirt connection URI.
    pub libvirt_uri: String,
    /// `tracing` filter (`INFO`, `debug`, `vmcluster=trace`, ...).
    pub log_level: String,
    /// Accelerator unless a topology says otherwise.
    pub domain_type: DomainType,
    /// Default readiness budget per node when a tool does not give one.
    pub ready_timeout_s: u64,
    /// Host-wide cache (the accelerator probe's verdict), shared by every state dir.
    pub cache_dir: PathBuf,
    /// Largest file `node_upload` / `node_download` move (bytes).
    pub transfer_max_bytes: u64,
}

impl Config {
    /// The built-in defaults for a user (`is_root` picks system paths).
    pub fn defaults(is_root: bool, home: Option<&Path>) -> Config {
        let (etc, var, cache, uri) = if is_root || home.is_none() {
            (
                PathBuf::from("/etc/vmcluster"),
                PathBuf::from("/var/lib/vmcluster"),
                PathBuf::from("/var/cache/vmcluster"),
                "qemu:///system",
            )
        } else {
            let home = home.unwrap_or(Path::new("/"));
            (
                home.join(".config/vmcluster"),
                home.join(".local/share/vmcluster"),
                home.join(".cache/vmcluster"),
                "qemu:///session",
            )
        };
        Config {
            topology_dir: etc.join("topologies"),
            overlay_dir: var.join("overlays"),
            state_dir: var.join("state"),
            artifact_registry: var.join("artifacts/registry.json"),
            artifact_store_dir: var.join("artifacts/trees"),
            fault_registry: var.join("faults/registry.json"),
            ssh_key_path: etc.join("ssh/vmcluster_id_ed25519"),
            ssh_user: "root".to_owned(),
            libvirt_uri: uri.to_owned(),
            log_level: "INFO".to_owned(),
            domain_type: DomainType::Auto,
            ready_timeout_s: 120,
            cache_dir: cache,
            transfer_max_bytes: 1 << 30,
        }
    }

    /// Loads the configuration from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let is_root = unsafe { libc::geteuid() } == 0;
        let home = std::env::var_os("HOME").map(PathBuf::from);
        Config::load(is_root, home.as_deref(), &|k| std::env::var(k).ok())
    }

    /// Loads the configuration: defaults, then the file, then variables read through `env`.
    pub fn load(
        is_root: bool,
        home: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut cfg = Config::defaults(is_root, home);
        let (path, explicit) = match env("VMCLUSTER_CONFIG") {
            Some(p) => (PathBuf::from(p), true),
            None => (
                cfg.topology_dir
                    .parent()
                    .unwrap_or(Path::new("/"))
                    .join("config.yaml"),
                false,
            ),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let file: ConfigFile = if text.trim().is_empty() {
                    ConfigFile::default()
                } else {
                    serde_yaml::from_str(&text).map_err(|e| ConfigError::Parse {
                        path: path.clone(),
                        message: e.to_string(),
                    })?
                };
                cfg.apply_file(file);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {}
            Err(source) => return Err(ConfigError::Read { path, source }),
        }
        cfg.apply_env(env)?;
        Ok(cfg)
    }

    fn apply_file(&mut self, f: ConfigFile) {
        macro_rules! take {
            ($($k:ident),*) => { $( if let Some(v) = f.$k { self.$k = v; } )* };
        }
        take!(
            topology_dir,
            overlay_dir,
            state_dir,
            artifact_registry,
            artifact_store_dir,
            fault_registry,
            ssh_key_path,
            ssh_user,
            libvirt_uri,
            log_level,
            domain_type,
            ready_timeout_s,
            cache_dir,
            transfer_max_bytes
        );
    }

    fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let path = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        macro_rules! paths {
            ($($k:ident => $var:literal),*) => { $( if let Some(v) = path($var) { self.$k = v; } )* };
        }
        paths!(
            topology_dir => "VMCLUSTER_TOPOLOGY_DIR",
            overlay_dir => "VMCLUSTER_OVERLAY_DIR",
            state_dir => "VMCLUSTER_STATE_DIR",
            artifact_registry => "VMCLUSTER_ARTIFACT_REGISTRY",
            artifact_store_dir => "VMCLUSTER_ARTIFACT_STORE_DIR",
            fault_registry => "VMCLUSTER_FAULT_REGISTRY",
            ssh_key_path => "VMCLUSTER_SSH_KEY_PATH",
            cache_dir => "VMCLUSTER_CACHE_DIR"
        );
        if let Some(v) = env("VMCLUSTER_SSH_USER").filter(|v| !v.is_empty()) {
            self.ssh_user = v;
        }
        if let Some(v) = env("VMCLUSTER_LIBVIRT_URI").filter(|v| !v.is_empty()) {
            self.libvirt_uri = v;
        }
        if let Some(v) = env("VMCLUSTER_LOG_LEVEL").filter(|v| !v.is_empty()) {
            self.log_level = v;
        }
        if let Some(v) = env("VMCLUSTER_DOMAIN_TYPE").filter(|v| !v.is_empty()) {
            self.domain_type = v.parse().map_err(|message| ConfigError::Env {
                var: "VMCLUSTER_DOMAIN_TYPE".into(),
                value: v.clone(),
                message,
            })?;
        }
        let number = |var: &str| -> Result<Option<u64>, ConfigError> {
            env(var)
                .filter(|v| !v.is_empty())
                .map(|v| {
                    v.parse()
                        .map_err(|e: std::num::ParseIntError| ConfigError::Env {
                            var: var.into(),
                            value: v.clone(),
                            message: e.to_string(),
                        })
                })
                .transpose()
        };
        if let Some(v) = number("VMCLUSTER_READY_TIMEOUT_S")? {
            self.ready_timeout_s = v;
        }
        if let Some(v) = number("VMCLUSTER_TRANSFER_MAX_BYTES")? {
            self.transfer_max_bytes = v;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(false, Some(Path::new("/home/u")), &|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_work_with_nothing_set() {
        let c = load(&[]).unwrap();
        assert_eq!(
            c.topology_dir,
            Path::new("/home/u/.config/vmcluster/topologies")
        );
        assert_eq!(c.libvirt_uri, "qemu:///session");
        let root = Config::defaults(true, None);
        assert_eq!(root.libvirt_uri, "qemu:///system");
        assert_eq!(
            root.ssh_key_path,
            Path::new("/etc/vmcluster/ssh/vmcluster_id_ed25519")
        );
    }

    #[test]
    fn env_beats_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "ssh_user: alice\nlibvirt_uri: test:///default\nartifact_registry: /x/r.json\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let c = load(&[("VMCLUSTER_CONFIG", f), ("VMCLUSTER_SSH_USER", "bob")]).unwrap();
        assert_eq!(c.ssh_user, "bob");
        assert_eq!(c.libvirt_uri, "test:///default");
        assert_eq!(c.artifact_registry, Path::new("/x/r.json"));
        assert_eq!(c.ready_timeout_s, 120);
    }

    #[test]
    fn transfer_limit_defaults_to_1_gib_and_is_overridable() {
        assert_eq!(load(&[]).unwrap().transfer_max_bytes, 1 << 30);
        let c = load(&[("VMCLUSTER_TRANSFER_MAX_BYTES", "4096")]).unwrap();
        assert_eq!(c.transfer_max_bytes, 4096);
        assert!(matches!(
            load(&[("VMCLUSTER_TRANSFER_MAX_BYTES", "lots")]),
            Err(ConfigError::Env { .. })
        ));
    }

    #[test]
    fn bad_files_and_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "ssh_usr: alice\n").unwrap();
        let f = file.to_str().unwrap();
        let err = load(&[("VMCLUSTER_CONFIG", f)]).unwrap_err();
        assert!(err.to_string().contains("ssh_usr"), "{err}");
        let missing = dir.path().join("nope.yaml");
        assert!(matches!(
            load(&[("VMCLUSTER_CONFIG", missing.to_str().unwrap())]),
            Err(ConfigError::Read { .. })
        ));
        assert!(matches!(
            load(&[("VMCLUSTER_DOMAIN_TYPE", "xen")]),
            Err(ConfigError::Env { .. })
        ));
    }
}
