//! Host-side helpers: overlays and disks (`qemu-img`), seed ISOs (`genisoimage`), the SSH key
//! pair, console logs, the accelerator probe, and the ownership marker of cluster directories.
//!
//! Every file is written to a temporary name in its final directory and renamed into place, so a
//! crash never leaves a half-written overlay or seed that a later run would mistake for complete.
//! Processes run through `tokio::process`, never blocking the runtime.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;
use vmcluster_engine::seed::SeedFiles;
use vmcluster_engine::xml::Accel;

use crate::error::{EngineError, Result};

/// Name of the ownership marker written into every cluster directory.
pub const OWNER_MARKER: &str = ".vmcluster-owner";

async fn run(action: &str, cmd: &mut Command) -> Result<std::process::Output> {
    let out = cmd
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| EngineError::io(action, e))?;
    if !out.status.success() {
        return Err(EngineError::Io {
            action: action.to_owned(),
            message: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(out)
}

/// `.<name>.<suffix>` beside `path`: the fixed names of what belongs to a file while it is
/// made, so a crash leaves nothing undo cannot name.
fn hidden_sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{suffix}"))
}

/// Where `path` is written before its atomic rename. Deterministic, so an interrupted write
/// is overwritten by the next attempt and removed by undo (callers hold the cluster's lock).
pub fn tmp_sibling(path: &Path) -> PathBuf {
    hidden_sibling(path, "tmp")
}

/// Creates `dir` and missing parents, world-traversable (QEMU runs as another user).
pub fn ensure_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut missing = Vec::new();
    let mut p = Some(dir);
    while let Some(d) = p {
        if d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        p = d.parent();
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| EngineError::io(format!("create {}", dir.display()), e))?;
    for d in missing {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| EngineError::io(format!("chmod {}", d.display()), e))?;
    }
    Ok(())
}

/// Writes the owner marker of a cluster directory.
pub fn write_owner_marker(dir: &Path, cluster: &str) -> Result<()> {
    let path = dir.join(OWNER_MARKER);
    std::fs::write(&path, format!("{{\"cluster\":{cluster:?}}}\n"))
        .map_err(|e| EngineError::io(format!("write {}", path.display()), e))
}

/// `qemu-img info` of an image as JSON, read with `-U` (works while QEMU has it open).
async fn image_info(path: &Path) -> Result<serde_json::Value> {
    let out = run(
        &format!("inspect {}", path.display()),
        Command::new("qemu-img")
            .args(["info", "--output=json", "-U"])
            .arg(path),
    )
    .await?;
    serde_json::from_slice(&out.stdout).map_err(|e| EngineError::io("parse qemu-img info", e))
}

/// The format (`qcow2`, `raw`, ...) of an image, as `qemu-img info` sees it.
pub async fn image_format(path: &Path) -> Result<String> {
    let v = image_info(path).await?;
    v.get("format")
        .and_then(|f| f.as_str())
        .map(str::to_owned)
        .ok_or_else(|| EngineError::io("parse qemu-img info", "no format field"))
}

/// The internal snapshots stored in a qcow2 image: tag → bytes of saved VM state
/// (`vm-state-size`, 0 for a disk-only snapshot). Read with `-U`, so it works while QEMU has
/// the image open.
pub async fn image_snapshots(path: &Path) -> Result<std::collections::BTreeMap<String, u64>> {
    let v = image_info(path).await?;
    Ok(v.get("snapshots")
        .and_then(|s| s.as_array())
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let name = s.get("name")?.as_str()?.to_owned();
            Some((name, s.get("vm-state-size")?.as_u64().unwrap_or(0)))
        })
        .collect())
}

/// Creates a qcow2 overlay of `base` at `overlay` unless it exists. Returns whether it was created.
pub async fn ensure_overlay(base: &Path, overlay: &Path) -> Result<bool> {
    if existing_file(overlay)? {
        return Ok(false);
    }
    let fmt = image_format(base).await?;
    let tmp = tmp_sibling(overlay);
    let res = run(
        &format!("create overlay {}", overlay.display()),
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", &fmt, "-b"])
            .arg(base)
            .arg(&tmp),
    )
    .await;
    finish_tmp(res, &tmp, overlay)?;
    Ok(true)
}

/// Creates an empty qcow2 disk of `size_gb` GiB at `path` unless it exists. Returns whether it was
/// created.
pub async fn ensure_disk(path: &Path, size_gb: u64) -> Result<bool> {
    if existing_file(path)? {
        return Ok(false);
    }
    if let Some(parent) = path.parent() {
        ensure_dir(parent)?;
    }
    let tmp = tmp_sibling(path);
    let res = run(
        &format!("create disk {}", path.display()),
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&tmp)
            .arg(format!("{size_gb}G")),
    )
    .await;
    finish_tmp(res, &tmp, path)?;
    Ok(true)
}

/// Whether `path` is an existing regular file; anything else in its place is an error.
fn existing_file(path: &Path) -> Result<bool> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(true),
        Ok(_) => Err(EngineError::io(
            format!("use {}", path.display()),
            "it exists and is not a regular file",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(EngineError::io(format!("inspect {}", path.display()), e)),
    }
}

fn finish_tmp<T>(res: Result<T>, tmp: &Path, dest: &Path) -> Result<()> {
    match res {
        Ok(_) => std::fs::rename(tmp, dest).map_err(|e| {
            let _ = std::fs::remove_file(tmp);
            EngineError::io(format!("rename into {}", dest.display()), e)
        }),
        Err(e) => {
            let _ = std::fs::remove_file(tmp);
            Err(e)
        }
    }
}

/// The stamp file beside a seed ISO that records the digest of the files it was built from.
pub fn seed_stamp(iso: &Path) -> PathBuf {
    hidden_sibling(iso, "sha256")
}

/// Writes the seed ISO unless one built from exactly these files is already there. Returns
/// whether it wrote one.
pub async fn ensure_seed_iso(files: &SeedFiles, iso: &Path) -> Result<bool> {
    let stamp = seed_stamp(iso);
    let digest = files.digest();
    if existing_file(iso)? && std::fs::read_to_string(&stamp).is_ok_and(|d| d.trim() == digest) {
        return Ok(false);
    }
    write_seed_iso(files, iso).await?;
    std::fs::write(&stamp, format!("{digest}\n"))
        .map_err(|e| EngineError::io(format!("write {}", stamp.display()), e))?;
    Ok(true)
}

/// Writes a NoCloud seed ISO (volume label `cidata`) at `iso`, replacing any previous one.
pub async fn write_seed_iso(files: &SeedFiles, iso: &Path) -> Result<()> {
    // A fixed name (not a random temporary directory): a process killed while it writes leaves
    // something the next attempt replaces and undo removes (`seed_staging`).
    let staging = seed_staging(iso);
    let (dir, files) = (staging.clone(), files.clone());
    // File system calls, off the runtime's threads.
    tokio::task::spawn_blocking(move || {
        remove_dir_all(&dir)?;
        std::fs::create_dir(&dir)
            .map_err(|e| EngineError::io(format!("create {}", dir.display()), e))?;
        for (name, body) in [
            ("meta-data", &files.meta_data),
            ("user-data", &files.user_data),
            ("network-config", &files.network_config),
        ] {
            std::fs::write(dir.join(name), body)
                .map_err(|e| EngineError::io(format!("write {name}"), e))?;
        }
        Ok::<_, EngineError>(())
    })
    .await
    .map_err(|e| EngineError::Internal(format!("seed staging task: {e}")))??;
    let tmp = tmp_sibling(iso);
    let res = run(
        &format!("write seed {}", iso.display()),
        Command::new(iso_writer())
            .current_dir(&staging)
            .args(["-quiet", "-output"])
            .arg(&tmp)
            .args([
                "-V",
                "cidata",
                "-J",
                "-r",
                "user-data",
                "meta-data",
                "network-config",
            ]),
    )
    .await;
    let done = finish_tmp(res, &tmp, iso);
    tokio::task::spawn_blocking(move || remove_dir_all(&staging))
        .await
        .map_err(|e| EngineError::Internal(format!("seed staging task: {e}")))??;
    done
}

/// Where the files of seed ISO `iso` are staged while it is written.
pub fn seed_staging(iso: &Path) -> PathBuf {
    hidden_sibling(iso, "staging")
}

/// Removes a directory tree if present.
pub fn remove_dir_all(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(EngineError::io(format!("remove {}", path.display()), e)),
    }
}

fn iso_writer() -> &'static str {
    static W: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    W.get_or_init(|| {
        let on_path = |b: &str| {
            std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).any(|d| d.join(b).is_file()))
                .unwrap_or(false)
        };
        if on_path("genisoimage") {
            "genisoimage"
        } else {
            "mkisofs"
        }
    })
}

/// Removes a file if present.
pub fn remove_file(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(EngineError::io(format!("remove {}", path.display()), e)),
    }
}

/// The last `lines` lines of a console log (empty when there is none yet).
pub fn console_tail(path: &Path, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    // The log keeps every boot (append mode): read only its end.
    const WINDOW: u64 = 256 * 1024;
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut bytes = Vec::new();
    if f.seek(SeekFrom::Start(len.saturating_sub(WINDOW))).is_err()
        || f.read_to_end(&mut bytes).is_err()
    {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    // Console output ends lines with \r\n and may carry terminal escapes: keep printable text.
    let all: Vec<String> = text
        .lines()
        .map(|l| {
            l.chars()
                .filter(|c| !c.is_control() || *c == '\t')
                .collect::<String>()
        })
        .collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Loads the private key at `path`, generating an ed25519 pair (and `path.pub`) on first use.
/// Returns the key and its public half as an OpenSSH line.
///
/// Concurrent callers (defines of different clusters) are serialized: each would otherwise
/// write its own key to the shared temporary name, and a cluster could be seeded with a key that
/// another one then replaced.
pub fn ensure_keypair(path: &Path) -> Result<(russh::keys::PrivateKey, String)> {
    use russh::keys::ssh_key::{LineEnding, private::Ed25519Keypair};
    use std::io::Read;
    static CREATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = CREATING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !path.exists() {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| EngineError::io(format!("create {}", parent.display()), e))?;
        }
        let mut seed = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .map_err(|e| EngineError::io("read /dev/urandom", e))?;
        let mut key = russh::keys::PrivateKey::from(Ed25519Keypair::from_seed(&seed));
        key.set_comment("vmcluster");
        let tmp = tmp_sibling(path);
        key.write_openssh_file(&tmp, LineEnding::LF)
            .map_err(|e| EngineError::io("write SSH key", e))?;
        std::fs::rename(&tmp, path).map_err(|e| EngineError::io("install SSH key", e))?;
        let public = key
            .public_key()
            .to_openssh()
            .map_err(|e| EngineError::io("encode SSH key", e))?;
        std::fs::write(path.with_extension("pub"), format!("{public}\n"))
            .map_err(|e| EngineError::io("write SSH public key", e))?;
    }
    let key = russh::keys::load_secret_key(path, None)
        .map_err(|e| EngineError::io(format!("load SSH key {}", path.display()), e))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| EngineError::io("encode SSH key", e))?;
    Ok((key, public))
}

/// Finds out whether KVM really runs guests here, else TCG.
///
/// `/dev/kvm` existing proves little (nested KVM may be present and hang every guest), so this
/// boots a Linux kernel under KVM with a deadline and waits for it to reach the point where it
/// looks for init (it panics with `panic=-1` and QEMU exits). Without a kernel it falls back to
/// a 64 KiB firmware that only proves real-mode execution.
pub async fn probe_accel(kernel: Option<&Path>, scratch: &Path) -> Accel {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        tracing::info!("accelerator probe: /dev/kvm unusable, using qemu (TCG)");
        return Accel::Qemu;
    }
    let ok = match kernel {
        Some(k) => boots_kernel(k, "kvm").await,
        None => runs_firmware(scratch, "kvm").await,
    };
    let accel = if ok { Accel::Kvm } else { Accel::Qemu };
    tracing::info!(?accel, kernel = ?kernel, "accelerator probe finished");
    accel
}

/// [`probe_accel`], remembered in `cache_dir` per host kernel, `/dev/kvm` presence and probe
/// method, so a host pays for the probe once rather than once per process.
pub async fn probe_accel_cached(kernel: Option<&Path>, cache_dir: &Path) -> Accel {
    // The verdict belongs to the host (its kernel and /dev/kvm), not to the probe's vehicle.
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let key = format!(
        "host={} kvm={} method={}",
        host_kernel.trim(),
        Path::new("/dev/kvm").exists(),
        if kernel.is_some() {
            "kernel"
        } else {
            "firmware"
        }
    );
    let file = cache_dir.join("accel-probe.json");
    let mut cache: std::collections::BTreeMap<String, Accel> = std::fs::read(&file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if let Some(a) = cache.get(&key) {
        return *a;
    }
    let a = probe_accel(kernel, cache_dir).await;
    cache.insert(key, a);
    if let Ok(bytes) = serde_json::to_vec_pretty(&cache) {
        let tmp = tmp_sibling(&file);
        if std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, &file))
            .is_err()
        {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    a
}

/// Boots `kernel` with `accel` and reports whether it reached the init lookup within the deadline.
pub async fn boots_kernel(kernel: &Path, accel: &str) -> bool {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-machine",
        &format!("pc,accel={accel}"),
        "-m",
        "256",
        "-nodefaults",
    ])
    .args([
        "-display",
        "none",
        "-no-user-config",
        "-no-reboot",
        "-monitor",
        "none",
    ])
    .args(["-serial", "stdio", "-kernel"])
    .arg(kernel)
    .args([
        "-append",
        "console=ttyS0 panic=-1 rdinit=/vmcluster-probe-none init=/vmcluster-probe-none",
    ])
    // Never share our stdin: QEMU's stdio backend makes it non-blocking, which breaks the
    // MCP transport reading the same pipe (measured: `flags 04000` on fd 0 after a probe).
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null())
    .kill_on_drop(true);
    let probe = async {
        let out = cmd.output().await.ok()?;
        Some(String::from_utf8_lossy(&out.stdout).contains("Kernel panic"))
    };
    // A working accelerator reaches the panic in about a second (TCG here: 3.3 s); broken nested
    // KVM hangs forever.
    matches!(
        tokio::time::timeout(Duration::from_secs(12), probe).await,
        Ok(Some(true))
    )
}

/// Runs the probe firmware with `accel` and reports whether it signalled its exit code.
pub async fn runs_firmware(scratch: &Path, accel: &str) -> bool {
    use vmcluster_engine::probe;
    let bios = scratch.join(format!("kvm-probe-{}.bin", uuid::Uuid::new_v4().simple()));
    if std::fs::write(&bios, probe::firmware()).is_err() {
        return false;
    }
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(probe::qemu_args(&bios.to_string_lossy(), accel))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let res = tokio::time::timeout(Duration::from_secs(10), cmd.status()).await;
    let _ = std::fs::remove_file(&bios);
    matches!(res, Ok(Ok(s)) if s.code() == Some(probe::EXPECTED_STATUS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_first_uses_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys").join("id_ed25519");
        let start = std::sync::Barrier::new(16);
        let publics: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        ensure_keypair(&path).expect("ensure_keypair").1
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let (_, on_disk) = ensure_keypair(&path).unwrap();
        assert!(
            publics.iter().all(|p| *p == on_disk),
            "{publics:?} vs {on_disk}"
        );
        let pub_file = std::fs::read_to_string(path.with_extension("pub")).unwrap();
        assert_eq!(pub_file.trim(), on_disk);
    }
}
