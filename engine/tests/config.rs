//! Server configuration: precedence env > file > defaults for every key, strict files, and seed
//! 000's example config loading unchanged.
//!
//! The table below lists every key of `Config` with a value for the file and another for the
//! environment; a completeness test compares it with the serialized `Config`, so a new key
//! cannot be added without being covered here. Environments are plain maps handed to
//! `Config::load`: no test touches the process environment.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use vmcluster_engine::config::{Config, ConfigError};
use vmcluster_engine::topology::DomainType;

/// Seed 000's example config file.
const EXAMPLE_CONFIG: &str = include_str!("data/example-config.yaml");

/// One configuration key: its YAML name, its variable, a file value and an env value (both
/// different from the defaults and from each other), and how to read it back as text.
struct Key {
    name: &'static str,
    var: &'static str,
    file: &'static str,
    env: &'static str,
    get: fn(&Config) -> String,
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

#[rustfmt::skip]
const KEYS: &[Key] = &[
    Key { name: "topology_dir", var: "VMCLUSTER_TOPOLOGY_DIR", file: "/f/topologies", env: "/e/topologies", get: |c| p(&c.topology_dir) },
    Key { name: "overlay_dir", var: "VMCLUSTER_OVERLAY_DIR", file: "/f/overlays", env: "/e/overlays", get: |c| p(&c.overlay_dir) },
    Key { name: "state_dir", var: "VMCLUSTER_STATE_DIR", file: "/f/state", env: "/e/state", get: |c| p(&c.state_dir) },
    Key { name: "artifact_registry", var: "VMCLUSTER_ARTIFACT_REGISTRY", file: "/f/registry.json", env: "/e/registry.json", get: |c| p(&c.artifact_registry) },
    Key { name: "artifact_store_dir", var: "VMCLUSTER_ARTIFACT_STORE_DIR", file: "/f/store", env: "/e/store", get: |c| p(&c.artifact_store_dir) },
    Key { name: "fault_registry", var: "VMCLUSTER_FAULT_REGISTRY", file: "/f/faults.json", env: "/e/faults.json", get: |c| p(&c.fault_registry) },
    Key { name: "ssh_key_path", var: "VMCLUSTER_SSH_KEY_PATH", file: "/f/id_ed25519", env: "/e/id_ed25519", get: |c| p(&c.ssh_key_path) },
    Key { name: "ssh_user", var: "VMCLUSTER_SSH_USER", file: "alice", env: "bob", get: |c| c.ssh_user.clone() },
    Key { name: "libvirt_uri", var: "VMCLUSTER_LIBVIRT_URI", file: "test:///default", env: "qemu+ssh://h/system", get: |c| c.libvirt_uri.clone() },
    Key { name: "log_level", var: "VMCLUSTER_LOG_LEVEL", file: "debug", env: "vmcluster=trace", get: |c| c.log_level.clone() },
    Key { name: "domain_type", var: "VMCLUSTER_DOMAIN_TYPE", file: "kvm", env: "qemu", get: |c| format!("{:?}", c.domain_type).to_lowercase() },
    Key { name: "ready_timeout_s", var: "VMCLUSTER_READY_TIMEOUT_S", file: "300", env: "45", get: |c| c.ready_timeout_s.to_string() },
    Key { name: "cache_dir", var: "VMCLUSTER_CACHE_DIR", file: "/f/cache", env: "/e/cache", get: |c| p(&c.cache_dir) },
    Key { name: "transfer_max_bytes", var: "VMCLUSTER_TRANSFER_MAX_BYTES", file: "1048576", env: "4096", get: |c| c.transfer_max_bytes.to_string() },
];

const HOME: &str = "/home/u";

/// Loads a non-root configuration with `vars` as the whole environment.
fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::load(false, Some(Path::new(HOME)), &|k| map.get(k).cloned())
}

/// A config file in a fresh temporary directory (kept alive by the returned guard).
fn file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, text).unwrap();
    let path = path.to_str().unwrap().to_owned();
    (dir, path)
}

#[track_caller]
fn check_key(c: &Config, key: &Key, want: &str, layer: &str) {
    assert_eq!((key.get)(c), want, "{} should come from {layer}", key.name);
}

#[test]
fn the_table_covers_every_key() {
    let json = serde_json::to_value(Config::defaults(false, Some(Path::new(HOME)))).unwrap();
    let fields: BTreeSet<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let table: BTreeSet<&str> = KEYS.iter().map(|k| k.name).collect();
    assert_eq!(fields, table, "add the new key to KEYS");
    for k in KEYS {
        assert_eq!(k.var, format!("VMCLUSTER_{}", k.name.to_uppercase()));
    }
}

#[test]
fn env_beats_file_beats_defaults_for_every_key() {
    let defaults = Config::defaults(false, Some(Path::new(HOME)));
    let all_file: String = KEYS
        .iter()
        .map(|k| format!("{}: {}\n", k.name, k.file))
        .collect();
    let (_dir, path) = file(&all_file);

    // Nothing set.
    let c = load(&[]).unwrap();
    assert_eq!(c, defaults);
    for k in KEYS {
        assert_ne!(
            (k.get)(&defaults),
            k.file,
            "{}: pick a non-default file value",
            k.name
        );
        assert_ne!(
            (k.get)(&defaults),
            k.env,
            "{}: pick a non-default env value",
            k.name
        );
    }

    // Every key from the file.
    let c = load(&[("VMCLUSTER_CONFIG", &path)]).unwrap();
    for k in KEYS {
        check_key(&c, k, k.file, "the file");
    }

    // Every key from the environment, over the file and without one.
    let env: Vec<(&str, &str)> = KEYS.iter().map(|k| (k.var, k.env)).collect();
    let mut with_file = env.clone();
    with_file.push(("VMCLUSTER_CONFIG", &path));
    for c in [load(&with_file).unwrap(), load(&env).unwrap()] {
        for k in KEYS {
            check_key(&c, k, k.env, "the environment");
        }
    }

    // Each key alone: only that key moves, in both layers.
    for k in KEYS {
        let (_d, one) = file(&format!("{}: {}\n", k.name, k.file));
        let from_file = load(&[("VMCLUSTER_CONFIG", &one)]).unwrap();
        let from_env = load(&[("VMCLUSTER_CONFIG", &one), (k.var, k.env)]).unwrap();
        check_key(&from_file, k, k.file, "the file");
        check_key(&from_env, k, k.env, "the environment");
        for other in KEYS.iter().filter(|o| o.name != k.name) {
            check_key(&from_file, other, &(other.get)(&defaults), "the defaults");
            check_key(&from_env, other, &(other.get)(&defaults), "the defaults");
        }
    }
}

#[test]
fn empty_variables_do_not_override() {
    let all_file: String = KEYS
        .iter()
        .map(|k| format!("{}: {}\n", k.name, k.file))
        .collect();
    let (_dir, path) = file(&all_file);
    let mut env: Vec<(&str, &str)> = KEYS.iter().map(|k| (k.var, "")).collect();
    env.push(("VMCLUSTER_CONFIG", &path));
    let c = load(&env).unwrap();
    for k in KEYS {
        check_key(&c, k, k.file, "the file (an empty variable is unset)");
    }
}

#[test]
fn defaults_for_users_and_root() {
    let user = Config::defaults(false, Some(Path::new(HOME)));
    assert_eq!(
        user.topology_dir,
        Path::new("/home/u/.config/vmcluster/topologies")
    );
    assert_eq!(
        user.overlay_dir,
        Path::new("/home/u/.local/share/vmcluster/overlays")
    );
    assert_eq!(
        user.state_dir,
        Path::new("/home/u/.local/share/vmcluster/state")
    );
    assert_eq!(
        user.ssh_key_path,
        Path::new("/home/u/.config/vmcluster/ssh/vmcluster_id_ed25519")
    );
    assert_eq!(user.libvirt_uri, "qemu:///session");
    assert_eq!(user.ssh_user, "root");
    assert_eq!(user.log_level, "INFO");
    assert_eq!(user.domain_type, DomainType::Auto);
    assert_eq!(user.ready_timeout_s, 120);

    let root = Config::defaults(true, Some(Path::new("/root")));
    assert_eq!(
        root,
        Config::defaults(false, None),
        "no HOME means system paths"
    );
    assert_eq!(root.topology_dir, Path::new("/etc/vmcluster/topologies"));
    assert_eq!(root.overlay_dir, Path::new("/var/lib/vmcluster/overlays"));
    assert_eq!(root.state_dir, Path::new("/var/lib/vmcluster/state"));
    assert_eq!(
        root.artifact_registry,
        Path::new("/var/lib/vmcluster/artifacts/registry.json")
    );
    assert_eq!(
        root.fault_registry,
        Path::new("/var/lib/vmcluster/faults/registry.json")
    );
    assert_eq!(
        root.ssh_key_path,
        Path::new("/etc/vmcluster/ssh/vmcluster_id_ed25519")
    );
    assert_eq!(root.libvirt_uri, "qemu:///system");
}

#[test]
fn the_default_file_is_read_when_present_and_optional_when_absent() {
    let home = tempfile::tempdir().unwrap();
    let load_home = |vars: HashMap<String, String>| {
        Config::load(false, Some(home.path()), &move |k| vars.get(k).cloned())
    };
    // Absent: fine, defaults.
    let c = load_home(HashMap::new()).unwrap();
    assert_eq!(c, Config::defaults(false, Some(home.path())));
    // Present at <home>/.config/vmcluster/config.yaml: read.
    let dir = home.path().join(".config/vmcluster");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.yaml"), "ssh_user: carol\n").unwrap();
    assert_eq!(load_home(HashMap::new()).unwrap().ssh_user, "carol");
    // Broken: refused, even though nobody named it.
    std::fs::write(dir.join("config.yaml"), "ssh_user: [carol\n").unwrap();
    assert!(matches!(
        load_home(HashMap::new()),
        Err(ConfigError::Parse { .. })
    ));
}

#[test]
fn empty_and_comment_only_files_mean_defaults() {
    for text in ["", "\n\n", "# nothing configured yet\n"] {
        let (_dir, path) = file(text);
        let c = load(&[("VMCLUSTER_CONFIG", &path)]).unwrap();
        assert_eq!(
            c,
            Config::defaults(false, Some(Path::new(HOME))),
            "{text:?}"
        );
    }
}

#[track_caller]
fn check_parse_error(text: &str, needles: &[&str]) {
    let (_dir, path) = file(text);
    let err = load(&[("VMCLUSTER_CONFIG", &path)]).unwrap_err();
    let ConfigError::Parse { path: p, .. } = &err else {
        panic!("expected a parse error, got {err:?}")
    };
    assert_eq!(p, &PathBuf::from(&path));
    let msg = err.to_string();
    assert!(msg.starts_with("Invalid config file "), "{msg}");
    for n in needles {
        assert!(msg.contains(n), "{n:?} missing in {msg}");
    }
}

#[test]
fn unknown_keys_and_bad_values_in_the_file_are_refused_by_name() {
    // (serde_yaml names no position for line 1, column 1.)
    check_parse_error("ssh_usr: alice\n", &["unknown field `ssh_usr`"]);
    check_parse_error(
        "ssh_user: alice\nlog_level: INFO\novrlay_dir: /x\n",
        &["unknown field `ovrlay_dir`", "line 3"],
    );
    // seed 000 keys that vmcluster dropped would be typos here too.
    check_parse_error("topology_dirs: /x\n", &["topology_dirs"]);
    check_parse_error("domain_type: xen\n", &["unknown variant `xen`"]);
    check_parse_error(
        "ready_timeout_s: soon\n",
        &["ready_timeout_s", "invalid type"],
    );
    check_parse_error("ready_timeout_s: -1\n", &["ready_timeout_s"]);
    check_parse_error("- a list\n", &["invalid type: sequence"]);
}

#[track_caller]
fn check_env_error(var: &str, value: &str) {
    let err = load(&[(var, value)]).unwrap_err();
    let ConfigError::Env {
        var: v, value: got, ..
    } = &err
    else {
        panic!("expected an env error, got {err:?}")
    };
    assert_eq!((v.as_str(), got.as_str()), (var, value));
    let msg = err.to_string();
    assert!(msg.contains(var) && msg.contains(value), "{msg}");
}

#[test]
fn bad_variables_are_refused_by_name() {
    check_env_error("VMCLUSTER_DOMAIN_TYPE", "xen");
    check_env_error("VMCLUSTER_DOMAIN_TYPE", "KVM");
    check_env_error("VMCLUSTER_READY_TIMEOUT_S", "soon");
    check_env_error("VMCLUSTER_READY_TIMEOUT_S", "-5");
    // `tcg` is accepted as another name for `qemu`.
    assert_eq!(
        load(&[("VMCLUSTER_DOMAIN_TYPE", "tcg")])
            .unwrap()
            .domain_type,
        DomainType::Qemu
    );
    assert_eq!(
        load(&[("VMCLUSTER_DOMAIN_TYPE", "auto")])
            .unwrap()
            .domain_type,
        DomainType::Auto
    );
}

#[test]
fn a_named_file_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.yaml");
    let err = load(&[("VMCLUSTER_CONFIG", missing.to_str().unwrap())]).unwrap_err();
    match &err {
        ConfigError::Read { path, source } => {
            assert_eq!(path, &missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected a read error, got {other:?}"),
    }
    assert!(err.to_string().contains("nope.yaml"), "{err}");
}

#[test]
fn seed_000_example_config_loads_unchanged() {
    let (_dir, path) = file(EXAMPLE_CONFIG);
    let c = load(&[("VMCLUSTER_CONFIG", &path)]).unwrap();
    let defaults = Config::defaults(false, Some(Path::new(HOME)));
    assert_eq!(c.topology_dir, Path::new("/etc/vmcluster/topologies"));
    assert_eq!(c.overlay_dir, Path::new("/var/lib/vmcluster/overlays"));
    assert_eq!(
        c.artifact_registry,
        Path::new("/var/lib/vmcluster/artifacts/registry.json")
    );
    assert_eq!(
        c.artifact_store_dir,
        Path::new("/var/lib/vmcluster/artifacts/store")
    );
    assert_eq!(
        c.fault_registry,
        Path::new("/var/lib/vmcluster/faults/registry.json")
    );
    assert_eq!(c.ssh_key_path, Path::new("/etc/vmcluster/ssh/id_ed25519"));
    assert_eq!(c.ssh_user, "root");
    assert_eq!(c.libvirt_uri, "qemu:///system");
    assert_eq!(c.log_level, "INFO");
    // Keys seed 000 does not know keep their defaults.
    assert_eq!(c.state_dir, defaults.state_dir);
    assert_eq!(c.domain_type, defaults.domain_type);
    assert_eq!(c.ready_timeout_s, defaults.ready_timeout_s);
    assert_eq!(c.cache_dir, defaults.cache_dir);
    // And the file really names every one of seed 000's keys.
    let keys: serde_yaml::Mapping = serde_yaml::from_str(EXAMPLE_CONFIG).unwrap();
    let keys: BTreeSet<&str> = keys.keys().filter_map(|k| k.as_str()).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "topology_dir",
            "overlay_dir",
            "artifact_registry",
            "artifact_store_dir",
            "fault_registry",
            "ssh_key_path",
            "ssh_user",
            "libvirt_uri",
            "log_level",
        ])
    );
}
