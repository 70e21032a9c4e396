//! The ClusterActor: the registry of defined clusters and the supervisor of every NodeActor.
//!
//! ## Supervision
//!
//! ```text
//! ClusterActor ── supervises ──> NodeActor × N   (one per VM, spawn_linked)
//!       │                                         a failed NodeActor is respawned (bounded)
//!       └──────── owns ref to ──> HostNetActor    (singleton: libvirt networks)
//! ```
//!
//! ## Protocol
//!
//! The actor itself only does fast, non-blocking work: registry lookups, status built from the
//! NodeActors' `watch` snapshots, event routing. Every command that touches the host runs in its
//! own task holding the cluster's operation lock (commands on one cluster are serialised;
//! different clusters proceed in parallel), journals through [`Op`], and sends the reply itself.
//! Registry changes made by a command come back to the actor as messages, so the actor remains
//! the only writer of its state.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use russh::keys::PrivateKey;
use serde_json::json;
use tokio::sync::watch;
use uuid::Uuid;
use vmcluster_engine::config::Config;
use vmcluster_engine::names;
use vmcluster_engine::plan::{self, Step};
use vmcluster_engine::seed;
use vmcluster_engine::state::{DomainState, Readiness};
use vmcluster_engine::topology::{ClusterSpec, DomainType, HostFacts, Topology};
use vmcluster_engine::view::{
    ClusterHandle, ClusterList, ClusterStatus, ClusterSummary, NodeHandle, NodeResult, NodeStatus,
};
use vmcluster_engine::xml::{self, Accel, Owner};
use vmcluster_journal::{BodyV1, Journal, ObjectKind};

use crate::error::{EngineError, Result};
use crate::exec::ExecRequest;
use crate::host;
use crate::hostnet::{HostNetMsg, check_network_owner};
use crate::libvirt::{DomainEvent, Virt};
use crate::node::{self, NodeArgs, NodeMsg, NodeSnapshot};
use crate::ops::Op;
use crate::ssh::SshTarget;

/// Where artifacts land on the nodes (reported in the handle).
pub const ARTIFACT_PATH: &str = "/opt/vmcluster/artifacts";

/// How `cluster_stop` and `node_stop` power nodes off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// ACPI power button; forced off after the timeout.
    Shutdown,
    /// Immediate power-off.
    Destroy,
}

/// A single-node command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeOp {
    /// Power off uncleanly, optionally power on again and wait.
    Crash {
        /// Start it again.
        restart_after: bool,
        /// Wait for readiness after the restart.
        wait_for_ssh: bool,
        /// Readiness budget.
        ssh_timeout: Duration,
    },
    /// Power on.
    Start {
        /// Wait for readiness.
        wait_for_ssh: bool,
        /// Readiness budget.
        ssh_timeout: Duration,
    },
    /// Power off.
    Stop {
        /// How.
        mode: StopMode,
        /// Graceful budget.
        timeout: Duration,
    },
    /// Reboot.
    Reboot {
        /// Reset instead of asking the guest.
        hard: bool,
        /// Wait for readiness.
        wait_for_ssh: bool,
        /// Readiness budget.
        ssh_timeout: Duration,
    },
}

impl NodeOp {
    fn tool(&self) -> &'static str {
        match self {
            NodeOp::Crash { .. } => "node_crash",
            NodeOp::Start { .. } => "node_start",
            NodeOp::Stop { .. } => "node_stop",
            NodeOp::Reboot { .. } => "node_reboot",
        }
    }
}

/// A command's answer with the id of the journaled operation (absent when refused before it
/// was journaled).
#[derive(Debug)]
pub struct Reply<T> {
    /// The operation's id.
    pub op_id: Option<Uuid>,
    /// The outcome.
    pub result: Result<T>,
}

impl<T> Reply<T> {
    fn refused(e: EngineError) -> Reply<T> {
        Reply {
            op_id: None,
            result: Err(e),
        }
    }
}

/// Messages of the ClusterActor.
#[derive(Debug)]
pub enum ClusterMsg {
    /// `cluster_define`.
    Define {
        /// Topology file name (without `.yaml`).
        topology: String,
        /// Reply.
        reply: RpcReplyPort<Reply<ClusterStatus>>,
    },
    /// `cluster_start`.
    Start {
        /// Cluster.
        cluster: String,
        /// Wait for readiness.
        wait_for_ssh: bool,
        /// Readiness budget.
        ssh_timeout: Duration,
        /// Reply.
        reply: RpcReplyPort<Reply<ClusterStatus>>,
    },
    /// `cluster_stop`.
    Stop {
        /// Cluster.
        cluster: String,
        /// How.
        mode: StopMode,
        /// Graceful budget per node.
        timeout: Duration,
        /// Reply.
        reply: RpcReplyPort<Reply<ClusterStatus>>,
    },
    /// `cluster_destroy`.
    Destroy {
        /// Cluster.
        cluster: String,
        /// Also delete overlays and the extra disks we created.
        remove_overlays: bool,
        /// Reply.
        reply: RpcReplyPort<Reply<ClusterStatus>>,
    },
    /// `cluster_status` (answered from actor state).
    Status {
        /// Cluster.
        cluster: String,
        /// Reply.
        reply: RpcReplyPort<Result<ClusterStatus>>,
    },
    /// `cluster_handle`.
    Handle {
        /// Cluster.
        cluster: String,
        /// Reply.
        reply: RpcReplyPort<Result<ClusterHandle>>,
    },
    /// `cluster_list`.
    List {
        /// Reply.
        reply: RpcReplyPort<ClusterList>,
    },
    /// `node_*`.
    Node {
        /// Cluster.
        cluster: String,
        /// Node.
        node: String,
        /// What to do.
        op: NodeOp,
        /// Reply.
        reply: RpcReplyPort<Reply<NodeResult>>,
    },
    /// `node_exec` / `node_exec_all`: run a command on some nodes (all when `nodes` is `None`).
    Exec {
        /// Cluster.
        cluster: String,
        /// Nodes, in the order given; `None` means every node in topology order.
        nodes: Option<Vec<String>>,
        /// What to run.
        request: ExecRequest,
        /// Reply: the journaled op and each node's outcome.
        reply: RpcReplyPort<Reply<crate::exec::NodeOutcomes>>,
    },
    /// `dmesg_collect`: each chosen node's kernel log after a marker or its cursor.
    Dmesg {
        /// Cluster.
        cluster: String,
        /// Nodes (`None`: all).
        nodes: Option<Vec<String>>,
        /// Marker id from `dmesg_mark`.
        marker: Option<String>,
        /// Severity filter.
        filter: vmcluster_engine::dmesg::FilterLevel,
        /// Cap per node.
        max_lines: usize,
        /// Reply.
        reply: RpcReplyPort<Result<crate::exec::NodeCollections>>,
    },
    /// `node_upload` / `node_download`: move one file over SFTP.
    Transfer {
        /// Cluster.
        cluster: String,
        /// Node.
        node: String,
        /// What to move where.
        transfer: crate::files::Transfer,
        /// Reply.
        reply: RpcReplyPort<Reply<vmcluster_engine::view::FileTransferResult>>,
    },
    /// `node_console`: the end of a node's serial console log (works with SSH dead).
    Console {
        /// Cluster.
        cluster: String,
        /// Node.
        node: String,
        /// How many lines.
        lines: usize,
        /// Reply.
        reply: RpcReplyPort<Result<vmcluster_engine::view::ConsoleTail>>,
    },
    /// Internal: add a cluster to the registry and spawn its NodeActors.
    Register {
        /// The validated cluster.
        spec: Arc<ClusterSpec>,
        /// Reply.
        reply: RpcReplyPort<Result<()>>,
    },
    /// Internal: remove a cluster from the registry and stop its NodeActors.
    Unregister {
        /// Cluster.
        cluster: String,
        /// Reply.
        reply: RpcReplyPort<()>,
    },
    /// Internal: what a command needs to know about a registered cluster.
    Resolve {
        /// Cluster name.
        cluster: String,
        /// Reply.
        reply: RpcReplyPort<Result<Resolved>>,
    },
    /// A libvirt lifecycle event.
    Domain(DomainEvent),
}

/// A registered cluster as a command sees it.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The spec.
    pub spec: Arc<ClusterSpec>,
    /// Its NodeActors, in topology order.
    pub nodes: Vec<(String, ActorRef<NodeMsg>)>,
    network_active: Arc<AtomicBool>,
}

impl Resolved {
    fn node(&self, name: &str) -> Result<ActorRef<NodeMsg>> {
        self.nodes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a.clone())
            .ok_or_else(|| EngineError::NotFound {
                kind: "node",
                name: name.to_owned(),
            })
    }
}

#[derive(Debug)]
struct NodeEntry {
    actor: ActorRef<NodeMsg>,
    state: watch::Receiver<NodeSnapshot>,
    restarts: u32,
}

#[derive(Debug)]
struct ClusterEntry {
    spec: Arc<ClusterSpec>,
    nodes: BTreeMap<String, NodeEntry>,
    network_active: Arc<AtomicBool>,
}

/// A loaded SSH key and its public half as an OpenSSH line.
type KeyPair = (Arc<PrivateKey>, String);

/// Everything a command task needs, cheap to clone.
#[derive(Debug, Clone)]
struct Ctx {
    me: ActorRef<ClusterMsg>,
    config: Arc<Config>,
    virt: Virt,
    journal: Journal,
    hostnet: ActorRef<HostNetMsg>,
    outputs: crate::outputs::OutputStore,
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    keys: Arc<Mutex<HashMap<PathBuf, KeyPair>>>,
    accel: Arc<tokio::sync::Mutex<HashMap<Option<PathBuf>, Accel>>>,
}

/// Arguments of the ClusterActor.
#[derive(Debug)]
pub struct ClusterArgs {
    /// Configuration.
    pub config: Arc<Config>,
    /// libvirt connection.
    pub virt: Virt,
    /// The journal.
    pub journal: Journal,
    /// The HostNetActor.
    pub hostnet: ActorRef<HostNetMsg>,
    /// Where truncated command outputs are kept in full.
    pub outputs: crate::outputs::OutputStore,
}

/// The ClusterActor's state.
#[derive(Debug)]
pub struct ClusterState {
    ctx: Ctx,
    clusters: BTreeMap<String, ClusterEntry>,
    by_domain: HashMap<String, (String, String)>,
}

/// The ClusterActor.
#[derive(Debug)]
pub struct ClusterActor;

/// How many times a NodeActor is respawned before the node is left failed.
const MAX_NODE_RESTARTS: u32 = 5;

impl Actor for ClusterActor {
    type Msg = ClusterMsg;
    type State = ClusterState;
    type Arguments = ClusterArgs;

    async fn pre_start(
        &self,
        me: ActorRef<ClusterMsg>,
        args: ClusterArgs,
    ) -> Result<ClusterState, ActorProcessingErr> {
        let ctx = Ctx {
            me: me.clone(),
            config: args.config,
            virt: args.virt,
            journal: args.journal,
            hostnet: args.hostnet,
            outputs: args.outputs,
            locks: Default::default(),
            keys: Default::default(),
            accel: Default::default(),
        };
        let mut st = ClusterState {
            ctx,
            clusters: BTreeMap::new(),
            by_domain: HashMap::new(),
        };
        // Replay: every cluster defined and not removed comes back; libvirt tells its live state.
        let (defined, unfinished) = replay(&st.ctx.journal)?;
        for spec in defined {
            if let Err(e) = self.register(&me, &mut st, Arc::new(spec)).await {
                tracing::error!(error = %e, "cannot restore a cluster from the journal");
            }
        }
        for op_id in unfinished {
            tracing::warn!(%op_id, "operation was in flight when the server stopped; marking it indeterminate");
            st.ctx
                .journal
                .append(BodyV1::CommandFinished {
                    op_id,
                    outcome: vmcluster_journal::Outcome::Indeterminate,
                    error_code: Some("INTERNAL".into()),
                    error_message: Some(
                        "The server stopped while the operation was running".into(),
                    ),
                    result_json: None,
                })
                .await?;
        }
        Ok(st)
    }

    async fn handle(
        &self,
        me: ActorRef<ClusterMsg>,
        msg: ClusterMsg,
        st: &mut ClusterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ClusterMsg::Define { topology, reply } => {
                let ctx = st.ctx.clone();
                tokio::spawn(async move {
                    let _ = reply.send(define(ctx, topology).await);
                });
            }
            ClusterMsg::Start {
                cluster,
                wait_for_ssh,
                ssh_timeout,
                reply,
            } => {
                let ctx = st.ctx.clone();
                tokio::spawn(async move {
                    let _ = reply.send(start(ctx, cluster, wait_for_ssh, ssh_timeout).await);
                });
            }
            ClusterMsg::Stop {
                cluster,
                mode,
                timeout,
                reply,
            } => {
                let ctx = st.ctx.clone();
                tokio::spawn(async move {
                    let _ = reply.send(stop(ctx, cluster, mode, timeout).await);
                });
            }
            ClusterMsg::Destroy {
                cluster,
                remove_overlays,
                reply,
            } => {
                let ctx = st.ctx.clone();
                tokio::spawn(async move {
                    let _ = reply.send(destroy(ctx, cluster, remove_overlays).await);
                });
            }
            ClusterMsg::Status { cluster, reply } => {
                let _ = reply.send(self.status(st, &cluster));
            }
            ClusterMsg::Handle { cluster, reply } => {
                let ctx = st.ctx.clone();
                let snapshots = self.entry(st, &cluster).map(|e| {
                    e.nodes
                        .iter()
                        .map(|(n, ne)| (n.clone(), ne.state.borrow().clone()))
                        .collect::<BTreeMap<_, _>>()
                });
                tokio::spawn(async move {
                    let res = match snapshots {
                        Ok(s) => handle(ctx, cluster, s).await,
                        Err(e) => Err(e),
                    };
                    let _ = reply.send(res);
                });
            }
            ClusterMsg::List { reply } => {
                let _ = reply.send(self.list(st));
            }
            ClusterMsg::Node {
                cluster,
                node,
                op,
                reply,
            } => {
                let ctx = st.ctx.clone();
                tokio::spawn(async move {
                    let _ = reply.send(node_op(ctx, cluster, node, op).await);
                });
            }
            ClusterMsg::Exec {
                cluster,
                nodes,
                request,
                reply,
            } => {
                let ctx = st.ctx.clone();
                tokio::spawn(async move {
                    let _ = reply.send(exec(ctx, cluster, nodes, request).await);
                });
            }
            ClusterMsg::Transfer {
                cluster,
                node,
                transfer,
                reply,
            } => {
                let target = self.entry(st, &cluster).and_then(|e| {
                    let actor = e.nodes.get(&node).map(|n| n.actor.clone());
                    actor
                        .map(|a| (e.spec.name.clone(), a))
                        .ok_or_else(|| EngineError::NotFound {
                            kind: "node",
                            name: node.clone(),
                        })
                });
                let (journal, limit) = (st.ctx.journal.clone(), st.ctx.config.transfer_max_bytes);
                tokio::spawn(async move {
                    // The arguments first: a bad path is INVALID_ARGUMENT whatever the names.
                    let target = transfer.check(limit).and(target);
                    let res = match target {
                        Ok((name, actor)) => {
                            crate::files::run(&journal, &name, &node, actor, limit, transfer).await
                        }
                        Err(e) => Reply::refused(e),
                    };
                    let _ = reply.send(res);
                });
            }
            ClusterMsg::Dmesg {
                cluster,
                nodes,
                marker,
                filter,
                max_lines,
                reply,
            } => {
                let targets = self
                    .entry(st, &cluster)
                    .and_then(|e| select_nodes(e, nodes.as_deref()));
                tokio::spawn(async move {
                    let res = match targets {
                        Ok(t) => Ok(join_all(t.into_iter().map(|(n, a)| {
                            let marker = marker.clone();
                            async move {
                                let r = ask_node(&a, |reply| NodeMsg::Dmesg {
                                    marker,
                                    filter,
                                    max_lines,
                                    reply,
                                })
                                .await;
                                (n, r)
                            }
                        }))
                        .await),
                        Err(e) => Err(e),
                    };
                    let _ = reply.send(res);
                });
            }
            ClusterMsg::Console {
                cluster,
                node,
                lines,
                reply,
            } => {
                let res = self.entry(st, &cluster).and_then(|e| {
                    e.spec
                        .node(&node)
                        .map(|n| (e.spec.name.clone(), n.console_log.clone()))
                        .ok_or_else(|| EngineError::NotFound {
                            kind: "node",
                            name: node.clone(),
                        })
                });
                tokio::spawn(async move {
                    let res = match res {
                        Ok((cluster_name, path)) => {
                            let p = path.clone();
                            tokio::task::spawn_blocking(move || host::console_tail(&p, lines))
                                .await
                                .map_err(|e| EngineError::Internal(e.to_string()))
                                .map(|text| vmcluster_engine::view::ConsoleTail {
                                    cluster_name,
                                    node,
                                    path: path.display().to_string(),
                                    lines: text.lines().map(str::to_owned).collect(),
                                })
                        }
                        Err(e) => Err(e),
                    };
                    let _ = reply.send(res);
                });
            }
            ClusterMsg::Register { spec, reply } => {
                let _ = reply.send(self.register(&me, st, spec).await);
            }
            ClusterMsg::Unregister { cluster, reply } => {
                self.unregister(st, &cluster);
                let _ = reply.send(());
            }
            ClusterMsg::Resolve { cluster, reply } => {
                let res = self.entry(st, &cluster).map(|e| Resolved {
                    spec: e.spec.clone(),
                    nodes: e
                        .nodes
                        .iter()
                        .map(|(n, ne)| (n.clone(), ne.actor.clone()))
                        .collect(),
                    network_active: e.network_active.clone(),
                });
                // Keep topology order.
                let res = res.map(|mut r| {
                    let order: Vec<String> = r.spec.nodes.iter().map(|n| n.name.clone()).collect();
                    r.nodes
                        .sort_by_key(|(n, _)| order.iter().position(|o| o == n));
                    r
                });
                let _ = reply.send(res);
            }
            ClusterMsg::Domain(ev) => {
                if let Some((c, n)) = st.by_domain.get(&ev.domain)
                    && let Some(ne) = st.clusters.get(c).and_then(|e| e.nodes.get(n))
                {
                    let _ = ne.actor.cast(NodeMsg::Domain(ev));
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<ClusterMsg>,
        evt: SupervisionEvent,
        st: &mut ClusterState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_default())
            }
            _ => return Ok(()),
        };
        // Find the node whose current actor this was; anything else (an actor we already
        // replaced, or stopped on purpose when its cluster was destroyed) needs nothing.
        let Some((c, n, restarts)) = st.clusters.iter().find_map(|(c, e)| {
            e.nodes
                .iter()
                .find(|(_, ne)| ne.actor.get_id() == cell.get_id())
                .map(|(n, ne)| (c.clone(), n.clone(), ne.restarts))
        }) else {
            return Ok(());
        };
        let Some(entry) = st.clusters.get(&c) else {
            return Ok(());
        };
        let restarts = restarts + 1;
        tracing::error!(cluster = %c, node = %n, %why, restarts, "node actor stopped unexpectedly");
        if restarts > MAX_NODE_RESTARTS {
            tracing::error!(cluster = %c, node = %n, "node actor restart budget exhausted; node left failed");
            return Ok(());
        }
        let spec = entry.spec.clone();
        if let Ok((actor, state)) = self.spawn_node(&me, &st.ctx, &spec, &n).await
            && let Some(ne) = st.clusters.get_mut(&c).and_then(|e| e.nodes.get_mut(&n))
        {
            *ne = NodeEntry {
                actor,
                state,
                restarts,
            };
        }
        Ok(())
    }
}

impl ClusterActor {
    fn entry<'a>(&self, st: &'a ClusterState, name: &str) -> Result<&'a ClusterEntry> {
        st.clusters.get(name).ok_or_else(|| EngineError::NotFound {
            kind: "cluster",
            name: name.to_owned(),
        })
    }

    async fn spawn_node(
        &self,
        me: &ActorRef<ClusterMsg>,
        ctx: &Ctx,
        spec: &ClusterSpec,
        node: &str,
    ) -> Result<(ActorRef<NodeMsg>, watch::Receiver<NodeSnapshot>)> {
        let n = spec
            .node(node)
            .ok_or_else(|| EngineError::Internal(format!("node {node} not in spec")))?;
        let (key, _) = ctx.key(&spec.ssh.key_path).await?;
        let args = NodeArgs {
            node: n.name.clone(),
            domain: n.domain_name.clone(),
            ssh: SshTarget {
                addr: SocketAddr::new(n.ip.into(), spec.ssh.port),
                user: spec.ssh.user.clone(),
                key,
                bridge: spec.network.bridge.clone(),
                connect_timeout: Duration::from_secs(spec.ssh.connect_timeout_s.min(5)),
                pinned: pinned_key(&ctx.journal, &spec.name, node),
            },
            console_log: n.console_log.clone(),
            virt: ctx.virt.clone(),
            cluster: spec.name.clone(),
            journal: ctx.journal.clone(),
        };
        node::spawn(
            args,
            me.get_cell(),
            Duration::from_secs(ctx.config.ready_timeout_s),
        )
        .await
    }

    async fn register(
        &self,
        me: &ActorRef<ClusterMsg>,
        st: &mut ClusterState,
        spec: Arc<ClusterSpec>,
    ) -> Result<()> {
        if st.clusters.contains_key(&spec.name) {
            return Ok(());
        }
        let mut nodes = BTreeMap::new();
        for n in &spec.nodes {
            let (actor, state) = self.spawn_node(me, &st.ctx, &spec, &n.name).await?;
            st.by_domain
                .insert(n.domain_name.clone(), (spec.name.clone(), n.name.clone()));
            nodes.insert(
                n.name.clone(),
                NodeEntry {
                    actor,
                    state,
                    restarts: 0,
                },
            );
        }
        let active =
            matches!(st.ctx.virt.network(&spec.network.name).await, Ok(Some(i)) if i.active);
        st.clusters.insert(
            spec.name.clone(),
            ClusterEntry {
                spec: spec.clone(),
                nodes,
                network_active: Arc::new(AtomicBool::new(active)),
            },
        );
        Ok(())
    }

    fn unregister(&self, st: &mut ClusterState, cluster: &str) {
        if let Some(entry) = st.clusters.remove(cluster) {
            for (_, ne) in entry.nodes {
                ne.actor.stop(Some("cluster destroyed".into()));
            }
            st.by_domain.retain(|_, (c, _)| c != cluster);
        }
    }

    fn status(&self, st: &ClusterState, cluster: &str) -> Result<ClusterStatus> {
        let e = self.entry(st, cluster)?;
        // libvirt's test driver creates no bridges; everywhere else the bridge is the truth.
        Ok(status_of(e, !st.ctx.virt.uri().starts_with("test:")))
    }

    fn list(&self, st: &ClusterState) -> ClusterList {
        ClusterList {
            clusters: st
                .clusters
                .values()
                .map(|e| ClusterSummary {
                    cluster_name: e.spec.name.clone(),
                    nodes: e.spec.nodes.len(),
                    running: e
                        .nodes
                        .values()
                        .filter(|n| n.state.borrow().domain_state == DomainState::Running)
                        .count(),
                    network: e.spec.network.name.clone(),
                    subnet: e.spec.network.subnet.to_string(),
                })
                .collect(),
        }
    }
}

/// The chosen nodes of a cluster (all when `None`), in the order asked, as actor handles.
fn select_nodes(
    e: &ClusterEntry,
    nodes: Option<&[String]>,
) -> Result<Vec<(String, ActorRef<NodeMsg>)>> {
    let names: Vec<String> = match nodes {
        Some(n) => n.to_vec(),
        None => e.spec.nodes.iter().map(|n| n.name.clone()).collect(),
    };
    names
        .into_iter()
        .map(|n| match e.nodes.get(&n) {
            Some(ne) => Ok((n, ne.actor.clone())),
            None => Err(EngineError::NotFound {
                kind: "node",
                name: n,
            }),
        })
        .collect()
}

/// A cluster's status from actor state. `check_bridge`: a network is only reported active while
/// its bridge exists (a cheap local check that catches a network stopped behind our back).
fn status_of(e: &ClusterEntry, check_bridge: bool) -> ClusterStatus {
    let bridge_up = !check_bridge
        || Path::new("/sys/class/net")
            .join(&e.spec.network.bridge)
            .exists();
    ClusterStatus {
        cluster_name: e.spec.name.clone(),
        network: e.spec.network.name.clone(),
        network_active: e.network_active.load(Ordering::Relaxed) && bridge_up,
        nodes: e
            .spec
            .nodes
            .iter()
            .map(|n| {
                let snap = e.nodes.get(&n.name).map(|ne| ne.state.borrow().clone());
                node_status(n, snap.as_ref())
            })
            .collect(),
    }
}

fn node_status(
    n: &vmcluster_engine::topology::NodeSpec,
    snap: Option<&NodeSnapshot>,
) -> NodeStatus {
    NodeStatus {
        name: n.name.clone(),
        role: n.role.clone(),
        ip: n.ip.to_string(),
        domain: n.domain_name.clone(),
        domain_state: snap.map(|s| s.domain_state).unwrap_or(DomainState::Unknown),
        phase: snap.map(|s| s.phase).unwrap_or(Readiness::Down),
        ssh_reachable: snap.is_some_and(|s| s.phase >= Readiness::SshAuthenticated),
        ssh_session: snap.map(|s| s.ssh).unwrap_or_default(),
        ssh_reconnects: snap.map(|s| s.ssh_reconnects).unwrap_or(0),
        domain_type: match n.domain_type {
            DomainType::Kvm => "kvm",
            _ => "qemu",
        }
        .to_owned(),
        last_error: snap.and_then(|s| s.last_error.clone()),
    }
}

/// The host key pinned for `node` of `cluster`, from the journal (a cluster's removal or an
/// empty record forgets it).
fn pinned_key(journal: &Journal, cluster: &str, node: &str) -> Option<String> {
    let mut pinned = None;
    for rec in journal.iter_all().flatten() {
        match rec.body {
            BodyV1::HostKeyPinned {
                cluster: c,
                node: n,
                key_openssh,
            } if c == cluster && n == node => {
                pinned = Some(key_openssh).filter(|k| !k.is_empty());
            }
            BodyV1::ClusterRemoved { cluster: c, .. } if c == cluster => pinned = None,
            _ => {}
        }
    }
    pinned
}

/// Rebuilds the registry from the journal: clusters defined and not removed, and operations
/// that never recorded an outcome.
fn replay(journal: &Journal) -> Result<(Vec<ClusterSpec>, Vec<Uuid>)> {
    let mut defined: BTreeMap<String, ClusterSpec> = BTreeMap::new();
    let mut open: BTreeMap<Uuid, ()> = BTreeMap::new();
    for rec in journal.iter_all() {
        match rec?.body {
            BodyV1::ClusterDefined {
                cluster, spec_json, ..
            } => match serde_json::from_str(&spec_json) {
                Ok(spec) => {
                    defined.insert(cluster, spec);
                }
                Err(e) => {
                    tracing::error!(%cluster, error = %e, "unreadable cluster spec in the journal")
                }
            },
            BodyV1::ClusterRemoved { cluster, .. } => {
                defined.remove(&cluster);
            }
            BodyV1::CommandStarted { op_id, .. } => {
                open.insert(op_id, ());
            }
            BodyV1::CommandFinished { op_id, .. } => {
                open.remove(&op_id);
            }
            _ => {}
        }
    }
    Ok((defined.into_values().collect(), open.into_keys().collect()))
}

impl Ctx {
    async fn lock(&self, cluster: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = self
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(cluster.to_owned())
            .or_default()
            .clone();
        m.lock_owned().await
    }

    async fn key(&self, path: &Path) -> Result<KeyPair> {
        if let Some(k) = self
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
        {
            return Ok(k.clone());
        }
        let p = path.to_owned();
        let (key, public) = tokio::task::spawn_blocking(move || host::ensure_keypair(&p))
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))??;
        let entry = (Arc::new(key), public);
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_owned(), entry.clone());
        Ok(entry)
    }

    async fn resolve(&self, cluster: &str) -> Result<Resolved> {
        let c = cluster.to_owned();
        ask(
            &self.me,
            move |reply| ClusterMsg::Resolve { cluster: c, reply },
            None,
        )
        .await?
    }

    async fn status(&self, cluster: &str) -> Result<ClusterStatus> {
        let c = cluster.to_owned();
        ask(
            &self.me,
            move |reply| ClusterMsg::Status { cluster: c, reply },
            None,
        )
        .await?
    }

    /// The accelerator for a node that asked for `requested` and boots `kernel`.
    async fn accel(&self, requested: DomainType, kernel: Option<&Path>) -> Accel {
        match requested {
            DomainType::Kvm => Accel::Kvm,
            DomainType::Qemu => Accel::Qemu,
            DomainType::Auto => {
                if self.virt.uri().starts_with("test:") {
                    return Accel::Qemu;
                }
                let mut cache = self.accel.lock().await;
                let key = kernel.map(Path::to_path_buf);
                if let Some(a) = cache.get(&key) {
                    return *a;
                }
                let a = match host::ensure_dir(&self.config.cache_dir) {
                    Ok(()) => host::probe_accel_cached(kernel, &self.config.cache_dir).await,
                    Err(_) => host::probe_accel(kernel, &std::env::temp_dir()).await,
                };
                cache.insert(key, a);
                a
            }
        }
    }
}

/// Calls an actor and maps transport failures to engine errors.
pub async fn ask<M, T>(
    actor: &ActorRef<M>,
    msg: impl FnOnce(RpcReplyPort<T>) -> M,
    timeout: Option<Duration>,
) -> Result<T>
where
    M: ractor::Message,
    T: Send + 'static,
{
    match actor.call(msg, timeout).await {
        Ok(ractor::rpc::CallResult::Success(v)) => Ok(v),
        Ok(ractor::rpc::CallResult::Timeout) => Err(EngineError::Timeout(
            "The actor did not answer in time".into(),
        )),
        Ok(ractor::rpc::CallResult::SenderError) => Err(EngineError::Internal(
            "The actor dropped the request".into(),
        )),
        Err(e) => Err(EngineError::Internal(format!("Cannot reach actor: {e}"))),
    }
}

async fn ask_node<T: Send + 'static>(
    node: &ActorRef<NodeMsg>,
    msg: impl FnOnce(RpcReplyPort<Result<T>>) -> NodeMsg,
) -> Result<T> {
    ask(node, msg, None).await?
}

/// Reads the topology file `name` and validates it against the host.
async fn load_topology(ctx: &Ctx, name: &str) -> Result<ClusterSpec> {
    names::check_name(name, 64)
        .map_err(|e| EngineError::InvalidArgument(format!("topology_name {name:?} {e}")))?;
    let dir = &ctx.config.topology_dir;
    let path = [
        dir.join(format!("{name}.yaml")),
        dir.join(format!("{name}.yml")),
    ]
    .into_iter()
    .find(|p| p.exists())
    .ok_or_else(|| EngineError::NotFound {
        kind: "topology",
        name: format!("{name} (looked in {})", dir.display()),
    })?;
    let text = tokio::fs::read_to_string(&path)
        .await
        .map_err(|e| EngineError::io(format!("read {}", path.display()), e))?;
    let topo = Topology::from_yaml(&text)?;
    let networks = ask(&ctx.hostnet, |reply| HostNetMsg::List { reply }, None).await??;
    let exists = |p: &Path| p.exists();
    let facts = HostFacts {
        networks: networks.iter().map(|n| n.facts.clone()).collect(),
        exists: &exists,
        overlay_dir: ctx.config.overlay_dir.clone(),
        ssh_key_path: ctx.config.ssh_key_path.clone(),
        ssh_user: ctx.config.ssh_user.clone(),
        domain_type: ctx.config.domain_type,
    };
    let validated = topo.validate(&facts);
    drop(facts);
    let mut spec = validated?;
    // A network of the same name must be ours to adopt.
    if let Some(info) = networks.iter().find(|n| n.facts.name == spec.network.name) {
        check_network_owner(info, &spec.name)?;
    }
    // Resolve `auto` now, so the journal records what was really used.
    for n in &mut spec.nodes {
        let kernel = match &n.boot {
            vmcluster_engine::topology::Boot::Kernel { kernel, .. } => Some(kernel.clone()),
            _ => None,
        };
        n.domain_type = match ctx.accel(n.domain_type, kernel.as_deref()).await {
            Accel::Kvm => DomainType::Kvm,
            Accel::Qemu => DomainType::Qemu,
        };
    }
    Ok(spec)
}

fn accel_of(t: DomainType) -> Accel {
    if t == DomainType::Kvm {
        Accel::Kvm
    } else {
        Accel::Qemu
    }
}

async fn define(ctx: Ctx, topology: String) -> Reply<ClusterStatus> {
    let spec = match load_topology(&ctx, &topology).await {
        Ok(s) => Arc::new(s),
        Err(e) => return Reply::refused(e),
    };
    let _guard = ctx.lock(&spec.name).await;
    let existing = ctx.resolve(&spec.name).await.ok();
    if let Some(r) = &existing
        && *r.spec != *spec
    {
        return Reply::refused(EngineError::Conflict(format!(
            "Cluster {:?} is already defined from a different topology; destroy it first",
            spec.name
        )));
    }
    // Everything we would touch must be absent or ours: check before changing anything.
    for n in &spec.nodes {
        match ctx.virt.domain_owner(&n.domain_name).await {
            Ok(Some(Some(o))) if o.cluster == spec.name => {}
            Ok(Some(_)) => {
                return Reply::refused(EngineError::Conflict(format!(
                    "A libvirt domain named {:?} exists and does not belong to cluster {:?}",
                    n.domain_name, spec.name
                )));
            }
            Ok(None) => {}
            Err(e) => return Reply::refused(e),
        }
    }
    let public_key = match ctx.key(&spec.ssh.key_path).await.and_then(|(_, p)| {
        seed::normalize_public_key(&p).map_err(|e| EngineError::InvalidArgument(e.to_string()))
    }) {
        Ok(k) => k,
        Err(e) => return Reply::refused(e),
    };
    let op = match Op::begin(
        &ctx.journal,
        "cluster_define",
        &spec.name,
        &json!({ "topology_name": topology }),
    )
    .await
    {
        Ok(op) => op,
        Err(e) => return Reply::refused(e),
    };
    let result = async {
        if existing.is_none() {
            op.record(BodyV1::ClusterDefined {
                op_id: op.id,
                cluster: spec.name.clone(),
                spec_json: serde_json::to_string(&*spec)
                    .map_err(|e| EngineError::Internal(e.to_string()))?,
            })
            .await?;
            let s = spec.clone();
            ask(
                &ctx.me,
                move |reply| ClusterMsg::Register { spec: s, reply },
                None,
            )
            .await??;
        }
        let resolved = ctx.resolve(&spec.name).await?;
        let owner = |node: Option<&str>| Owner {
            cluster: spec.name.clone(),
            node: node.map(str::to_owned),
            op: op.id,
        };
        for step in plan::define_plan(&spec) {
            op.step(&step, async {
                match &step {
                    Step::EnsureDir => {
                        let fresh = !spec.dir.exists();
                        host::ensure_dir(&spec.dir)?;
                        host::write_owner_marker(&spec.dir, &spec.name)?;
                        if fresh {
                            op.created(ObjectKind::File, spec.dir.to_string_lossy())
                                .await?;
                        }
                    }
                    Step::EnsureNetwork => {
                        let (s, o) = (spec.clone(), owner(None));
                        if ask(
                            &ctx.hostnet,
                            move |reply| HostNetMsg::Ensure {
                                spec: s,
                                owner: o,
                                reply,
                            },
                            None,
                        )
                        .await??
                        {
                            op.created(ObjectKind::Network, &spec.network.name).await?;
                        }
                    }
                    Step::StartNetwork => {
                        let name = spec.network.name.clone();
                        ask(
                            &ctx.hostnet,
                            move |reply| HostNetMsg::Start { name, reply },
                            None,
                        )
                        .await??;
                        resolved.network_active.store(true, Ordering::Relaxed);
                    }
                    Step::EnsureExtraDisks(n) => {
                        for d in &spec.node(n).expect("plan node").extra_disks {
                            if host::ensure_disk(&d.path, d.size_gb).await? {
                                op.created(ObjectKind::File, d.path.to_string_lossy())
                                    .await?;
                            }
                        }
                    }
                    Step::EnsureOverlay(n) => {
                        let node = spec.node(n).expect("plan node");
                        if host::ensure_overlay(&node.base_image, &node.overlay).await? {
                            op.created(ObjectKind::File, node.overlay.to_string_lossy())
                                .await?;
                            // A fresh disk boots with a fresh host key: forget the old pin.
                            let actor = resolved.node(n)?;
                            ask_node(&actor, |reply| NodeMsg::Unpin { reply }).await?;
                        }
                    }
                    Step::EnsureSeed(n) => {
                        let node = spec.node(n).expect("plan node");
                        let fresh = !node.seed_iso.exists();
                        if host::ensure_seed_iso(
                            &seed::seed_files(&spec, node, &public_key),
                            &node.seed_iso,
                        )
                        .await?
                            && fresh
                        {
                            op.created(ObjectKind::File, node.seed_iso.to_string_lossy())
                                .await?;
                        }
                    }
                    Step::DefineDomain(n) => {
                        let node = spec.node(n).expect("plan node");
                        if ctx.virt.domain_owner(&node.domain_name).await?.is_none() {
                            let x = xml::domain_xml(
                                &spec,
                                node,
                                accel_of(node.domain_type),
                                &owner(Some(n)),
                            );
                            ctx.virt.define_domain(x).await?;
                            op.created(ObjectKind::Domain, &node.domain_name).await?;
                        }
                        let actor = resolved.node(n)?;
                        ask(&actor, |r| NodeMsg::Refresh { reply: Some(r) }, None).await?;
                    }
                    other => {
                        return Err(EngineError::Internal(format!(
                            "step {} is not part of define",
                            other.name()
                        )));
                    }
                }
                Ok(())
            })
            .await?;
        }
        ctx.status(&spec.name).await
    }
    .await;
    op.finish(&result, true).await;
    Reply {
        op_id: Some(op.id),
        result,
    }
}

/// Runs `f` on every node concurrently and gathers per-node failures.
async fn on_nodes<F, Fut>(nodes: &[(String, ActorRef<NodeMsg>)], f: F) -> Result<()>
where
    F: Fn(ActorRef<NodeMsg>) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let results = join_all(nodes.iter().map(|(n, a)| {
        let fut = f(a.clone());
        async move { (n.clone(), fut.await) }
    }))
    .await;
    let failures: Vec<(String, EngineError)> = results
        .into_iter()
        .filter_map(|(n, r)| r.err().map(|e| (n, e)))
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(EngineError::Nodes {
            total: nodes.len(),
            failures,
        })
    }
}

async fn start(
    ctx: Ctx,
    cluster: String,
    wait_for_ssh: bool,
    ssh_timeout: Duration,
) -> Reply<ClusterStatus> {
    let resolved = match ctx.resolve(&cluster).await {
        Ok(r) => r,
        Err(e) => return Reply::refused(e),
    };
    let name = resolved.spec.name.clone();
    let _guard = ctx.lock(&name).await;
    let params = json!({ "wait_for_ssh": wait_for_ssh, "ssh_timeout_s": ssh_timeout.as_secs() });
    let op = match Op::begin(&ctx.journal, "cluster_start", &name, &params).await {
        Ok(op) => op,
        Err(e) => return Reply::refused(e),
    };
    let result = async {
        let net = resolved.spec.network.name.clone();
        ask(
            &ctx.hostnet,
            move |reply| HostNetMsg::Start { name: net, reply },
            None,
        )
        .await??;
        resolved.network_active.store(true, Ordering::Relaxed);
        on_nodes(&resolved.nodes, |a| async move {
            ask_node(&a, |reply| NodeMsg::Start {
                ready_timeout: ssh_timeout,
                reply,
            })
            .await
        })
        .await?;
        if wait_for_ssh {
            on_nodes(&resolved.nodes, |a| async move {
                ask_node(&a, |reply| NodeMsg::WaitReady {
                    timeout: ssh_timeout,
                    reply,
                })
                .await
            })
            .await?;
        }
        ctx.status(&name).await
    }
    .await;
    op.finish(&result, true).await;
    Reply {
        op_id: Some(op.id),
        result,
    }
}

async fn stop(
    ctx: Ctx,
    cluster: String,
    mode: StopMode,
    timeout: Duration,
) -> Reply<ClusterStatus> {
    let resolved = match ctx.resolve(&cluster).await {
        Ok(r) => r,
        Err(e) => return Reply::refused(e),
    };
    let name = resolved.spec.name.clone();
    let _guard = ctx.lock(&name).await;
    let params =
        json!({ "mode": format!("{mode:?}").to_lowercase(), "timeout_s": timeout.as_secs() });
    let op = match Op::begin(&ctx.journal, "cluster_stop", &name, &params).await {
        Ok(op) => op,
        Err(e) => return Reply::refused(e),
    };
    let graceful = (mode == StopMode::Shutdown).then_some(timeout);
    let result = async {
        on_nodes(&resolved.nodes, |a| async move {
            ask_node(&a, |reply| NodeMsg::Stop { graceful, reply })
                .await
                .map(drop)
        })
        .await?;
        for (_, a) in &resolved.nodes {
            ask(a, |r| NodeMsg::Refresh { reply: Some(r) }, None).await?;
        }
        ctx.status(&name).await
    }
    .await;
    op.finish(&result, true).await;
    Reply {
        op_id: Some(op.id),
        result,
    }
}

/// Files this cluster's operations created and did not remove (the journal's ledger).
fn created_files(journal: &Journal, cluster: &str) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = Vec::new();
    for rec in journal.iter_all() {
        match rec?.body {
            BodyV1::ObjectCreated {
                cluster: c,
                kind: ObjectKind::File,
                id,
                ..
            } if c == cluster => {
                let p = PathBuf::from(id);
                if !files.contains(&p) {
                    files.push(p);
                }
            }
            BodyV1::ObjectRemoved {
                cluster: c,
                kind: ObjectKind::File,
                id,
                ..
            } if c == cluster => {
                files.retain(|f| *f != Path::new(&id));
            }
            _ => {}
        }
    }
    Ok(files)
}

async fn destroy(ctx: Ctx, cluster: String, remove_overlays: bool) -> Reply<ClusterStatus> {
    let resolved = match ctx.resolve(&cluster).await {
        Ok(r) => r,
        Err(e) => return Reply::refused(e),
    };
    let spec = resolved.spec.clone();
    let _guard = ctx.lock(&spec.name).await;
    let op = match Op::begin(
        &ctx.journal,
        "cluster_destroy",
        &spec.name,
        &json!({ "remove_overlays": remove_overlays }),
    )
    .await
    {
        Ok(op) => op,
        Err(e) => return Reply::refused(e),
    };
    let result = async {
        let ours = created_files(&ctx.journal, &spec.name)?;
        for step in plan::destroy_plan(&spec, remove_overlays) {
            op.step(&step, async {
                let node = step.node().and_then(|n| spec.node(n));
                let owned = |domain: &str| {
                    let virt = ctx.virt.clone();
                    let (domain, cluster) = (domain.to_owned(), spec.name.clone());
                    async move {
                        Ok::<bool, EngineError>(matches!(
                            virt.domain_owner(&domain).await?,
                            Some(Some(o)) if o.cluster == cluster
                        ))
                    }
                };
                match (&step, node) {
                    (Step::StopDomain(n), Some(node)) => {
                        if owned(&node.domain_name).await? {
                            let actor = resolved.node(n)?;
                            ask_node(&actor, |reply| NodeMsg::Stop { graceful: None, reply }).await?;
                        }
                    }
                    (Step::UndefineDomain(_), Some(node)) => {
                        if owned(&node.domain_name).await? {
                            ctx.virt.undefine_domain(&node.domain_name).await?;
                            op.removed(ObjectKind::Domain, &node.domain_name).await?;
                        }
                    }
                    (Step::RemoveNodeFiles(_), Some(node)) => {
                        host::remove_file(&host::seed_stamp(&node.seed_iso))?;
                        for f in [&node.seed_iso, &node.console_log] {
                            host::remove_file(f)?;
                            op.removed(ObjectKind::File, f.to_string_lossy()).await?;
                        }
                    }
                    (Step::RemoveOverlay(_), Some(node)) => {
                        host::remove_file(&node.overlay)?;
                        op.removed(ObjectKind::File, node.overlay.to_string_lossy()).await?;
                        for d in node.extra_disks.iter().filter(|d| ours.contains(&d.path)) {
                            host::remove_file(&d.path)?;
                            op.removed(ObjectKind::File, d.path.to_string_lossy()).await?;
                        }
                    }
                    (Step::RemoveNetwork, _) => {
                        let s = spec.clone();
                        if ask(&ctx.hostnet, move |reply| HostNetMsg::Remove { spec: s, reply }, None).await?? {
                            op.removed(ObjectKind::Network, &spec.network.name).await?;
                        }
                        resolved.network_active.store(false, Ordering::Relaxed);
                    }
                    (Step::RemoveDir, _) => {
                        host::remove_file(&spec.dir.join(host::OWNER_MARKER))?;
                        match std::fs::remove_dir(&spec.dir) {
                            Ok(()) => op.removed(ObjectKind::File, spec.dir.to_string_lossy()).await?,
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => tracing::warn!(dir = %spec.dir.display(), error = %e, "cluster directory left in place"),
                        }
                    }
                    (other, _) => return Err(EngineError::Internal(format!("step {} is not part of destroy", other.name()))),
                }
                Ok(())
            })
            .await?;
        }
        let status = status_after_destroy(&spec);
        op.record(BodyV1::ClusterRemoved { op_id: op.id, cluster: spec.name.clone() }).await?;
        let c = spec.name.clone();
        ask(&ctx.me, move |reply| ClusterMsg::Unregister { cluster: c, reply }, None).await?;
        Ok(status)
    }
    .await;
    op.finish(&result, true).await;
    Reply {
        op_id: Some(op.id),
        result,
    }
}

fn status_after_destroy(spec: &ClusterSpec) -> ClusterStatus {
    ClusterStatus {
        cluster_name: spec.name.clone(),
        network: spec.network.name.clone(),
        network_active: false,
        nodes: spec
            .nodes
            .iter()
            .map(|n| {
                let mut s = node_status(n, None);
                s.domain_state = DomainState::Undefined;
                s
            })
            .collect(),
    }
}

async fn handle(
    ctx: Ctx,
    cluster: String,
    snapshots: BTreeMap<String, NodeSnapshot>,
) -> Result<ClusterHandle> {
    let resolved = ctx.resolve(&cluster).await?;
    let spec = &resolved.spec;
    let down: Vec<String> = spec
        .nodes
        .iter()
        .filter(|n| {
            snapshots
                .get(&n.name)
                .is_none_or(|s| s.domain_state != DomainState::Running)
        })
        .map(|n| n.name.clone())
        .collect();
    if !down.is_empty() {
        return Err(EngineError::FailedPrecondition(format!(
            "Cluster {:?} is not running: node(s) {} are not running; call cluster_start first",
            spec.name,
            down.join(", ")
        )));
    }
    let outputs = join_all(resolved.nodes.iter().map(|(n, a)| async move {
        let out = ask_node(a, |reply| NodeMsg::Exec {
            request: ExecRequest::new("uname -r", Duration::from_secs(20)),
            reply,
        })
        .await;
        (n.clone(), out)
    }))
    .await;
    let mut versions = BTreeMap::new();
    let mut failures = Vec::new();
    for (n, out) in outputs {
        match out {
            Ok(o) if o.exit_code == Some(0) => {
                versions.insert(n, o.stdout.trim().to_owned());
            }
            Ok(o) => failures.push((
                n.clone(),
                EngineError::Ssh {
                    node: n,
                    message: format!("`uname -r` exited with {:?}", o.exit_code),
                },
            )),
            Err(e) => failures.push((n, e)),
        }
    }
    if !failures.is_empty() {
        return Err(EngineError::Nodes {
            total: spec.nodes.len(),
            failures,
        });
    }
    Ok(ClusterHandle {
        cluster_name: spec.name.clone(),
        artifact_path: ARTIFACT_PATH.to_owned(),
        kernel_version: versions
            .get(&spec.nodes[0].name)
            .cloned()
            .unwrap_or_default(),
        kernel_versions: versions,
        nodes: spec
            .nodes
            .iter()
            .map(|n| NodeHandle {
                name: n.name.clone(),
                role: n.role.clone(),
                ip: n.ip.to_string(),
                ssh_port: spec.ssh.port,
                ssh_user: spec.ssh.user.clone(),
                ssh_key_path: spec.ssh.key_path.to_string_lossy().into_owned(),
                host_key: snapshots.get(&n.name).and_then(|s| s.host_key.clone()),
            })
            .collect(),
    })
}

async fn node_op(ctx: Ctx, cluster: String, node: String, op_kind: NodeOp) -> Reply<NodeResult> {
    let resolved = match ctx.resolve(&cluster).await {
        Ok(r) => r,
        Err(e) => return Reply::refused(e),
    };
    let actor = match resolved.node(&node) {
        Ok(a) => a,
        Err(e) => return Reply::refused(e),
    };
    let name = resolved.spec.name.clone();
    let _guard = ctx.lock(&name).await;
    let params = json!({ "node": node, "op": format!("{op_kind:?}") });
    let op = match Op::begin(&ctx.journal, op_kind.tool(), &name, &params).await {
        Ok(op) => op,
        Err(e) => return Reply::refused(e),
    };
    let result = async {
        let wait = |timeout: Duration| {
            ask_node(&actor, move |reply| NodeMsg::WaitReady { timeout, reply })
        };
        let start = |timeout: Duration| {
            ask_node(&actor, move |reply| NodeMsg::Start {
                ready_timeout: timeout,
                reply,
            })
        };
        match op_kind {
            NodeOp::Crash {
                restart_after,
                wait_for_ssh,
                ssh_timeout,
            } => {
                ask_node(&actor, |reply| NodeMsg::Stop {
                    graceful: None,
                    reply,
                })
                .await?;
                ask(&actor, |r| NodeMsg::Refresh { reply: Some(r) }, None).await?;
                if restart_after {
                    start(ssh_timeout).await?;
                    if wait_for_ssh {
                        wait(ssh_timeout).await?;
                    }
                }
            }
            NodeOp::Start {
                wait_for_ssh,
                ssh_timeout,
            } => {
                start(ssh_timeout).await?;
                if wait_for_ssh {
                    wait(ssh_timeout).await?;
                }
            }
            NodeOp::Stop { mode, timeout } => {
                let graceful = (mode == StopMode::Shutdown).then_some(timeout);
                ask_node(&actor, |reply| NodeMsg::Stop { graceful, reply }).await?;
                ask(&actor, |r| NodeMsg::Refresh { reply: Some(r) }, None).await?;
            }
            NodeOp::Reboot {
                hard,
                wait_for_ssh,
                ssh_timeout,
            } => {
                ask_node(&actor, |reply| NodeMsg::Reboot {
                    hard,
                    ready_timeout: ssh_timeout,
                    reply,
                })
                .await?;
                if wait_for_ssh {
                    wait(ssh_timeout).await?;
                }
            }
        }
        let status = ctx.status(&name).await?;
        let node_status = status
            .nodes
            .into_iter()
            .find(|n| n.name == node)
            .ok_or_else(|| EngineError::Internal("node vanished from status".into()))?;
        Ok(NodeResult {
            cluster_name: name.clone(),
            node: node_status,
        })
    }
    .await;
    op.finish(&result, true).await;
    Reply {
        op_id: Some(op.id),
        result,
    }
}

/// Runs a command on the chosen nodes concurrently. Each node's failure stays that node's: an
/// unreachable node is an `SSH` error in its slot, never a fake exit code.
async fn exec(
    ctx: Ctx,
    cluster: String,
    nodes: Option<Vec<String>>,
    request: ExecRequest,
) -> Reply<crate::exec::NodeOutcomes> {
    let resolved = match ctx.resolve(&cluster).await {
        Ok(r) => r,
        Err(e) => return Reply::refused(e),
    };
    let targets: Vec<(String, ActorRef<NodeMsg>)> = match &nodes {
        None => resolved.nodes.clone(),
        Some(names) => {
            let mut v = Vec::new();
            for n in names {
                match resolved.node(n) {
                    Ok(a) => v.push((n.clone(), a)),
                    Err(e) => return Reply::refused(e),
                }
            }
            v
        }
    };
    let params = json!({
        "nodes": targets.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        "command": request.command,
        "timeout_s": request.timeout.as_secs_f64(),
    });
    let tool = if nodes.as_ref().is_some_and(|n| n.len() == 1) {
        "node_exec"
    } else {
        "node_exec_all"
    };
    let op = match Op::begin(&ctx.journal, tool, &resolved.spec.name, &params).await {
        Ok(op) => op,
        Err(e) => return Reply::refused(e),
    };
    let mut request = request;
    request.spill = Some(crate::exec::Spill {
        store: ctx.outputs.clone(),
        op_id: op.id,
    });
    let outcomes = join_all(targets.iter().map(|(n, a)| {
        let request = request.clone();
        async move {
            (
                n.clone(),
                ask_node(a, |reply| NodeMsg::Exec { request, reply }).await,
            )
        }
    }))
    .await;
    let summary: Result<Vec<(String, Option<i64>, bool)>> = Ok(outcomes
        .iter()
        .map(|(n, r)| match r {
            Ok(x) => (n.clone(), x.exit_code, x.timed_out),
            Err(_) => (n.clone(), None, false),
        })
        .collect());
    op.finish(&summary, true).await;
    Reply {
        op_id: Some(op.id),
        result: Ok(outcomes),
    }
}
