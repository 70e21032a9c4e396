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
//!
//! ## The SSH session
//!
//! The node's one SSH connection is published on a `watch` channel ([`Link`]); commands take
//! it from there, so they never wait on the actor's mailbox. A watcher task per session reports
//! when it drops. While the domain runs, a dropped session is re-established by a reconnect
//! task with jittered exponential backoff ([`RECONNECT_FIRST`] doubling to [`RECONNECT_MAX`]),
//! journaled as `ssh_lost` / `ssh_restored` node events and counted in the status. A command
//! that finds no session waits for the next successful attempt, within its own timeout; a
//! reconnect that cannot succeed (a changed host key, a missing bridge) fails it at once.
//! A boot (start, crash, reboot) starts afresh: its readiness probe makes the session.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::{OwnedSemaphorePermit, watch};
use vmcluster_engine::state::{DomainState, Readiness, SshSession as SshState};

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
    /// The pooled SSH session.
    pub ssh: SshState,
    /// Times the session was re-established after dropping, in this boot.
    pub ssh_reconnects: u64,
}

/// The node's SSH session as commands see it.
#[derive(Debug, Clone)]
pub enum Link {
    /// An authenticated session (with its serial number, to report its loss).
    Up(Arc<SshSession>, u64),
    /// None right now. `error` is why the last attempt failed; `fatal` when no attempt can
    /// succeed until something changes (a changed host key, a missing bridge).
    Down {
        /// The last attempt's error.
        error: Option<String>,
        /// Whether retrying is pointless.
        fatal: bool,
    },
}

/// A session lent to a command, with one of the connection's channel slots.
#[derive(Debug)]
pub struct Lease {
    /// The session.
    pub session: Arc<SshSession>,
    /// The channel slot, held until the lease is dropped.
    _permit: OwnedSemaphorePermit,
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
    /// Lend the node's SSH session (with a channel slot), waiting up to `wait` for one.
    Session {
        /// Budget.
        wait: Duration,
        /// Reply.
        reply: RpcReplyPort<Result<Lease>>,
    },
    /// Something happened to the SSH session of boot `generation`.
    Link {
        /// Boot generation.
        generation: u64,
        /// What.
        event: LinkEvent,
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

/// What happened to a node's SSH session.
#[derive(Debug)]
pub enum LinkEvent {
    /// The session with this serial dropped.
    Lost {
        /// Its serial.
        serial: u64,
    },
    /// The reconnect task made a new session.
    Restored {
        /// The session.
        session: Arc<SshSession>,
        /// Attempts it took.
        attempts: u32,
    },
    /// A reconnect attempt failed.
    AttemptFailed {
        /// Why.
        error: String,
        /// Whether the reconnect task gave up.
        fatal: bool,
    },
}

/// What a readiness probe reports.
#[derive(Debug)]
pub enum ProbeReport {
    /// It reached a phase.
    Phase(Readiness),
    /// It holds an authenticated session, handed to the actor.
    Session(Arc<SshSession>),
    /// It gave up; `fatal` when no later attempt can succeed until something changes (a
    /// changed host key, a missing bridge).
    Failed {
        /// Why.
        why: String,
        /// Whether retrying is pointless.
        fatal: bool,
    },
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
    /// The session, for commands.
    link: Arc<watch::Sender<Link>>,
    /// Serial of the last session installed.
    serial: u64,
    /// Whether the session dropped since it was last (re)made in this boot.
    lost: bool,
    /// The reconnect task, while one runs.
    reconnect: Option<tokio::task::JoinHandle<()>>,
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

    fn probing(&self) -> bool {
        self.probe.as_ref().is_some_and(|p| !p.is_finished())
    }

    fn reconnecting(&self) -> bool {
        self.reconnect.as_ref().is_some_and(|p| !p.is_finished())
    }

    fn session_up(&self) -> bool {
        matches!(&*self.link.borrow(), Link::Up(s, _) if !s.is_closed())
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
        ssh: SshState::None,
        ssh_reconnects: 0,
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
            link: Arc::new(watch::Sender::new(Link::Down {
                error: None,
                fatal: false,
            })),
            serial: 0,
            lost: false,
            reconnect: None,
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
        if let Some(r) = st.reconnect.take() {
            r.abort();
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
            NodeMsg::Session { wait, reply } => self.on_session(&me, st, wait, reply),
            NodeMsg::Link { generation, event } => self.on_link(&me, st, generation, event).await,
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
            NodeMsg::Probe { generation, report } => {
                self.on_probe(&me, st, generation, report).await
            }
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
        self.drop_session(st);
        st.dmesg_cursor = None;
        st.tx.send_modify(|snap| {
            snap.phase = Readiness::Down;
            snap.generation += 1;
            snap.ssh = SshState::None;
        });
    }

    /// Forgets the session and stops whoever was making one.
    fn drop_session(&self, st: &mut NodeState) {
        if let Some(p) = st.probe.take() {
            p.abort();
        }
        if let Some(r) = st.reconnect.take() {
            r.abort();
        }
        st.lost = false;
        st.link.send_replace(Link::Down {
            error: None,
            fatal: false,
        });
    }

    /// Starts a new boot generation and its readiness probe.
    fn begin_boot(&self, me: &ActorRef<NodeMsg>, st: &mut NodeState, budget: Duration) {
        self.drop_session(st);
        st.dmesg_cursor = None;
        st.tx.send_modify(|snap| {
            snap.generation += 1;
            snap.phase = Readiness::DomainRunning;
            snap.last_error = None;
            snap.ssh = SshState::Connecting;
            snap.ssh_reconnects = 0;
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
        st: &mut NodeState,
        request: ExecRequest,
        reply: RpcReplyPort<Result<ExecResult>>,
    ) {
        let node = st.args.node.clone();
        let Some(session) = self.session_for(me, st, &node, request.timeout) else {
            let _ = reply.send(Err(not_running(&node, st.snap().domain_state)));
            return;
        };
        let generation = st.snap().generation;
        let me = me.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + request.timeout;
            let res = async {
                let mut waiter = session;
                loop {
                    let lease = waiter.lease(deadline).await?;
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match crate::exec::run(&lease.session, &request, left).await {
                        // The connection died before the command started: run it on the next.
                        Err(SshError::NotStarted) if lease.session.is_closed() => {
                            waiter.report_lost(&me, generation, &lease);
                        }
                        Err(e) => {
                            return Err(EngineError::Ssh {
                                node: node.clone(),
                                message: e.to_string(),
                            });
                        }
                        Ok(ran) => return Ok(crate::exec::finish(&node, &request, ran).await),
                    }
                }
            }
            .await;
            let _ = reply.send(res);
        });
    }

    fn on_session(
        &self,
        me: &ActorRef<NodeMsg>,
        st: &mut NodeState,
        wait: Duration,
        reply: RpcReplyPort<Result<Lease>>,
    ) {
        let node = st.args.node.clone();
        let Some(mut waiter) = self.session_for(me, st, &node, wait) else {
            let _ = reply.send(Err(not_running(&node, st.snap().domain_state)));
            return;
        };
        tokio::spawn(async move {
            let _ = reply.send(waiter.lease(tokio::time::Instant::now() + wait).await);
        });
    }

    /// A waiter for the node's session; starts a reconnect when nobody is making one. `None`
    /// when the domain is not running.
    fn session_for(
        &self,
        me: &ActorRef<NodeMsg>,
        st: &mut NodeState,
        node: &str,
        wait: Duration,
    ) -> Option<SessionWaiter> {
        if st.snap().domain_state != DomainState::Running {
            return None;
        }
        if !st.session_up() && !st.probing() && !st.reconnecting() {
            self.start_reconnect(me, st);
        }
        Some(SessionWaiter {
            node: node.to_owned(),
            link: st.link.subscribe(),
            channels: st.channels.clone(),
            wait,
        })
    }

    /// Makes `s` the node's session: pins its host key on first contact, publishes it, and
    /// watches for its end.
    async fn install(&self, me: &ActorRef<NodeMsg>, st: &mut NodeState, s: Arc<SshSession>) {
        let key = s.host_key();
        if st.args.ssh.pinned.is_none()
            && let Some(k) = &key
        {
            tracing::info!(node = %st.args.node, key = %k, "pinning host key");
            if let Err(e) = self.pin(st, Some(k.clone())).await {
                tracing::error!(node = %st.args.node, error = %e, "cannot pin the host key");
            }
        }
        st.serial += 1;
        let serial = st.serial;
        let generation = st.snap().generation;
        let mut gone = s.gone_signal();
        st.link.send_replace(Link::Up(s, serial));
        st.tx.send_modify(|snap| {
            snap.host_key = key;
            snap.ssh = SshState::Connected;
        });
        let me = me.clone();
        tokio::spawn(async move {
            // Also ends when the session is dropped (its sender goes away).
            let _ = gone.wait_for(|g| *g).await;
            let _ = me.cast(NodeMsg::Link {
                generation,
                event: LinkEvent::Lost { serial },
            });
        });
    }

    fn start_reconnect(&self, me: &ActorRef<NodeMsg>, st: &mut NodeState) {
        if st.reconnecting() {
            return;
        }
        st.tx.send_modify(|snap| snap.ssh = SshState::Connecting);
        st.reconnect = Some(tokio::spawn(reconnect(
            me.clone(),
            st.snap().generation,
            st.args.ssh.clone(),
        )));
    }

    async fn on_link(
        &self,
        me: &ActorRef<NodeMsg>,
        st: &mut NodeState,
        generation: u64,
        event: LinkEvent,
    ) {
        if generation != st.snap().generation {
            return; // about an earlier boot
        }
        let node = st.args.node.clone();
        match event {
            LinkEvent::Lost { serial } => {
                if serial != st.serial || !matches!(&*st.link.borrow(), Link::Up(..)) {
                    return; // an older session, or already handled
                }
                tracing::warn!(%node, "SSH session lost");
                st.lost = true;
                st.link.send_replace(Link::Down {
                    error: Some("the SSH connection was lost".into()),
                    fatal: false,
                });
                self.event(st, "ssh_lost", None).await;
                if st.snap().domain_state != DomainState::Running {
                    st.tx.send_modify(|snap| snap.ssh = SshState::None);
                } else if st.probing() {
                    // The boot's probe makes the next one.
                    st.tx.send_modify(|snap| snap.ssh = SshState::Connecting);
                } else {
                    self.start_reconnect(me, st);
                }
            }
            LinkEvent::Restored { session, attempts } => {
                st.reconnect = None;
                if st.snap().domain_state != DomainState::Running {
                    return;
                }
                let was_lost = std::mem::replace(&mut st.lost, false);
                self.install(me, st, session).await;
                if was_lost {
                    st.tx.send_modify(|snap| snap.ssh_reconnects += 1);
                    tracing::info!(%node, attempts, "SSH session re-established");
                    self.event(
                        st,
                        "ssh_restored",
                        Some(format!("after {attempts} attempt(s)")),
                    )
                    .await;
                }
            }
            LinkEvent::AttemptFailed { error, fatal } => {
                if fatal {
                    st.reconnect = None;
                    tracing::warn!(%node, %error, "giving up reconnecting");
                    st.tx.send_modify(|snap| snap.ssh = SshState::None);
                }
                if !st.session_up() {
                    st.link.send_replace(Link::Down {
                        error: Some(error),
                        fatal,
                    });
                }
            }
        }
    }

    /// Journals a node event (best effort: the audit trail, not an intent).
    async fn event(&self, st: &NodeState, kind: &str, detail: Option<String>) {
        let body = vmcluster_journal::BodyV1::NodeEvent {
            cluster: st.args.cluster.clone(),
            node: st.args.node.clone(),
            kind: kind.to_owned(),
            detail,
        };
        if let Err(e) = st.args.journal.append(body).await {
            tracing::warn!(node = %st.args.node, error = %e, "cannot journal a node event");
        }
    }

    fn on_dmesg(
        &self,
        me: &ActorRef<NodeMsg>,
        st: &mut NodeState,
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
            st.link.send_replace(Link::Down {
                error: None,
                fatal: false,
            });
        }
        st.args.ssh.pinned = key;
        Ok(())
    }

    async fn on_probe(
        &self,
        me: &ActorRef<NodeMsg>,
        st: &mut NodeState,
        generation: u64,
        report: ProbeReport,
    ) {
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
                st.lost = false;
                self.install(me, st, s).await;
            }
            ProbeReport::Failed { why, fatal } => {
                st.probe = None;
                tracing::warn!(node = %st.args.node, error = %why, "readiness probe gave up");
                self.note(st, "not ready".into(), Some(why.clone())).await;
                if !st.session_up() {
                    st.link.send_replace(Link::Down {
                        error: Some(why.clone()),
                        fatal,
                    });
                    st.tx.send_modify(|s| s.ssh = SshState::None);
                }
                st.tx.send_modify(|s| s.last_error = Some(why));
            }
        }
    }
}

/// Concurrent channels per node connection; further commands queue.
const MAX_CHANNELS: usize = 8;

/// First pause between reconnect attempts.
pub const RECONNECT_FIRST: Duration = Duration::from_millis(200);
/// Longest pause between reconnect attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);

fn not_running(node: &str, state: DomainState) -> EngineError {
    EngineError::Ssh {
        node: node.to_owned(),
        message: format!("the node is not running (domain {state:?})"),
    }
}

/// Waits for the node's session on behalf of one command.
#[derive(Debug)]
struct SessionWaiter {
    node: String,
    link: watch::Receiver<Link>,
    channels: Arc<tokio::sync::Semaphore>,
    /// The budget the caller gave (for messages).
    wait: Duration,
}

impl SessionWaiter {
    /// A live session and a channel slot, by `deadline`.
    async fn lease(&mut self, deadline: tokio::time::Instant) -> Result<Lease> {
        let fail = |message: String| EngineError::Ssh {
            node: self.node.clone(),
            message,
        };
        // More commands than the server allows channels on one connection wait here.
        let permit =
            match tokio::time::timeout_at(deadline, self.channels.clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                Ok(Err(_)) => return Err(fail("the node actor stopped".into())),
                Err(_) => {
                    return Err(fail(format!(
                        "no free channel on the node's connection within {:?}",
                        self.wait
                    )));
                }
            };
        loop {
            let last_error = match &*self.link.borrow_and_update() {
                Link::Up(s, _) if !s.is_closed() => {
                    return Ok(Lease {
                        session: s.clone(),
                        _permit: permit,
                    });
                }
                Link::Up(..) => Some("the SSH connection was lost".to_owned()),
                Link::Down { error, fatal: true } => {
                    return Err(fail(error.clone().unwrap_or_default()));
                }
                Link::Down { error, .. } => error.clone(),
            };
            match tokio::time::timeout_at(deadline, self.link.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(fail("the node actor stopped".into())),
                Err(_) => {
                    return Err(fail(format!(
                        "no SSH session within {:?} (reconnecting{})",
                        self.wait,
                        last_error
                            .map(|e| format!("; last error: {e}"))
                            .unwrap_or_default()
                    )));
                }
            }
        }
    }

    /// Tells the actor that the leased session is dead (it may not have noticed yet).
    fn report_lost(&self, me: &ActorRef<NodeMsg>, generation: u64, lease: &Lease) {
        if let Link::Up(s, serial) = &*self.link.borrow()
            && Arc::ptr_eq(s, &lease.session)
        {
            let _ = me.cast(NodeMsg::Link {
                generation,
                event: LinkEvent::Lost { serial: *serial },
            });
        }
    }
}

/// Connects, authenticates and runs a first command (which also finds out the login shell).
async fn open_session(target: &SshTarget, budget: Duration) -> Result<Arc<SshSession>, SshError> {
    let s = SshSession::connect(target).await?;
    s.detect_shell(budget.min(Duration::from_secs(15))).await?;
    Ok(Arc::new(s))
}

/// Whether no reconnect attempt can succeed until something changes on the host or the node.
fn fatal(e: &SshError) -> bool {
    matches!(e, SshError::HostKeyChanged { .. } | SshError::NoBridge(_))
}

/// The pause before reconnect attempt `n + 1`: `RECONNECT_FIRST` doubling to `RECONNECT_MAX`,
/// each drawn uniformly from its upper half (so nodes that dropped together spread out).
pub fn backoff(n: u32, random: u64) -> Duration {
    let full = RECONNECT_FIRST
        .saturating_mul(1 << n.min(16))
        .min(RECONNECT_MAX);
    let half = full / 2;
    half + Duration::from_nanos(random % (half.as_nanos() as u64 + 1))
}

/// Re-establishes the session of boot `generation` with backoff, until it succeeds or cannot.
async fn reconnect(me: ActorRef<NodeMsg>, generation: u64, target: SshTarget) {
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let event = match open_session(&target, Duration::from_secs(15)).await {
            Ok(session) => {
                let _ = me.cast(NodeMsg::Link {
                    generation,
                    event: LinkEvent::Restored {
                        session,
                        attempts: attempt,
                    },
                });
                return;
            }
            Err(e) => LinkEvent::AttemptFailed {
                error: e.to_string(),
                fatal: fatal(&e),
            },
        };
        let stop = matches!(event, LinkEvent::AttemptFailed { fatal: true, .. });
        tracing::debug!(attempt, ?event, "reconnect attempt failed");
        if me.cast(NodeMsg::Link { generation, event }).is_err() || stop {
            return;
        }
        let random = uuid::Uuid::new_v4().as_u64_pair().0;
        tokio::time::sleep(backoff(attempt - 1, random)).await;
    }
}

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
    let mut last_err = String::new();
    // Port.
    let left = || deadline.saturating_duration_since(Instant::now());
    loop {
        match tokio::time::timeout(left(), tcp_probe(&target)).await {
            Ok(Ok(())) => break,
            Ok(Err(e @ SshError::NoBridge(_))) => {
                return report(ProbeReport::Failed {
                    why: e.to_string(),
                    fatal: true,
                });
            }
            Ok(Err(e)) => last_err = e.to_string(),
            Err(_) => last_err = "connect timed out".into(),
        }
        if Instant::now() >= deadline {
            return report(ProbeReport::Failed {
                why: format!("SSH port never opened: {last_err}"),
                fatal: false,
            });
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    report(ProbeReport::Phase(Readiness::PortOpen));
    // Authenticate and run a command.
    let mut session = loop {
        match tokio::time::timeout(left(), open_session(&target, left())).await {
            Ok(Ok(s)) => break s,
            Ok(Err(e @ SshError::HostKeyChanged { .. })) => {
                return report(ProbeReport::Failed {
                    why: e.to_string(),
                    fatal: true,
                });
            }
            Ok(Err(e)) => last_err = e.to_string(),
            Err(_) => last_err = "SSH handshake timed out".into(),
        }
        if Instant::now() >= deadline {
            return report(ProbeReport::Failed {
                why: format!("SSH never authenticated: {last_err}"),
                fatal: false,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    report(ProbeReport::Phase(Readiness::SshAuthenticated));
    report(ProbeReport::Session(session.clone()));
    // cloud-init.
    loop {
        if session.is_closed() {
            // Lost while waiting: make the next one here (the actor leaves it to us).
            match tokio::time::timeout(left(), open_session(&target, left())).await {
                Ok(Ok(s)) => {
                    session = s;
                    report(ProbeReport::Session(session.clone()));
                }
                Ok(Err(e)) => last_err = e.to_string(),
                Err(_) => last_err = "SSH handshake timed out".into(),
            }
        }
        if !session.is_closed() {
            match session
                .exec(CLOUD_INIT_CHECK, left().min(Duration::from_secs(15)))
                .await
            {
                Ok(o) if String::from_utf8_lossy(&o.stdout).trim() == "done" => break,
                Ok(_) => last_err = "cloud-init has not finished".into(),
                Err(e) => last_err = e.to_string(),
            }
        }
        if Instant::now() >= deadline {
            return report(ProbeReport::Failed {
                why: last_err,
                fatal: false,
            });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_bound_with_jitter_in_the_upper_half() {
        for (n, full_ms) in [
            (0, 200),
            (1, 400),
            (2, 800),
            (4, 3200),
            (5, 5000),
            (40, 5000),
        ] {
            let full = Duration::from_millis(full_ms);
            for random in [0, 1, 12_345_678_901, u64::MAX] {
                let d = backoff(n, random);
                assert!(
                    d >= full / 2 && d <= full,
                    "attempt {n}: {d:?} outside {full:?}/2..{full:?}"
                );
            }
        }
        assert_ne!(backoff(3, 1), backoff(3, 987_654_321), "jittered");
    }
}
