//! The NodeActor: one per VM. It owns the node's domain state, its readiness probe and its SSH
//! session.
//!
//! State is published through a `watch` channel, so `cluster_status` reads it without a message
//! round trip and never waits on the network. libvirt lifecycle events (forwarded by the
//! ClusterActor) make the actor re-read the domain's state; a boot starts a readiness probe
//! task that climbs [`Readiness`] and reports back as messages. Each boot has a generation
//! number, so reports of a probe that belonged to an earlier boot are ignored.
//!
//! Long work (waiting for readiness, graceful shutdown) never runs inside `handle`: the reply
//! port moves into a task and the actor keeps answering.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::watch;
use vmcluster_engine::state::{DomainState, Readiness};

use crate::error::{EngineError, Result};
use crate::exec::ExecRequest;
use crate::host;
use crate::libvirt::{DomainEvent, Virt};
use crate::ssh::{SshError, SshSession, SshTarget, tcp_probe};
use vmcluster_engine::dmesg::{self, Collected, FilterLevel, Since};
use vmcluster_engine::view::ExecResult;
use vmcluster_journal::Journal;

/// What the rest of the server can see of a node at any instant.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSnapshot {
    /// Domain state as libvirt last reported it.
    pub domain_state: DomainState,
    /// Readiness reached since the last boot.
    pub phase: Readiness,
    /// Why the last readiness probe gave up.
    pub last_error: Option<String>,
    /// The node's SSH host key, once seen.
    pub host_key: Option<String>,
    /// Boot generation (increments on every boot and every stop).
    pub generation: u64,
}

/// Fixed facts a NodeActor is born with.
#[derive(Debug, Clone)]
pub struct NodeArgs {
    /// Node name.
    pub node: String,
    /// libvirt domain name.
    pub domain: String,
    /// How to reach it.
    pub ssh: SshTarget,
    /// Console log file.
    pub console_log: PathBuf,
    /// The connection.
    pub virt: Virt,
    /// Cluster name (for journal records).
    pub cluster: String,
    /// The journal, where the host key is pinned.
    pub journal: Journal,
}

/// Messages of the NodeActor.
#[derive(Debug)]
pub enum NodeMsg {
    /// Power the domain on (if off) and start the readiness probe with this budget.
    Start {
        /// Readiness budget.
        ready_timeout: Duration,
        /// Reply when the domain runs.
        reply: RpcReplyPort<Result<()>>,
    },
    /// Wait until the node is ready, fails, or `timeout` passes.
    WaitReady {
        /// Budget.
        timeout: Duration,
        /// Reply.
        reply: RpcReplyPort<Result<()>>,
    },
    /// Power off: gracefully within `graceful` (then forced), or at once when `None`.
    Stop {
        /// Graceful budget.
        graceful: Option<Duration>,
        /// Reply with whether the power-off had to be forced.
        reply: RpcReplyPort<Result<bool>>,
    },
    /// Reboot (`hard`: reset) and start a new readiness probe.
    Reboot {
        /// Reset instead of asking the guest.
        hard: bool,
        /// Readiness budget.
        ready_timeout: Duration,
        /// Reply when the reboot was requested.
        reply: RpcReplyPort<Result<()>>,
    },
    /// Run a command over the node's SSH session.
    Exec {
        /// What to run.
        request: ExecRequest,
        /// Reply.
        reply: RpcReplyPort<Result<ExecResult>>,
    },
    /// Re-read the domain state from libvirt.
    Refresh {
        /// Reply when done.
        reply: Option<RpcReplyPort<()>>,
    },
    /// A lifecycle event for this node's domain.
    Domain(DomainEvent),
    /// Read the kernel log and select lines (after `since`, or after this node's dmesg cursor).
    Dmesg {
        /// A marker written by `dmesg_mark`; `None` means "since the last collect".
        marker: Option<String>,
        /// Severity filter.
        filter: FilterLevel,
        /// Cap on returned lines.
        max_lines: usize,
        /// Reply.
        reply: RpcReplyPort<Result<Collected>>,
    },
    /// Moves the dmesg cursor of boot `generation` forward to `micros`.
    DmesgCursor {
        /// Boot generation the reading belongs to.
        generation: u64,
        /// Timestamp of the last line returned.
        micros: u64,
    },
    /// Forget the pinned host key (the node got a fresh disk, hence a fresh key).
    Unpin {
        /// Reply when the change is journaled.
        reply: RpcReplyPort<Result<()>>,
    },
    /// The domain's state was replaced behind the guest's back (a snapshot revert): re-read it
    /// from libvirt, drop the pooled SSH session and the dmesg cursor, and start a new boot
    /// generation with a fresh readiness probe when it runs. The host key pin stays (same disk).
    Reset {
        /// Readiness budget of the new probe.
        ready_timeout: Duration,
        /// Reply with the domain state read.
        reply: RpcReplyPort<Result<DomainState>>,
    },
    /// A report from the readiness probe of boot `generation`.
    Probe {
        /// Boot generation the probe belongs to.
        generation: u64,
        /// What it found.
        report: ProbeReport,
    },
}

/// What a readiness probe reports.
#[derive(Debug)]
pub enum ProbeReport {
    /// It reached a phase.
    Phase(Readiness),
    /// It holds an authenticated session, handed to the actor.
    Session(Arc<SshSession>),
    /// It gave up.
    Failed(String),
}

/// The NodeActor (stateless struct; state lives in [`NodeState`]).
#[derive(Debug)]
pub struct NodeActor;

/// The NodeActor's state.
#[derive(Debug)]
pub struct NodeState {
    args: NodeArgs,
    tx: watch::Sender<NodeSnapshot>,
    probe: Option<tokio::task::JoinHandle<()>>,
    session: Option<Arc<SshSession>>,
    ready_timeout: Duration,
    /// Timestamp (µs) of the last kernel-log line returned by a collect in this boot; a new
    /// boot starts the log (and the cursor) afresh.
    dmesg_cursor: Option<u64>,
    /// Bounds concurrent channels on the node's connection (OpenSSH allows 10 by default).
    channels: Arc<tokio::sync::Semaphore>,
}

impl NodeState {
    fn snap(&self) -> NodeSnapshot {
        self.tx.borrow().clone()
    }
}

/// Spawns a NodeActor linked to `supervisor`; returns it and a receiver of its snapshots.
pub async fn spawn(
    args: NodeArgs,
    supervisor: ractor::ActorCell,
    ready_timeout: Duration,
) -> Result<(ActorRef<NodeMsg>, watch::Receiver<NodeSnapshot>)> {
    let (tx, rx) = watch::channel(NodeSnapshot {
        domain_state: DomainState::Unknown,
        phase: Readiness::Down,
        last_error: None,
        host_key: None,
        generation: 0,
    });
    let (actor, _join) =
        Actor::spawn_linked(None, NodeActor, (args, tx, ready_timeout), supervisor)
            .await
            .map_err(|e| EngineError::Internal(format!("spawn node actor: {e}")))?;
    Ok((actor, rx))
}

impl Actor for NodeActor {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = (NodeArgs, watch::Sender<NodeSnapshot>, Duration);

    async fn pre_start(
        &self,
        me: ActorRef<NodeMsg>,
        (args, tx, ready_timeout): Self::Arguments,
    ) -> Result<NodeState, ActorProcessingErr> {
        let mut st = NodeState {
            args,
            tx,
            probe: None,
            session: None,
            ready_timeout,
            channels: Arc::new(tokio::sync::Semaphore::new(MAX_CHANNELS)),
            dmesg_cursor: None,
        };
        // libvirt is the truth for live state: read it before answering anything.
        self.on_refresh(&me, &mut st).await;
        Ok(st)
    }

    async fn post_stop(
        &self,
        _me: ActorRef<NodeMsg>,
        st: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(p) = st.probe.take() {
            p.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<NodeMsg>,
        msg: NodeMsg,
        st: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeMsg::Start {
                ready_timeout,
                reply,
            } => self.on_start(&me, st, ready_timeout, reply).await,
            NodeMsg::WaitReady { timeout, reply } => self.on_wait_ready(st, timeout, reply),
            NodeMsg::Stop { graceful, reply } => self.on_stop(st, graceful, reply).await,
            NodeMsg::Reboot {
                hard,
                ready_timeout,
                reply,
            } => self.on_reboot(&me, st, hard, ready_timeout, reply).await,
            NodeMsg::Exec { request, reply } => self.on_exec(&me, st, request, reply),
            NodeMsg::Dmesg {
                marker,
                filter,
                max_lines,
                reply,
            } => self.on_dmesg(&me, st, marker, filter, max_lines, reply),
            NodeMsg::Unpin { reply } => {
                let res = self.pin(st, None).await;
                let _ = reply.send(res);
            }
            NodeMsg::DmesgCursor { generation, micros } => {
                if generation == st.snap().generation {
                    st.dmesg_cursor = Some(micros);
                }
            }
            NodeMsg::Refresh { reply } => {
                self.on_refresh(&me, st).await;
                if let Some(r) = reply {
                    let _ = r.send(());
                }
            }
            NodeMsg::Domain(ev) => {
                if ev.is_undefined() {
                    self.set_state(&me, st, DomainState::Undefined).await;
                } else {
                    self.on_refresh(&me, st).await;
                }
            }
            NodeMsg::Probe { generation, report } => self.on_probe(st, generation, report).await,
            NodeMsg::Reset {
                ready_timeout,
                reply,
            } => {
                let res = self.on_reset(&me, st, ready_timeout).await;
                let _ = reply.send(res);
            }
        }
        Ok(())
    }
}

impl NodeActor {
    async fn on_refresh(&self, me: &ActorRef<NodeMsg>, st: &mut NodeState) {
        match st.args.virt.domain_state(&st.args.domain).await {
            Ok(s) => self.set_state(me, st, s).await,
            Err(e) => {
                tracing::warn!(domain = %st.args.domain, error = %e, "cannot read domain state")
            }
        }
    }

    /// Records a new domain state; a boot starts a probe, a stop ends one.
    async fn set_state(&self, me: &ActorRef<NodeMsg>, st: &mut NodeState, s: DomainState) {
        let before = st.snap();
        // The first reading after the actor starts is a discovery, not a change.
        if before.domain_state != s && before.domain_state != DomainState::Unknown {
            self.note(st, state_word(s), None).await;
        }
        let running = s == DomainState::Running;
        if !s.is_active() && before.phase != Readiness::Down {
            self.end_boot(st);
        }
        st.tx.send_modify(|snap| {
            snap.domain_state = s;
            if !s.is_active() {
                snap.phase = Readiness::Down;
            }
        });
        if running && st.snap().phase == Readiness::Down && st.probe.is_none() {
            let budget = st.ready_timeout;
            self.begin_boot(me, st, budget);
        }
        if before.domain_state != s {
            tracing::info!(domain = %st.args.domain, from = ?before.domain_state, to = ?s, "domain state changed");
        }
    }

    async fn on_reset(
        &self,
        me: &ActorRef<NodeMsg>,
        st: &mut NodeState,
        ready_timeout: Duration,
    ) -> Result<DomainState> {
        let s = st.args.virt.domain_state(&st.args.domain).await?;
        st.ready_timeout = ready_timeout;
        st.tx.send_modify(|snap| snap.domain_state = s);
        if s == DomainState::Running {
            self.begin_boot(me, st, ready_timeout);
        } else {
            self.end_boot(st);
        }
        tracing::info!(node = %st.args.node, state = ?s, "node reset (snapshot revert)");
        Ok(s)
    }

    fn end_boot(&self, st: &mut NodeState) {
        if let Some(p) = st.probe.take() {
            p.abort();
        }
        st.session = None;
        st.dmesg_cursor = None;
        st.tx.send_modify(|snap| {
            snap.phase = Readiness::Down;
            snap.generation += 1;
        });
    }

    /// Starts a new boot generation and its readiness probe.
    fn begin_boot(&self, me: &ActorRef<NodeMsg>, st: &mut NodeState, budget: Duration) {
        if let Some(p) = st.probe.take() {
            p.abort();
        }
        st.session = None;
        st.dmesg_cursor = None;
        st.tx.send_modify(|snap| {
            snap.generation += 1;
            snap.phase = Readiness::DomainRunning;
            snap.last_error = None;
        });
        let generation = st.snap().generation;
        let me = me.clone();
        let target = st.args.ssh.clone();
        st.probe = Some(tokio::spawn(readiness_probe(
            me,
            generation,
            target,
            Instant::now() + budget,
        )));
    }

    async fn on_start(
        &self,
        me: &ActorRef<NodeMsg>,
        st: &mut NodeState,
        ready_timeout: Duration,
        reply: RpcReplyPort<Result<()>>,
    ) {
        st.ready_timeout = ready_timeout;
        match st.args.virt.start_domain(&st.args.domain).await {
            Ok(started) => {
                if started || st.snap().phase == Readiness::Down {
                    self.begin_boot(me, st, ready_timeout);
                } else if st.snap().last_error.is_some() {
                    // Running but a previous probe gave up: try again with the new budget.
                    self.begin_boot(me, st, ready_timeout);
                }
                if st.snap().domain_state != DomainState::Running {
                    self.note(st, state_word(DomainState::Running), None).await;
                }
                st.tx.send_modify(|s| s.domain_state = DomainState::Running);
                let _ = reply.send(Ok(()));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    fn on_wait_ready(&self, st: &NodeState, timeout: Duration, reply: RpcReplyPort<Result<()>>) {
        let mut rx = st.tx.subscribe();
        let node = st.args.node.clone();
        let console = st.args.console_log.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let generation = rx.borrow().generation;
            // The probe gives up at the same deadline; a little grace lets its verdict (with
            // the reason) arrive before ours.
            let outcome = tokio::time::timeout(timeout + Duration::from_secs(1), async {
                loop {
                    {
                        let s = rx.borrow_and_update();
                        if s.phase == Readiness::Ready {
                            return Ok(());
                        }
                        if let Some(err) = &s.last_error {
                            return Err((s.phase, Some(err.clone())));
                        }
                        if !s.domain_state.is_active() && s.generation != generation {
                            return Err((s.phase, Some(format!("domain is {:?}", s.domain_state))));
                        }
                    }
                    if rx.changed().await.is_err() {
                        return Err((Readiness::Down, Some("node actor stopped".into())));
                    }
                }
            })
            .await;
            let res = match outcome {
                Ok(Ok(())) => Ok(()),
                Ok(Err((phase, detail))) => Err((phase, detail)),
                Err(_) => Err((rx.borrow().phase, rx.borrow().last_error.clone())),
            };
            let res = res.map_err(|(phase, detail)| match detail {
                // A changed host key is an SSH verdict, not a slow boot.
                Some(d) if d.starts_with("host key changed") => {
                    EngineError::Ssh { node, message: d }
                }
                detail => EngineError::NotReady {
                    node,
                    phase,
                    waited_s: started.elapsed().as_secs(),
                    detail,
                    console_tail: Some(host::console_tail(&console, 20)).filter(|t| !t.is_empty()),
                },
            });
            let _ = reply.send(res);
        });
    }

    async fn on_stop(
        &self,
        st: &mut NodeState,
        graceful: Option<Duration>,
        reply: RpcReplyPort<Result<bool>>,
    ) {
        let virt = st.args.virt.clone();
        let domain = st.args.domain.clone();
        let mut rx = st.tx.subscribe();
        let Some(budget) = graceful else {
            let _ = reply.send(virt.destroy_domain(&domain).await.map(|()| true));
            return;
        };
        if !st.snap().domain_state.is_active() {
            let _ = reply.send(Ok(false));
            return;
        }
        if let Err(e) = virt.shutdown_domain(&domain).await {
            let _ = reply.send(Err(e));
            return;
        }
        tokio::spawn(async move {
            let deadline = Instant::now() + budget;
            loop {
                if !rx.borrow_and_update().domain_state.is_active() {
                    let _ = reply.send(Ok(false));
                    return;
                }
                // Lifecycle events normally wake us; the periodic re-read covers a lost event.
                let tick = tokio::time::sleep(Duration::from_secs(1));
                tokio::select! {
                    _ = rx.changed() => {}
                    _ = tick => {
                        if matches!(virt.domain_state(&domain).await, Ok(s) if !s.is_active()) {
                            let _ = reply.send(Ok(false));
                            return;
                        }
                    }
                }
                if Instant::now() >= deadline {
                    tracing::warn!(%domain, "graceful shutdown timed out; forcing power-off");
                    let _ = reply.send(virt.destroy_domain(&domain).await.map(|()| true));
                    return;
                }
            }
        });
    }

    async fn on_reboot(
        &self,
        me: &ActorRef<NodeMsg>,
        st: &mut NodeState,
        hard: bool,
        ready_timeout: Duration,
        reply: RpcReplyPort<Result<()>>,
    ) {
        if st.snap().domain_state != DomainState::Running {
            let _ = reply.send(Err(EngineError::FailedPrecondition(format!(
                "Node {:?} is not running (domain is {:?})",
                st.args.node,
                st.snap().domain_state
            ))));
            return;
        }
        match st.args.virt.reboot_domain(&st.args.domain, hard).await {
            Ok(()) => {
                st.ready_timeout = ready_timeout;
                self.begin_boot(me, st, ready_timeout);
                let _ = reply.send(Ok(()));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    fn on_exec(
        &self,
        me: &ActorRef<NodeMsg>,
        st: &NodeState,
        request: ExecRequest,
        reply: RpcReplyPort<Result<ExecResult>>,
    ) {
        let node = st.args.node.clone();
        let session = st.session.clone().filter(|s| !s.is_closed());
        let target = st.args.ssh.clone();
        let snap = st.snap();
        let channels = st.channels.clone();
        let me = me.clone();
        tokio::spawn(async move {
            if snap.domain_state != DomainState::Running {
                let _ = reply.send(Err(EngineError::Ssh {
                    node,
                    message: format!("the node is not running (domain {:?})", snap.domain_state),
                }));
                return;
            }
            // More commands than the server allows channels on one connection wait here.
            let Ok(_permit) = channels.acquire_owned().await else {
                return;
            };
            let session = match session {
                Some(s) => s,
                None => match SshSession::connect(&target).await {
                    Ok(s) => {
                        let s = Arc::new(s);
                        // Hand the new connection to the actor so later commands reuse it.
                        let _ = me.cast(NodeMsg::Probe {
                            generation: snap.generation,
                            report: ProbeReport::Session(s.clone()),
                        });
                        s
                    }
                    Err(e) => {
                        let _ = reply.send(Err(EngineError::Ssh {
                            node,
                            message: e.to_string(),
                        }));
                        return;
                    }
                },
            };
            let _ = reply.send(crate::exec::run(&session, &node, &request).await);
        });
    }

    fn on_dmesg(
        &self,
        me: &ActorRef<NodeMsg>,
        st: &NodeState,
        marker: Option<String>,
        filter: FilterLevel,
        max_lines: usize,
        reply: RpcReplyPort<Result<Collected>>,
    ) {
        let generation = st.snap().generation;
        let cursor = st.dmesg_cursor;
        let node = st.args.node.clone();
        let me2 = me.clone();
        // The raw log comes through the normal exec path (pooled session, channel limit).
        let (tx, rx) = tokio::sync::oneshot::channel();
        let request = ExecRequest {
            output_cap: 16 * 1024 * 1024,
            ..ExecRequest::new("dmesg -r", Duration::from_secs(30))
        };
        self.on_exec(me, st, request, RpcReplyPort::from(tx));
        tokio::spawn(async move {
            let res = async {
                let out = rx
                    .await
                    .map_err(|_| EngineError::Internal("exec reply dropped".into()))??;
                if out.exit_code != Some(0) {
                    return Err(EngineError::Ssh {
                        node: node.clone(),
                        message: format!(
                            "`dmesg -r` exited with {:?}: {}",
                            out.exit_code,
                            out.stderr.trim()
                        ),
                    });
                }
                let lines = dmesg::parse(&out.stdout);
                let since = match (&marker, cursor) {
                    (Some(m), _) => Since::Marker(m),
                    (None, Some(c)) => Since::After(c),
                    (None, None) => Since::Start,
                };
                dmesg::select(&lines, since, filter, max_lines).map_err(|e| EngineError::NotFound {
                    kind: "marker",
                    name: format!("{} on node {node}", e.marker),
                })
            }
            .await;
            if let Ok(c) = &res
                && let Some(micros) = c.last_micros
            {
                let _ = me2.cast(NodeMsg::DmesgCursor { generation, micros });
            }
            let _ = reply.send(res);
        });
    }

    /// Journals a state change of this node for the event stream (`node.state`), before the
    /// change is published: whoever waits on the change then finds it already journaled.
    async fn note(&self, st: &NodeState, kind: String, detail: Option<String>) {
        let body = vmcluster_journal::BodyV1::NodeEvent {
            cluster: st.args.cluster.clone(),
            node: st.args.node.clone(),
            kind,
            detail,
        };
        if let Err(e) = st.args.journal.append(body).await {
            tracing::warn!(node = %st.args.node, error = %e, "cannot journal a node state change");
        }
    }

    /// Records `key` as the node's pinned host key (`None` forgets it), journal first.
    async fn pin(&self, st: &mut NodeState, key: Option<String>) -> Result<()> {
        st.args
            .journal
            .append(vmcluster_journal::BodyV1::HostKeyPinned {
                cluster: st.args.cluster.clone(),
                node: st.args.node.clone(),
                key_openssh: key.clone().unwrap_or_default(),
            })
            .await?;
        if key.is_none() {
            st.session = None;
        }
        st.args.ssh.pinned = key;
        Ok(())
    }

    async fn on_probe(&self, st: &mut NodeState, generation: u64, report: ProbeReport) {
        if generation != st.snap().generation {
            return; // from an earlier boot
        }
        match report {
            ProbeReport::Phase(p) => {
                let from = st.snap().phase;
                match from.transition(p) {
                    Ok(to) => {
                        if to == Readiness::Ready && from != Readiness::Ready {
                            self.note(st, "ready".into(), None).await;
                        }
                        st.tx.send_modify(|s| s.phase = to);
                        tracing::info!(node = %st.args.node, ?from, ?to, "readiness");
                    }
                    Err(e) => {
                        tracing::error!(node = %st.args.node, error = %e, "probe reported an illegal phase")
                    }
                }
            }
            ProbeReport::Session(s) => {
                let key = s.host_key();
                if st.args.ssh.pinned.is_none()
                    && let Some(k) = &key
                {
                    tracing::info!(node = %st.args.node, key = %k, "pinning host key");
                    if let Err(e) = self.pin(st, Some(k.clone())).await {
                        tracing::error!(node = %st.args.node, error = %e, "cannot pin the host key");
                    }
                }
                st.session = Some(s);
                st.tx.send_modify(|snap| snap.host_key = key);
            }
            ProbeReport::Failed(why) => {
                st.probe = None;
                tracing::warn!(node = %st.args.node, error = %why, "readiness probe gave up");
                self.note(st, "not ready".into(), Some(why.clone())).await;
                st.tx.send_modify(|s| s.last_error = Some(why));
            }
        }
    }
}

/// Concurrent channels per node connection; further commands queue.
const MAX_CHANNELS: usize = 8;

/// Shell snippet that prints `done` once cloud-init finished (or when the guest has none).
const CLOUD_INIT_CHECK: &str = "if [ -e /var/lib/cloud/instance/boot-finished ]; then echo done; \
elif command -v cloud-init >/dev/null 2>&1; then echo wait; else echo done; fi";

/// Climbs the readiness ladder until `deadline`, reporting each rung to the actor.
async fn readiness_probe(
    me: ActorRef<NodeMsg>,
    generation: u64,
    target: SshTarget,
    deadline: Instant,
) {
    let report = |r: ProbeReport| {
        let _ = me.cast(NodeMsg::Probe {
            generation,
            report: r,
        });
    };
    let mut last_err: String;
    // Port.
    let left = || deadline.saturating_duration_since(Instant::now());
    loop {
        match tokio::time::timeout(left(), tcp_probe(&target)).await {
            Ok(Ok(())) => break,
            Ok(Err(e @ SshError::NoBridge(_))) => {
                return report(ProbeReport::Failed(e.to_string()));
            }
            Ok(Err(e)) => last_err = e.to_string(),
            Err(_) => last_err = "connect timed out".into(),
        }
        if Instant::now() >= deadline {
            return report(ProbeReport::Failed(format!(
                "SSH port never opened: {last_err}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    report(ProbeReport::Phase(Readiness::PortOpen));
    // Authenticate and run a command.
    let session = loop {
        match tokio::time::timeout(left(), SshSession::connect(&target)).await {
            Ok(Ok(s)) => match s.exec("true", left().min(Duration::from_secs(15))).await {
                Ok(o) if o.exit_code == Some(0) => break Arc::new(s),
                Ok(o) => last_err = format!("`true` exited with {:?}", o.exit_code),
                Err(e) => last_err = e.to_string(),
            },
            Ok(Err(e @ SshError::HostKeyChanged { .. })) => {
                return report(ProbeReport::Failed(e.to_string()));
            }
            Ok(Err(e)) => last_err = e.to_string(),
            Err(_) => last_err = "SSH handshake timed out".into(),
        }
        if Instant::now() >= deadline {
            return report(ProbeReport::Failed(format!(
                "SSH never authenticated: {last_err}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    report(ProbeReport::Phase(Readiness::SshAuthenticated));
    report(ProbeReport::Session(session.clone()));
    // cloud-init.
    loop {
        match session
            .exec(CLOUD_INIT_CHECK, left().min(Duration::from_secs(15)))
            .await
        {
            Ok(o) if String::from_utf8_lossy(&o.stdout).trim() == "done" => break,
            Ok(_) => last_err = "cloud-init has not finished".into(),
            Err(e) => last_err = e.to_string(),
        }
        if Instant::now() >= deadline {
            return report(ProbeReport::Failed(last_err));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    report(ProbeReport::Phase(Readiness::Ready));
}

/// A domain state's name as the tools report it (`running`, `shut off`, ...).
fn state_word(s: DomainState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{s:?}"))
}
