//! The libvirt connection: blocking calls moved off the async runtime, and domain lifecycle events.
//!
//! The `virt` crate is synchronous, and this machine has two tokio workers: every call runs in
//! `spawn_blocking` on a clone of the one [`virt::connect::Connect`] (a cheap `virConnectRef`).
//! One connection serves the whole process, which is also what libvirt's `test:///default`
//! driver needs (its state lives and dies with a connection).
//!
//! Lifecycle events: the crate has no safe wrapper for them, so [`Virt::open`] registers a raw
//! `virConnectDomainEventRegisterAny` callback (the only `unsafe` in the workspace). It runs on
//! libvirt's event-loop thread and does nothing but send the domain's name and event kind on a
//! channel; the NodeActors then re-read the state through the normal API.

use std::ffi::{CStr, c_int, c_void};
use std::sync::Once;

use tokio::sync::mpsc;
use virt::connect::Connect;
use virt::error::ErrorNumber;
use virt::sys;
use vmcluster_engine::snapshot::{self, SnapshotMeta};
use vmcluster_engine::state::DomainState;
use vmcluster_engine::topology::ExistingNetwork;
use vmcluster_engine::xml::{self, Owner};

use crate::error::{EngineError, Result};

/// A lifecycle event of one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainEvent {
    /// The domain's name.
    pub domain: String,
    /// The libvirt event kind (`VIR_DOMAIN_EVENT_*`).
    pub kind: i32,
}

impl DomainEvent {
    /// The domain was undefined.
    pub fn is_undefined(&self) -> bool {
        self.kind == sys::VIR_DOMAIN_EVENT_UNDEFINED as i32
    }
}

/// The process's libvirt connection.
#[derive(Clone)]
pub struct Virt {
    conn: Connect,
    uri: std::sync::Arc<str>,
}

impl std::fmt::Debug for Virt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Virt").field("uri", &self.uri).finish()
    }
}

static EVENT_LOOP: Once = Once::new();

/// Channel end handed to the C callback. Boxed so its address is stable for libvirt.
type EventTx = mpsc::UnboundedSender<DomainEvent>;

unsafe extern "C" fn on_lifecycle(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    _detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: `opaque` is the `Box<EventTx>` leaked in `Virt::open`; libvirt keeps it alive until
    // `free_event_tx` runs, and only calls us from its single event-loop thread.
    let tx = unsafe { &*(opaque as *const EventTx) };
    // SAFETY: libvirt passes a valid domain for the duration of the callback; the name is a
    // NUL-terminated string owned by the domain object.
    let name = unsafe {
        let p = sys::virDomainGetName(dom);
        if p.is_null() {
            return 0;
        }
        CStr::from_ptr(p).to_string_lossy().into_owned()
    };
    let _ = tx.send(DomainEvent {
        domain: name,
        kind: event,
    });
    0
}

unsafe extern "C" fn free_event_tx(opaque: *mut c_void) {
    // SAFETY: called once by libvirt when the callback is deregistered; reclaims the box leaked
    // in `Virt::open`.
    drop(unsafe { Box::from_raw(opaque as *mut EventTx) });
}

fn is(e: &virt::error::Error, n: ErrorNumber) -> bool {
    matches!(e.code(), virt::enumutil::Enum::Known(k) if k == n)
}

impl Virt {
    /// Opens `uri`, starts libvirt's event loop (once per process) and subscribes to lifecycle
    /// events of every domain.
    pub async fn open(uri: &str) -> Result<(Virt, mpsc::UnboundedReceiver<DomainEvent>)> {
        let uri_s = uri.to_owned();
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = tokio::task::spawn_blocking(move || -> Result<Connect> {
            virt::error::clear_error_callback();
            let mut loop_err = None;
            EVENT_LOOP.call_once(|| {
                if let Err(e) = virt::event::event_register_default_impl() {
                    loop_err = Some(e);
                    return;
                }
                std::thread::Builder::new()
                    .name("libvirt-events".into())
                    .spawn(|| {
                        loop {
                            if virt::event::event_run_default_impl().is_err() {
                                std::thread::sleep(std::time::Duration::from_millis(50));
                            }
                        }
                    })
                    .expect("spawn libvirt event thread");
            });
            if let Some(e) = loop_err {
                return Err(EngineError::libvirt("event loop setup", &e));
            }
            let conn = Connect::open(Some(&uri_s))
                .map_err(|e| EngineError::libvirt(format!("open {uri_s}"), &e))?;
            // Keepalive lets libvirt notice a dead daemon; drivers without it (test://) refuse.
            let _ = conn.set_keep_alive(5, 3);
            let cb: sys::virConnectDomainEventGenericCallback = Some(
                // SAFETY: libvirt calls a lifecycle callback with exactly the signature of
                // `on_lifecycle`; the generic type only exists to be cast, as libvirt documents.
                unsafe {
                    std::mem::transmute::<
                        unsafe extern "C" fn(
                            sys::virConnectPtr,
                            sys::virDomainPtr,
                            c_int,
                            c_int,
                            *mut c_void,
                        ) -> c_int,
                        unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void),
                    >(on_lifecycle)
                },
            );
            let opaque = Box::into_raw(Box::new(tx)) as *mut c_void;
            // SAFETY: the connection is open; `opaque` stays valid until libvirt calls
            // `free_event_tx`, which it does when the callback is deregistered or the
            // connection closes.
            let id = unsafe {
                sys::virConnectDomainEventRegisterAny(
                    conn.as_ptr(),
                    std::ptr::null_mut(),
                    sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
                    cb,
                    opaque,
                    Some(free_event_tx),
                )
            };
            if id < 0 {
                // SAFETY: registration failed, so libvirt did not take ownership of the box.
                drop(unsafe { Box::from_raw(opaque as *mut EventTx) });
                return Err(EngineError::libvirt(
                    "register lifecycle events",
                    &virt::error::Error::last_error(),
                ));
            }
            Ok(conn)
        })
        .await
        .map_err(|e| EngineError::Internal(format!("libvirt open task: {e}")))??;
        Ok((
            Virt {
                conn,
                uri: uri.into(),
            },
            rx,
        ))
    }

    /// The connection URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Runs a blocking libvirt call off the runtime; `action` names it in errors.
    pub async fn call<T, F>(&self, action: &str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connect) -> Result<T, virt::error::Error> + Send + 'static,
    {
        let conn = self.conn.clone();
        let action_s = action.to_owned();
        tokio::task::spawn_blocking(move || {
            f(&conn).map_err(|e| EngineError::libvirt(action_s, &e))
        })
        .await
        .map_err(|e| EngineError::Internal(format!("libvirt task: {e}")))?
    }

    /// The state of domain `name` (`Undefined` when it does not exist).
    pub async fn domain_state(&self, name: &str) -> Result<DomainState> {
        let n = name.to_owned();
        self.call("get domain state", move |c| {
            match c.lookup_domain_by_name(&n) {
                Ok(d) => d.state().map(|(s, _)| map_state(s)),
                Err(e) if is(&e, ErrorNumber::NoDomain) => Ok(DomainState::Undefined),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// The owner tag of domain `name`: `None` if absent, `Some(None)` if present but not ours.
    pub async fn domain_owner(&self, name: &str) -> Result<Option<Option<Owner>>> {
        let n = name.to_owned();
        self.call("read domain XML", move |c| {
            match c.lookup_domain_by_name(&n) {
                Ok(d) => Ok(Some(xml::parse_owner(
                    &d.xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)?,
                ))),
                Err(e) if is(&e, ErrorNumber::NoDomain) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Defines a domain from XML (persistent).
    pub async fn define_domain(&self, xml: String) -> Result<()> {
        self.call("define domain", move |c| {
            c.define_domain_xml(&xml).map(drop)
        })
        .await
    }

    /// Starts domain `name`; a running domain is left alone. Returns whether it was started.
    pub async fn start_domain(&self, name: &str) -> Result<bool> {
        let n = name.to_owned();
        self.call(&format!("start domain {name}"), move |c| {
            let d = c.lookup_domain_by_name(&n)?;
            if d.is_active()? {
                return Ok(false);
            }
            match d.create() {
                Ok(()) => Ok(true),
                Err(e) if is(&e, ErrorNumber::OperationInvalid) && d.is_active()? => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Asks the guest to power off (ACPI). A domain that is not running is left alone.
    pub async fn shutdown_domain(&self, name: &str) -> Result<()> {
        let n = name.to_owned();
        self.call(&format!("shut down domain {name}"), move |c| {
            let d = c.lookup_domain_by_name(&n)?;
            match d.shutdown() {
                Err(e) if is(&e, ErrorNumber::OperationInvalid) && !d.is_active()? => Ok(()),
                r => r,
            }
        })
        .await
    }

    /// Powers domain `name` off at once; absent or inactive domains are left alone.
    pub async fn destroy_domain(&self, name: &str) -> Result<()> {
        let n = name.to_owned();
        self.call(&format!("destroy domain {name}"), move |c| {
            match c.lookup_domain_by_name(&n) {
                Ok(d) => match d.destroy() {
                    Err(e) if is(&e, ErrorNumber::OperationInvalid) && !d.is_active()? => Ok(()),
                    r => r,
                },
                Err(e) if is(&e, ErrorNumber::NoDomain) => Ok(()),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Reboots domain `name`: `hard` resets it, otherwise the guest is asked (ACPI).
    pub async fn reboot_domain(&self, name: &str, hard: bool) -> Result<()> {
        let n = name.to_owned();
        self.call(&format!("reboot domain {name}"), move |c| {
            let d = c.lookup_domain_by_name(&n)?;
            if hard { d.reset() } else { d.reboot(0) }
        })
        .await
    }

    /// Undefines domain `name` with its snapshots; absent domains are left alone.
    ///
    /// Internal snapshots live inside the node's disks, which may outlive the domain (destroy
    /// without `remove_overlays`), so they are deleted with their data first; only if libvirt
    /// cannot do that is their metadata dropped with the domain (and a warning logged).
    pub async fn undefine_domain(&self, name: &str) -> Result<()> {
        let n = name.to_owned();
        self.call(&format!("undefine domain {name}"), move |c| {
            match c.lookup_domain_by_name(&n) {
                Ok(d) => {
                    let roots = d
                        .list_all_snapshots(sys::VIR_DOMAIN_SNAPSHOT_LIST_ROOTS)
                        .unwrap_or_default();
                    for s in roots {
                        if let Err(e) = s.delete(sys::VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN) {
                            tracing::warn!(domain = %n, error = %e.message(), "cannot delete a snapshot's data; dropping its metadata with the domain");
                        }
                    }
                    d.undefine_flags(
                        sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                            | sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE,
                    )
                }
                Err(e) if is(&e, ErrorNumber::NoDomain) => Ok(()),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Every libvirt network: its facts, its owner tag and whether it is active.
    pub async fn networks(&self) -> Result<Vec<NetworkInfo>> {
        self.call("list networks", |c| {
            let mut out = Vec::new();
            for n in c.list_all_networks(0)? {
                let xml = n.xml_desc(0)?;
                if let Some(facts) = xml::parse_network(&xml) {
                    out.push(NetworkInfo {
                        facts,
                        owner: xml::parse_owner(&xml),
                        active: n.is_active()?,
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    /// The network called `name`, if it exists.
    pub async fn network(&self, name: &str) -> Result<Option<NetworkInfo>> {
        let n = name.to_owned();
        self.call("look up network", move |c| {
            match c.lookup_network_by_name(&n) {
                Ok(net) => {
                    let xml = net.xml_desc(0)?;
                    Ok(xml::parse_network(&xml).map(|facts| NetworkInfo {
                        facts,
                        owner: xml::parse_owner(&xml),
                        active: net.is_active().unwrap_or(false),
                    }))
                }
                Err(e) if is(&e, ErrorNumber::NoNetwork) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Defines a network from XML.
    pub async fn define_network(&self, xml: String) -> Result<()> {
        self.call("define network", move |c| {
            c.define_network_xml(&xml).map(drop)
        })
        .await
    }

    /// Starts network `name` if inactive and marks it autostart.
    pub async fn start_network(&self, name: &str) -> Result<()> {
        let n = name.to_owned();
        self.call(&format!("start network {name}"), move |c| {
            let net = c.lookup_network_by_name(&n)?;
            if !net.is_active()? {
                net.create()?;
            }
            let _ = net.set_autostart(true);
            Ok(())
        })
        .await
    }

    /// Stops and undefines network `name`; an absent network is left alone.
    pub async fn remove_network(&self, name: &str) -> Result<()> {
        let n = name.to_owned();
        self.call(&format!("remove network {name}"), move |c| {
            match c.lookup_network_by_name(&n) {
                Ok(net) => {
                    if net.is_active()? {
                        net.destroy()?;
                    }
                    net.undefine()
                }
                Err(e) if is(&e, ErrorNumber::NoNetwork) => Ok(()),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Names and owner tags of every domain.
    pub async fn domains(&self) -> Result<Vec<(String, Option<Owner>, DomainState)>> {
        self.call("list domains", |c| {
            let mut out = Vec::new();
            for d in c.list_all_domains(0)? {
                let owner = xml::parse_owner(&d.xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)?);
                out.push((d.name()?, owner, map_state(d.state()?.0)));
            }
            Ok(out)
        })
        .await
    }
}

/// The power state a revert leaves a domain in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevertTo {
    /// Running (a memory snapshot resumes; libvirt starts a stopped domain from it).
    Running,
    /// Paused at the snapshot point (a memory snapshot's CPUs do not run).
    Paused,
    /// The state the snapshot recorded (off for a disk-only snapshot).
    AsTaken,
}

impl Virt {
    /// Pauses domain `name` if it is running; returns whether it was paused by this call.
    pub async fn suspend_domain(&self, name: &str) -> Result<bool> {
        let n = name.to_owned();
        self.call(&format!("suspend domain {name}"), move |c| {
            let d = c.lookup_domain_by_name(&n)?;
            if map_state(d.state()?.0) != DomainState::Running {
                return Ok(false);
            }
            d.suspend().map(|()| true)
        })
        .await
    }

    /// Resumes domain `name` if it is paused.
    pub async fn resume_domain(&self, name: &str) -> Result<()> {
        let n = name.to_owned();
        self.call(&format!("resume domain {name}"), move |c| {
            let d = c.lookup_domain_by_name(&n)?;
            if map_state(d.state()?.0) != DomainState::Paused {
                return Ok(());
            }
            d.resume()
        })
        .await
    }

    /// Creates a snapshot of domain `name` from `<domainsnapshot>` XML (an internal one: memory
    /// and disks on an active domain, disks on a shut-off one).
    pub async fn create_snapshot(&self, name: &str, xml: String) -> Result<()> {
        let n = name.to_owned();
        self.call(&format!("create snapshot of domain {name}"), move |c| {
            c.lookup_domain_by_name(&n)?
                .create_snapshot_xml(&xml, 0)
                .map(drop)
        })
        .await
    }

    /// Snapshot `snapshot` of domain `name`, if both exist.
    pub async fn snapshot(&self, name: &str, snapshot: &str) -> Result<Option<SnapshotMeta>> {
        let (n, s) = (name.to_owned(), snapshot.to_owned());
        self.call(&format!("look up snapshot of domain {name}"), move |c| {
            let d = match c.lookup_domain_by_name(&n) {
                Ok(d) => d,
                Err(e) if is(&e, ErrorNumber::NoDomain) => return Ok(None),
                Err(e) => return Err(e),
            };
            match virt::domain::Domain::lookup_snapshot_by_name(&d, &s, 0) {
                Ok(snap) => Ok(snapshot::parse_snapshot_xml(&snap.xml_desc(0)?)),
                Err(e) if is(&e, ErrorNumber::NoDomainSnapshot) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Every snapshot of domain `name` (none when the domain does not exist).
    pub async fn snapshots(&self, name: &str) -> Result<Vec<SnapshotMeta>> {
        let n = name.to_owned();
        self.call(&format!("list snapshots of domain {name}"), move |c| {
            let d = match c.lookup_domain_by_name(&n) {
                Ok(d) => d,
                Err(e) if is(&e, ErrorNumber::NoDomain) => return Ok(Vec::new()),
                Err(e) => return Err(e),
            };
            let mut out = Vec::new();
            for s in d.list_all_snapshots(0)? {
                if let Some(m) = snapshot::parse_snapshot_xml(&s.xml_desc(0)?) {
                    out.push(m);
                }
            }
            Ok(out)
        })
        .await
    }

    /// Reverts domain `name` to `snapshot`, leaving it as `to` says. `force` lets libvirt
    /// replace a running domain whose configuration it cannot prove compatible.
    pub async fn revert_snapshot(
        &self,
        name: &str,
        snapshot: &str,
        to: RevertTo,
        force: bool,
    ) -> Result<()> {
        let (n, s) = (name.to_owned(), snapshot.to_owned());
        let mut flags = match to {
            RevertTo::Running => sys::VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING,
            RevertTo::Paused => sys::VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED,
            RevertTo::AsTaken => 0,
        };
        if force {
            flags |= sys::VIR_DOMAIN_SNAPSHOT_REVERT_FORCE;
        }
        self.call(
            &format!("revert domain {name} to snapshot {snapshot}"),
            move |c| {
                let d = c.lookup_domain_by_name(&n)?;
                virt::domain::Domain::lookup_snapshot_by_name(&d, &s, 0)?.revert(flags)
            },
        )
        .await
    }

    /// Deletes snapshot `snapshot` of domain `name` (data and metadata); returns whether it
    /// existed.
    pub async fn delete_snapshot(&self, name: &str, snapshot: &str) -> Result<bool> {
        let (n, s) = (name.to_owned(), snapshot.to_owned());
        self.call(
            &format!("delete snapshot {snapshot} of domain {name}"),
            move |c| {
                let d = match c.lookup_domain_by_name(&n) {
                    Ok(d) => d,
                    Err(e) if is(&e, ErrorNumber::NoDomain) => return Ok(false),
                    Err(e) => return Err(e),
                };
                match virt::domain::Domain::lookup_snapshot_by_name(&d, &s, 0) {
                    Ok(snap) => snap.delete(0).map(|()| true),
                    Err(e) if is(&e, ErrorNumber::NoDomainSnapshot) => Ok(false),
                    Err(e) => Err(e),
                }
            },
        )
        .await
    }
}

/// What we know of one libvirt network.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkInfo {
    /// Name, bridge, subnet.
    pub facts: ExistingNetwork,
    /// Our owner tag, if it carries one.
    pub owner: Option<Owner>,
    /// Whether it is running.
    pub active: bool,
}

fn map_state(s: virt::domain::DomainStateEnum) -> DomainState {
    use virt::domain::DomainState as S;
    match s {
        virt::enumutil::Enum::Known(S::Running | S::Blocked) => DomainState::Running,
        virt::enumutil::Enum::Known(S::Paused) => DomainState::Paused,
        virt::enumutil::Enum::Known(S::Shutdown) => DomainState::ShuttingDown,
        virt::enumutil::Enum::Known(S::Shutoff) => DomainState::ShutOff,
        virt::enumutil::Enum::Known(S::Crashed) => DomainState::Crashed,
        virt::enumutil::Enum::Known(S::PMSuspended) => DomainState::PmSuspended,
        _ => DomainState::Unknown,
    }
}
