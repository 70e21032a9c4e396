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

use std::collections::{BTreeMap, BTreeSet, HashMap};
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
use vmcluster_engine::recovery::{self, OpKind, Progress, Settle};
use vmcluster_engine::seed;
use vmcluster_engine::state::{DomainState, Readiness};
use vmcluster_engine::topology::{ClusterSpec, DomainType, HostFacts, Topology};
use vmcluster_engine::view::{
    ClusterHandle, ClusterList, ClusterStatus, ClusterSummary, NodeHandle, NodeResult, NodeStatus,
};
use vmcluster_engine::xml::{self, Accel, Owner};
use vmcluster_journal::{BodyV1, Journal, ObjectKind, OpInfo, Outcome, StepState};

use crate::error::{EngineError, Result};
use crate::exec::ExecRequest;
use crate::host;
use crate::hostnet::{HostNetMsg, check_network_owner};
use crate::libvirt::{DomainEvent, Virt};
use crate::node::{self, NodeArgs, NodeMsg, NodeSnapshot};
use crate::ops::{Op, Ticket};
use crate::ssh::SshTarget;

/// Where artifacts land on the nodes (reported in the handle).
pub const ARTIFACT_PATH: &str = "/opt/vmcluster/artifacts";

/// How `cluster_stop` and `node_stop` power nodes off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StopMode {
    /// ACPI power button; forced off after the timeout.
    Shutdown,
    /// Immediate power-off.
    Destroy,
}

/// A single-node command (journaled as JSON, so restart can finish it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// The tool's name.
    pub fn tool(&self) -> &'static str {
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
    pub(crate) fn refused(e: EngineError) -> Reply<T> {
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
        /// Id and controls.
        ticket: Ticket,
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
        /// Id and controls.
        ticket: Ticket,
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
        /// Id and controls.
        ticket: Ticket,
        /// Reply.
        reply: RpcReplyPort<Reply<ClusterStatus>>,
    },
    /// `cluster_destroy`.
    Destroy {
        /// Cluster.
        cluster: String,
        /// Also delete overlays and the extra disks we created.
        remove_overlays: bool,
        /// Id and controls.
        ticket: Ticket,
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
        /// Id and controls.
        ticket: Ticket,
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
    /// `snapshot_create`: a consistent cut of every node (see [`crate::snapshot`]).
    SnapshotCreate {
        /// Cluster.
        cluster: String,
        /// What to take.
        request: crate::snapshot::CreateRequest,
        /// Reply.
        reply: RpcReplyPort<Reply<vmcluster_engine::snapshot::SnapshotInfo>>,
    },
    /// `snapshot_list`.
    SnapshotList {
        /// Cluster.
        cluster: String,
        /// Reply.
        reply: RpcReplyPort<Result<vmcluster_engine::snapshot::SnapshotList>>,
    },
    /// `snapshot_revert`.
    SnapshotRevert {
        /// Cluster.
        cluster: String,
        /// What to revert to, and how.
        request: crate::snapshot::RevertRequest,
        /// Reply.
        reply: RpcReplyPort<Reply<vmcluster_engine::snapshot::SnapshotRevertResult>>,
    },
    /// `snapshot_delete`.
    SnapshotDelete {
        /// Cluster.
        cluster: String,
        /// Snapshot (or logical) name.
        snapshot: String,
        /// Reply.
        reply: RpcReplyPort<Reply<vmcluster_engine::snapshot::SnapshotDeleteResult>>,
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
    /// Restart: settle every operation the journal shows unfinished, re-assert networks.
    /// Answered when done; the engine accepts calls only after that.
    Settle {
        /// Reply.
        reply: RpcReplyPort<()>,
    },
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
    pub(crate) fn node(&self, name: &str) -> Result<ActorRef<NodeMsg>> {
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
pub(crate) struct Ctx {
    me: ActorRef<ClusterMsg>,
    config: Arc<Config>,
    pub(crate) virt: Virt,
    pub(crate) journal: Journal,
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
        // Replay: every cluster the journal shows defined comes back; each NodeActor then asks
        // libvirt for its domain's live state. Unfinished operations are settled by `Settle`,
        // which the engine sends next and awaits before it accepts calls.
        for spec in defined_specs(&st.ctx.journal) {
            if let Err(e) = self.register(&me, &mut st, Arc::new(spec)).await {
                tracing::error!(error = %e, "cannot restore a cluster from the journal");
            }
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
            ClusterMsg::Define {
                topology,
                ticket,
                reply,
            } => {
                let ctx = st.ctx.clone();
                tokio::spawn(async move {
                    let _ = reply.send(define(ctx, topology, ticket).await);
                });
            }
            ClusterMsg::Start {
                cluster,
                wait_for_ssh,
                ssh_timeout,
                ticket,
                reply,
            } => {
                let ctx = st.ctx.clone();
                tokio::spawn(async move {
                    let _ =
                        reply.send(start(ctx, cluster, wait_for_ssh, ssh_timeout, ticket).await);
                });
            }
            ClusterMsg::Stop {
                cluster,
                mode,
                timeout,
                ticket,
                reply,
            } => {
                let ctx = st.ctx.clone();
                tokio::spawn(async move {
                    let _ = reply.send(stop(ctx, cluster, mode, timeout, ticket).await);
                });
            }
            ClusterMsg::Destroy {
                cluster,
                remove_overlays,
                ticket,
                reply,
            } => {
                let ctx = st.ctx.clone();
                tokio::spawn(async move {
                    let _ = reply.send(destroy(ctx, cluster, remove_overlays, ticket).await);
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
                ticket,
                reply,
            } => {
                let ctx = st.ctx.clone();
                tokio::spawn(async move {
                    let _ = reply.send(node_op(ctx, cluster, node, op, ticket).await);
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
            ClusterMsg::SnapshotCreate {
                cluster,
                request,
                reply,
            } => {
                let ctx = st.ctx.clone();
                tokio::spawn(async move {
                    let _ = reply.send(crate::snapshot::create(ctx, cluster, request).await);
                });
            }
            ClusterMsg::SnapshotList { cluster, reply } => {
                let ctx = st.ctx.clone();
                tokio::spawn(async move {
                    let _ = reply.send(crate::snapshot::list(ctx, cluster).await);
                });
            }
            ClusterMsg::SnapshotRevert {
                cluster,
                request,
                reply,
            } => {
                let ctx = st.ctx.clone();
                tokio::spawn(async move {
                    let _ = reply.send(crate::snapshot::revert(ctx, cluster, request).await);
                });
            }
            ClusterMsg::SnapshotDelete {
                cluster,
                snapshot,
                reply,
            } => {
                let ctx = st.ctx.clone();
                tokio::spawn(async move {
                    let _ = reply.send(crate::snapshot::delete(ctx, cluster, snapshot).await);
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
            ClusterMsg::Settle { reply } => {
                let ctx = st.ctx.clone();
                tokio::spawn(async move {
                    settle_all(&ctx).await;
                    let _ = reply.send(());
                });
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

/// The host key pinned for `node` of `cluster`, from the journal's projection.
pub(crate) fn pinned_key(journal: &Journal, cluster: &str, node: &str) -> Option<String> {
    journal.view(|p| {
        p.host_keys
            .get(&(cluster.to_owned(), node.to_owned()))
            .cloned()
    })
}

/// Every cluster the journal shows defined.
fn defined_specs(journal: &Journal) -> Vec<ClusterSpec> {
    journal.view(|p| {
        p.clusters
            .iter()
            .filter_map(|(name, c)| match serde_json::from_str(&c.spec_json) {
                Ok(spec) => Some(spec),
                Err(e) => {
                    tracing::error!(cluster = %name, error = %e, "unreadable cluster spec in the journal");
                    None
                }
            })
            .collect()
    })
}

impl Ctx {
    pub(crate) async fn lock(&self, cluster: &str) -> tokio::sync::OwnedMutexGuard<()> {
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

    pub(crate) async fn resolve(&self, cluster: &str) -> Result<Resolved> {
        let c = cluster.to_owned();
        ask(
            &self.me,
            move |reply| ClusterMsg::Resolve { cluster: c, reply },
            None,
        )
        .await?
    }

    pub(crate) async fn status(&self, cluster: &str) -> Result<ClusterStatus> {
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

pub(crate) async fn ask_node<T: Send + 'static>(
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

async fn define(ctx: Ctx, topology: String, ticket: Ticket) -> Reply<ClusterStatus> {
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
    let op = match Op::begin_with(
        &ctx.journal,
        ticket.op_id,
        ticket.control,
        "cluster_define",
        &spec.name,
        &json!({ "topology_name": topology }),
    )
    .await
    {
        Ok(op) => op,
        Err(e) => return Reply::refused(e),
    };
    let result = match define_steps(&ctx, &op, &spec, existing.is_none(), &public_key).await {
        Ok(()) => ctx.status(&spec.name).await,
        Err(e) => Err(e),
    };
    // A failed define is a saga: undo what it made, newest first, so nothing is half-made.
    let outcome = match &result {
        Ok(_) => Outcome::Applied,
        Err(e) => rollback(&ctx, op.id, &spec.name, &e.to_string()).await,
    };
    op.finish(&result, outcome).await;
    Reply {
        op_id: Some(op.id),
        result,
    }
}

/// The steps of `cluster_define`. Each declares what it will create before creating it.
async fn define_steps(
    ctx: &Ctx,
    op: &Op,
    spec: &Arc<ClusterSpec>,
    new_cluster: bool,
    public_key: &str,
) -> Result<()> {
    if new_cluster {
        op.record(BodyV1::ClusterDefined {
            op_id: op.id,
            cluster: spec.name.clone(),
            spec_json: serde_json::to_string(&**spec)
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
    let plan = plan::define_plan(spec);
    op.plan_len(plan.len());
    for step in plan {
        op.step(&step, async {
            match &step {
                Step::EnsureDir => {
                    if !spec.dir.exists() {
                        op.will_create(ObjectKind::File, spec.dir.to_string_lossy())
                            .await?;
                    }
                    host::ensure_dir(&spec.dir)?;
                    host::write_owner_marker(&spec.dir, &spec.name)?;
                }
                Step::EnsureNetwork => {
                    if ctx.virt.network(&spec.network.name).await?.is_none() {
                        op.will_create(ObjectKind::Network, &spec.network.name)
                            .await?;
                    }
                    let (s, o) = (spec.clone(), owner(None));
                    ask(
                        &ctx.hostnet,
                        move |reply| HostNetMsg::Ensure {
                            spec: s,
                            owner: o,
                            reply,
                        },
                        None,
                    )
                    .await??;
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
                        if !d.path.exists() {
                            op.will_create(ObjectKind::File, d.path.to_string_lossy())
                                .await?;
                        }
                        host::ensure_disk(&d.path, d.size_gb).await?;
                    }
                }
                Step::EnsureOverlay(n) => {
                    let node = spec.node(n).expect("plan node");
                    if !node.overlay.exists() {
                        op.will_create(ObjectKind::File, node.overlay.to_string_lossy())
                            .await?;
                    }
                    if host::ensure_overlay(&node.base_image, &node.overlay).await? {
                        // A fresh disk boots with a fresh host key: forget the old pin.
                        let actor = resolved.node(n)?;
                        ask_node(&actor, |reply| NodeMsg::Unpin { reply }).await?;
                    }
                }
                Step::EnsureSeed(n) => {
                    let node = spec.node(n).expect("plan node");
                    if !node.seed_iso.exists() {
                        op.will_create(ObjectKind::File, node.seed_iso.to_string_lossy())
                            .await?;
                    }
                    host::ensure_seed_iso(
                        &seed::seed_files(spec, node, public_key),
                        &node.seed_iso,
                    )
                    .await?;
                }
                Step::DefineDomain(n) => {
                    let node = spec.node(n).expect("plan node");
                    if ctx.virt.domain_owner(&node.domain_name).await?.is_none() {
                        op.will_create(ObjectKind::Domain, &node.domain_name)
                            .await?;
                        let x = xml::domain_xml(
                            spec,
                            node,
                            accel_of(node.domain_type),
                            &owner(Some(n)),
                        );
                        ctx.virt.define_domain(x).await?;
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
    Ok(())
}

/// Undoes operation `op_id`: removes, newest first, every object it declared and did not
/// remove, and forgets the cluster if this operation first defined it. Every undo is "remove
/// if present", so running it again (after a crash in the middle) is harmless. Returns the
/// outcome to record: `NotApplied` when everything is gone, `Indeterminate` if something could
/// not be removed (it stays in the ledger, and the error is logged).
async fn rollback(ctx: &Ctx, op_id: Uuid, cluster: &str, reason: &str) -> Outcome {
    let op = Op::resume(&ctx.journal, op_id, cluster);
    let Some(info) = ctx.journal.view(|p| p.ops.get(&op_id).cloned()) else {
        tracing::error!(%op_id, "cannot roll back an operation the journal does not know");
        return Outcome::Indeterminate;
    };
    if info.rollback.is_none()
        && let Err(e) = op
            .record(BodyV1::RollbackStarted {
                op_id,
                reason: reason.to_owned(),
            })
            .await
    {
        tracing::error!(%op_id, error = %e, "cannot journal a rollback");
        return Outcome::Indeterminate;
    }
    let spec = ctx
        .journal
        .view(|p| p.clusters.get(cluster).map(|c| c.spec_json.clone()))
        .and_then(|j| serde_json::from_str::<ClusterSpec>(&j).ok())
        .map(Arc::new);
    let mut outcome = Outcome::NotApplied;
    for (kind, id) in info.created.iter().rev() {
        if info.removed.contains(&(*kind, id.clone())) {
            continue;
        }
        let res = undo_object(ctx, cluster, spec.as_ref(), *kind, id).await;
        match res {
            Ok(()) => {
                if let Err(e) = op.removed(*kind, id.clone()).await {
                    tracing::error!(%op_id, error = %e, "cannot journal an undo");
                    outcome = Outcome::Indeterminate;
                }
            }
            Err(e) => {
                tracing::error!(%op_id, kind = kind.as_str(), %id, error = %e, "undo failed; object left in the ledger");
                outcome = Outcome::Indeterminate;
            }
        }
    }
    if info.defined_cluster && outcome == Outcome::NotApplied {
        if let Err(e) = op
            .record(BodyV1::ClusterRemoved {
                op_id,
                cluster: cluster.to_owned(),
            })
            .await
        {
            tracing::error!(%op_id, error = %e, "cannot journal a cluster's removal");
            return Outcome::Indeterminate;
        }
        let c = cluster.to_owned();
        let _ = ask(
            &ctx.me,
            move |reply| ClusterMsg::Unregister { cluster: c, reply },
            None,
        )
        .await;
    }
    tracing::info!(%op_id, %cluster, outcome = ?outcome, "operation rolled back");
    outcome
}

/// Removes one ledger object if it is present (and, for libvirt objects, ours).
async fn undo_object(
    ctx: &Ctx,
    cluster: &str,
    spec: Option<&Arc<ClusterSpec>>,
    kind: ObjectKind,
    id: &str,
) -> Result<()> {
    match kind {
        ObjectKind::Domain => {
            if matches!(ctx.virt.domain_owner(id).await?, Some(Some(o)) if o.cluster == cluster) {
                if ctx.virt.domain_state(id).await? != DomainState::ShutOff {
                    ctx.virt.destroy_domain(id).await?;
                }
                ctx.virt.undefine_domain(id).await?;
            }
            Ok(())
        }
        ObjectKind::Network => {
            if let Some(info) = ctx.virt.network(id).await? {
                check_network_owner(&info, cluster)?;
                ctx.virt.remove_network(id).await?;
            }
            if let Some(spec) = spec
                && spec.network.name == id
                && let Ok(r) = ctx.resolve(cluster).await
            {
                r.network_active.store(false, Ordering::Relaxed);
            }
            Ok(())
        }
        ObjectKind::File => {
            // File system calls, off the runtime's threads.
            let path = PathBuf::from(id);
            tokio::task::spawn_blocking(move || {
                if path.is_dir() {
                    host::remove_file(&path.join(host::OWNER_MARKER))?;
                    match std::fs::remove_dir(&path) {
                        Ok(()) => Ok(()),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                        Err(e) => Err(EngineError::io(format!("remove {}", path.display()), e)),
                    }
                } else {
                    host::remove_file(&host::tmp_sibling(&path))?;
                    host::remove_file(&host::seed_stamp(&path))?;
                    host::remove_dir_all(&host::seed_staging(&path))?;
                    host::remove_file(&path)
                }
            })
            .await
            .map_err(|e| EngineError::Internal(format!("file removal task: {e}")))?
        }
        ObjectKind::Snapshot => {
            // `<node>/<snapshot>`: delete the node's snapshot if its domain has it.
            let (node, snap) = id
                .split_once('/')
                .ok_or_else(|| EngineError::Internal(format!("bad snapshot ledger id {id:?}")))?;
            let domain = spec
                .and_then(|s| s.node(node))
                .map(|n| n.domain_name.clone())
                .ok_or_else(|| EngineError::Internal(format!("no node {node} for {id:?}")))?;
            if matches!(ctx.virt.domain_owner(&domain).await?, Some(Some(o)) if o.cluster == cluster)
            {
                ctx.virt.delete_snapshot(&domain, snap).await?;
            }
            Ok(())
        }
        ObjectKind::Rule => Err(EngineError::Internal(format!(
            "no undo for {} objects yet",
            kind.as_str()
        ))),
    }
}

/// Restart: settles every unfinished operation by the fixed table
/// ([`vmcluster_engine::recovery::settle`]), oldest first, then re-asserts each cluster's
/// network.
async fn settle_all(ctx: &Ctx) {
    let unfinished: Vec<OpInfo> = ctx
        .journal
        .view(|p| p.unfinished().into_iter().cloned().collect());
    for info in unfinished {
        let cluster = info.cluster.clone().unwrap_or_default();
        let _guard = ctx.lock(&cluster).await;
        let kind = OpKind::of_tool(&info.tool);
        let last = info.last_step();
        let progress = match (&info.rollback, last.map(|s| s.state)) {
            (Some(_), _) => Progress::RollingBack,
            (None, None) => Progress::NoStep,
            (None, Some(StepState::Started)) => Progress::Started,
            (None, Some(StepState::Succeeded)) => Progress::Succeeded,
            (None, Some(StepState::Failed)) => Progress::Failed,
        };
        let step = last.map(|s| s.step.as_str());
        let action = recovery::settle(kind, step, progress);
        tracing::warn!(op_id = %info.op_id, tool = %info.tool, %cluster, ?step, ?progress, ?action, "settling an operation left unfinished by the last run");
        let where_ = match last {
            Some(s) => format!(
                " during step {}{}",
                s.step,
                s.node
                    .as_deref()
                    .map(|n| format!(" on node {n}"))
                    .unwrap_or_default()
            ),
            None => String::new(),
        };
        let stopped = format!("The server stopped{where_}");
        let op = Op::resume(&ctx.journal, info.op_id, &cluster);
        let res: (Result<serde_json::Value>, Outcome) = match action {
            Settle::NothingToDo => (
                Err(EngineError::Internal(format!(
                    "{stopped} before the operation changed anything"
                ))),
                Outcome::NotApplied,
            ),
            Settle::RollBack => {
                let outcome = rollback(ctx, info.op_id, &cluster, &stopped).await;
                if kind == OpKind::SnapshotCreate {
                    resume_paused(ctx, &cluster).await;
                }
                (
                    Err(EngineError::Internal(format!(
                        "{stopped}; restart rolled the operation back"
                    ))),
                    outcome,
                )
            }
            Settle::RollForward => match roll_forward(ctx, &op, &info).await {
                Ok(v) => (Ok(v), Outcome::Applied),
                Err(e) => (
                    Err(EngineError::Internal(format!(
                        "{stopped}; restart could not finish it: {e}"
                    ))),
                    Outcome::Indeterminate,
                ),
            },
            Settle::Indeterminate => (
                Err(EngineError::Internal(format!(
                    "{stopped}; whether the command took effect is unknown"
                ))),
                Outcome::Indeterminate,
            ),
        };
        op.finish(&res.0, res.1).await;
    }
    // Re-assert host network state: every defined cluster's network is active.
    let clusters: Vec<String> = ctx.journal.view(|p| p.clusters.keys().cloned().collect());
    for c in clusters {
        let Ok(r) = ctx.resolve(&c).await else {
            continue;
        };
        let name = r.spec.network.name.clone();
        match ctx.virt.network(&name).await {
            Ok(Some(info)) if !info.active => {
                match ask(
                    &ctx.hostnet,
                    move |reply| HostNetMsg::Start { name, reply },
                    None,
                )
                .await
                {
                    Ok(Ok(())) => r.network_active.store(true, Ordering::Relaxed),
                    Ok(Err(e)) | Err(e) => {
                        tracing::error!(cluster = %c, error = %e, "cannot restart a cluster's network")
                    }
                }
            }
            Ok(Some(_)) => r.network_active.store(true, Ordering::Relaxed),
            Ok(None) => {
                tracing::error!(cluster = %c, network = %r.spec.network.name, "a cluster's network is gone; cluster_define recreates it")
            }
            Err(e) => tracing::error!(cluster = %c, error = %e, "cannot read a cluster's network"),
        }
    }
}

/// Resumes every node of `cluster` left paused (a snapshot cut interrupted by a crash).
async fn resume_paused(ctx: &Ctx, cluster: &str) {
    let Ok(r) = ctx.resolve(cluster).await else {
        return;
    };
    for n in &r.spec.nodes {
        if matches!(
            ctx.virt.domain_state(&n.domain_name).await,
            Ok(DomainState::Paused)
        ) {
            match ctx.virt.resume_domain(&n.domain_name).await {
                Ok(()) => {
                    tracing::warn!(%cluster, node = %n.name, "resumed a node a cut had paused")
                }
                Err(e) => {
                    tracing::error!(%cluster, node = %n.name, error = %e, "cannot resume a paused node")
                }
            }
        }
    }
}

/// Finishes an operation whose steps are all "make it so", from its journaled parameters,
/// without waiting for readiness.
async fn roll_forward(ctx: &Ctx, op: &Op, info: &OpInfo) -> Result<serde_json::Value> {
    let cluster = info.cluster.as_deref().unwrap_or_default();
    let params: serde_json::Value = serde_json::from_str(&info.params_json)
        .map_err(|e| EngineError::Internal(format!("unreadable parameters: {e}")))?;
    let to_json = |s: ClusterStatus| serde_json::to_value(s).unwrap_or_default();
    match info.tool.as_str() {
        "cluster_destroy" => {
            let remove_overlays = params["remove_overlays"].as_bool().unwrap_or(false);
            let resolved = ctx.resolve(cluster).await?;
            destroy_steps(ctx, op, &resolved, remove_overlays)
                .await
                .map(to_json)
        }
        "cluster_start" => {
            let resolved = ctx.resolve(cluster).await?;
            start_steps(ctx, op, &resolved, false, crate::DEFAULT_SSH_TIMEOUT)
                .await
                .map(to_json)
        }
        "cluster_stop" => {
            let resolved = ctx.resolve(cluster).await?;
            let mode: StopMode = serde_json::from_value(params["mode"].clone())
                .map_err(|e| EngineError::Internal(format!("unreadable stop mode: {e}")))?;
            let timeout = Duration::from_secs(params["timeout_s"].as_u64().unwrap_or(60));
            stop_steps(ctx, op, &resolved, mode, timeout)
                .await
                .map(to_json)
        }
        "node_crash" | "node_start" | "node_stop" | "node_reboot" => {
            let resolved = ctx.resolve(cluster).await?;
            let node = params["node"].as_str().unwrap_or_default().to_owned();
            let kind: NodeOp = serde_json::from_value(params["op"].clone())
                .map_err(|e| EngineError::Internal(format!("unreadable node op: {e}")))?;
            node_steps(ctx, op, &resolved, &node, kind.without_waiting())
                .await
                .map(|r| serde_json::to_value(r).unwrap_or_default())
        }
        "snapshot_revert" => {
            let done: BTreeSet<String> = info
                .steps
                .iter()
                .filter(|s| s.step == "revert_snapshot" && s.state == StepState::Succeeded)
                .filter_map(|s| s.node.clone())
                .collect();
            crate::snapshot::roll_forward_revert(ctx, op, cluster, &params, &done).await
        }
        "snapshot_delete" => crate::snapshot::roll_forward_delete(ctx, op, cluster, &params).await,
        other => Err(EngineError::Internal(format!(
            "no way to finish a {other} operation"
        ))),
    }
}

async fn start(
    ctx: Ctx,
    cluster: String,
    wait_for_ssh: bool,
    ssh_timeout: Duration,
    ticket: Ticket,
) -> Reply<ClusterStatus> {
    let resolved = match ctx.resolve(&cluster).await {
        Ok(r) => r,
        Err(e) => return Reply::refused(e),
    };
    let name = resolved.spec.name.clone();
    let _guard = ctx.lock(&name).await;
    let params = json!({ "wait_for_ssh": wait_for_ssh, "ssh_timeout_s": ssh_timeout.as_secs() });
    let op = match Op::begin_with(
        &ctx.journal,
        ticket.op_id,
        ticket.control,
        "cluster_start",
        &name,
        &params,
    )
    .await
    {
        Ok(op) => op,
        Err(e) => return Reply::refused(e),
    };
    let result = start_steps(&ctx, &op, &resolved, wait_for_ssh, ssh_timeout).await;
    op.finish(&result, Outcome::Indeterminate).await;
    Reply {
        op_id: Some(op.id),
        result,
    }
}

/// The steps of `cluster_start`: the network, then every node at once, then (optionally)
/// every node's readiness. Powering on is not undone when a node fails to become ready: the
/// caller gets each node's failure and the cluster as it is.
async fn start_steps(
    ctx: &Ctx,
    op: &Op,
    resolved: &Resolved,
    wait_for_ssh: bool,
    ssh_timeout: Duration,
) -> Result<ClusterStatus> {
    op.plan_len(1 + resolved.nodes.len() * if wait_for_ssh { 2 } else { 1 });
    op.step(&Step::StartNetwork, async {
        let net = resolved.spec.network.name.clone();
        ask(
            &ctx.hostnet,
            move |reply| HostNetMsg::Start { name: net, reply },
            None,
        )
        .await??;
        resolved.network_active.store(true, Ordering::Relaxed);
        Ok(())
    })
    .await?;
    on_nodes(&resolved.nodes, |n, a| async move {
        op.step(&Step::StartDomain(n), async {
            ask_node(&a, |reply| NodeMsg::Start {
                ready_timeout: ssh_timeout,
                reply,
            })
            .await
        })
        .await
    })
    .await?;
    if wait_for_ssh {
        on_nodes(&resolved.nodes, |n, a| async move {
            op.step(&Step::WaitReady(n), async {
                ask_node(&a, |reply| NodeMsg::WaitReady {
                    timeout: ssh_timeout,
                    reply,
                })
                .await
            })
            .await
        })
        .await?;
    }
    ctx.status(&resolved.spec.name).await
}

async fn stop(
    ctx: Ctx,
    cluster: String,
    mode: StopMode,
    timeout: Duration,
    ticket: Ticket,
) -> Reply<ClusterStatus> {
    let resolved = match ctx.resolve(&cluster).await {
        Ok(r) => r,
        Err(e) => return Reply::refused(e),
    };
    let name = resolved.spec.name.clone();
    let _guard = ctx.lock(&name).await;
    let params = json!({ "mode": mode, "timeout_s": timeout.as_secs() });
    let op = match Op::begin_with(
        &ctx.journal,
        ticket.op_id,
        ticket.control,
        "cluster_stop",
        &name,
        &params,
    )
    .await
    {
        Ok(op) => op,
        Err(e) => return Reply::refused(e),
    };
    let result = stop_steps(&ctx, &op, &resolved, mode, timeout).await;
    op.finish(&result, Outcome::Indeterminate).await;
    Reply {
        op_id: Some(op.id),
        result,
    }
}

/// The steps of `cluster_stop`: every node powered off at once.
async fn stop_steps(
    ctx: &Ctx,
    op: &Op,
    resolved: &Resolved,
    mode: StopMode,
    timeout: Duration,
) -> Result<ClusterStatus> {
    let graceful = (mode == StopMode::Shutdown).then_some(timeout);
    op.plan_len(resolved.nodes.len());
    on_nodes(&resolved.nodes, |n, a| async move {
        op.step(&Step::StopDomain(n), async {
            ask_node(&a, |reply| NodeMsg::Stop { graceful, reply }).await?;
            ask(&a, |r| NodeMsg::Refresh { reply: Some(r) }, None).await?;
            Ok(())
        })
        .await
    })
    .await?;
    ctx.status(&resolved.spec.name).await
}

async fn destroy(
    ctx: Ctx,
    cluster: String,
    remove_overlays: bool,
    ticket: Ticket,
) -> Reply<ClusterStatus> {
    let resolved = match ctx.resolve(&cluster).await {
        Ok(r) => r,
        Err(e) => return Reply::refused(e),
    };
    let spec = resolved.spec.clone();
    let _guard = ctx.lock(&spec.name).await;
    let op = match Op::begin_with(
        &ctx.journal,
        ticket.op_id,
        ticket.control,
        "cluster_destroy",
        &spec.name,
        &json!({ "remove_overlays": remove_overlays }),
    )
    .await
    {
        Ok(op) => op,
        Err(e) => return Reply::refused(e),
    };
    let result = destroy_steps(&ctx, &op, &resolved, remove_overlays).await;
    // Destruction cannot be undone; a failure leaves the cluster defined and partly torn down,
    // and calling cluster_destroy again finishes it (restart does the same).
    op.finish(&result, Outcome::Indeterminate).await;
    Reply {
        op_id: Some(op.id),
        result,
    }
}

/// The steps of `cluster_destroy`; every one is "remove if present", so they can run again.
async fn destroy_steps(
    ctx: &Ctx,
    op: &Op,
    resolved: &Resolved,
    remove_overlays: bool,
) -> Result<ClusterStatus> {
    let spec = resolved.spec.clone();
    let ours = created_files(&ctx.journal, &spec.name);
    let plan = plan::destroy_plan(&spec, remove_overlays);
    op.plan_len(plan.len());
    for step in plan {
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
                    }
                    op.removed(ObjectKind::Domain, &node.domain_name).await?;
                }
                (Step::RemoveNodeFiles(_), Some(node)) => {
                    host::remove_file(&host::seed_stamp(&node.seed_iso))?;
                    host::remove_file(&host::tmp_sibling(&node.seed_iso))?;
                    host::remove_dir_all(&host::seed_staging(&node.seed_iso))?;
                    for f in [&node.seed_iso, &node.console_log] {
                        host::remove_file(f)?;
                        op.removed(ObjectKind::File, f.to_string_lossy()).await?;
                    }
                }
                (Step::RemoveOverlay(_), Some(node)) => {
                    host::remove_file(&host::tmp_sibling(&node.overlay))?;
                    host::remove_file(&node.overlay)?;
                    op.removed(ObjectKind::File, node.overlay.to_string_lossy()).await?;
                    for d in node.extra_disks.iter().filter(|d| ours.contains(&d.path)) {
                        host::remove_file(&host::tmp_sibling(&d.path))?;
                        host::remove_file(&d.path)?;
                        op.removed(ObjectKind::File, d.path.to_string_lossy()).await?;
                    }
                }
                (Step::RemoveNetwork, _) => {
                    let s = spec.clone();
                    ask(&ctx.hostnet, move |reply| HostNetMsg::Remove { spec: s, reply }, None).await??;
                    op.removed(ObjectKind::Network, &spec.network.name).await?;
                    resolved.network_active.store(false, Ordering::Relaxed);
                }
                (Step::RemoveDir, _) => {
                    host::remove_file(&spec.dir.join(host::OWNER_MARKER))?;
                    match std::fs::remove_dir(&spec.dir) {
                        Ok(()) => op.removed(ObjectKind::File, spec.dir.to_string_lossy()).await?,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            op.removed(ObjectKind::File, spec.dir.to_string_lossy()).await?
                        }
                        Err(e) => tracing::warn!(dir = %spec.dir.display(), error = %e, "cluster directory left in place"),
                    }
                }
                (other, _) => return Err(EngineError::Internal(format!("step {} is not part of destroy", other.name()))),
            }
            Ok(())
        })
        .await?;
    }
    // Ledger entries for files declared but never made (a define cut short) go too.
    for f in created_files(&ctx.journal, &spec.name) {
        let kept = !remove_overlays
            && spec.nodes.iter().any(|n| {
                n.overlay == f || n.extra_disks.iter().any(|d| d.path == f) || spec.dir == f
            });
        if !kept && !f.exists() {
            op.removed(ObjectKind::File, f.to_string_lossy()).await?;
        }
    }
    let status = status_after_destroy(&spec);
    op.record(BodyV1::ClusterRemoved {
        op_id: op.id,
        cluster: spec.name.clone(),
    })
    .await?;
    let c = spec.name.clone();
    ask(
        &ctx.me,
        move |reply| ClusterMsg::Unregister { cluster: c, reply },
        None,
    )
    .await?;
    Ok(status)
}

impl NodeOp {
    /// The same power change without waiting for readiness (restart finishes it this way).
    fn without_waiting(self) -> NodeOp {
        match self {
            NodeOp::Crash {
                restart_after,
                ssh_timeout,
                ..
            } => NodeOp::Crash {
                restart_after,
                wait_for_ssh: false,
                ssh_timeout,
            },
            NodeOp::Start { ssh_timeout, .. } => NodeOp::Start {
                wait_for_ssh: false,
                ssh_timeout,
            },
            NodeOp::Reboot {
                hard, ssh_timeout, ..
            } => NodeOp::Reboot {
                hard,
                wait_for_ssh: false,
                ssh_timeout,
            },
            stop @ NodeOp::Stop { .. } => stop,
        }
    }
}

async fn node_op(
    ctx: Ctx,
    cluster: String,
    node: String,
    op_kind: NodeOp,
    ticket: Ticket,
) -> Reply<NodeResult> {
    let resolved = match ctx.resolve(&cluster).await {
        Ok(r) => r,
        Err(e) => return Reply::refused(e),
    };
    if let Err(e) = resolved.node(&node) {
        return Reply::refused(e);
    }
    let name = resolved.spec.name.clone();
    let _guard = ctx.lock(&name).await;
    let params = json!({ "node": node, "op": op_kind });
    let op = match Op::begin_with(
        &ctx.journal,
        ticket.op_id,
        ticket.control,
        op_kind.tool(),
        &name,
        &params,
    )
    .await
    {
        Ok(op) => op,
        Err(e) => return Reply::refused(e),
    };
    let result = node_steps(&ctx, &op, &resolved, &node, op_kind).await;
    op.finish(&result, Outcome::Indeterminate).await;
    Reply {
        op_id: Some(op.id),
        result,
    }
}

async fn node_wait(op: &Op, actor: &ActorRef<NodeMsg>, n: &str, timeout: Duration) -> Result<()> {
    op.step(
        &Step::WaitReady(n.to_owned()),
        ask_node(actor, move |reply| NodeMsg::WaitReady { timeout, reply }),
    )
    .await
}

async fn node_start(op: &Op, actor: &ActorRef<NodeMsg>, n: &str, timeout: Duration) -> Result<()> {
    op.step(
        &Step::StartDomain(n.to_owned()),
        ask_node(actor, move |reply| NodeMsg::Start {
            ready_timeout: timeout,
            reply,
        }),
    )
    .await
}

async fn node_power_off(
    op: &Op,
    actor: &ActorRef<NodeMsg>,
    n: &str,
    graceful: Option<Duration>,
) -> Result<()> {
    op.step(&Step::StopDomain(n.to_owned()), async {
        ask_node(actor, |reply| NodeMsg::Stop { graceful, reply }).await?;
        ask(actor, |r| NodeMsg::Refresh { reply: Some(r) }, None).await?;
        Ok(())
    })
    .await
}

/// The steps of `node_crash`, `node_start`, `node_stop` and `node_reboot`.
async fn node_steps(
    ctx: &Ctx,
    op: &Op,
    resolved: &Resolved,
    node: &str,
    op_kind: NodeOp,
) -> Result<NodeResult> {
    let actor = resolved.node(node)?;
    let n = node.to_owned();
    match op_kind {
        NodeOp::Crash {
            restart_after,
            wait_for_ssh,
            ssh_timeout,
        } => {
            node_power_off(op, &actor, &n, None).await?;
            if restart_after {
                node_start(op, &actor, &n, ssh_timeout).await?;
                if wait_for_ssh {
                    node_wait(op, &actor, &n, ssh_timeout).await?;
                }
            }
        }
        NodeOp::Start {
            wait_for_ssh,
            ssh_timeout,
        } => {
            node_start(op, &actor, &n, ssh_timeout).await?;
            if wait_for_ssh {
                node_wait(op, &actor, &n, ssh_timeout).await?;
            }
        }
        NodeOp::Stop { mode, timeout } => {
            node_power_off(
                op,
                &actor,
                &n,
                (mode == StopMode::Shutdown).then_some(timeout),
            )
            .await?;
        }
        NodeOp::Reboot {
            hard,
            wait_for_ssh,
            ssh_timeout,
        } => {
            op.step(
                &Step::RebootDomain(n.clone()),
                ask_node(&actor, |reply| NodeMsg::Reboot {
                    hard,
                    ready_timeout: ssh_timeout,
                    reply,
                }),
            )
            .await?;
            if wait_for_ssh {
                node_wait(op, &actor, &n, ssh_timeout).await?;
            }
        }
    }
    let status = ctx.status(&resolved.spec.name).await?;
    let node_status = status
        .nodes
        .into_iter()
        .find(|s| s.name == node)
        .ok_or_else(|| EngineError::Internal("node vanished from status".into()))?;
    Ok(NodeResult {
        cluster_name: resolved.spec.name.clone(),
        node: node_status,
    })
}

/// Runs `f` on every node concurrently and gathers per-node failures.
async fn on_nodes<F, Fut>(nodes: &[(String, ActorRef<NodeMsg>)], f: F) -> Result<()>
where
    F: Fn(String, ActorRef<NodeMsg>) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let results = join_all(nodes.iter().map(|(n, a)| {
        let fut = f(n.clone(), a.clone());
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

/// Files this cluster's operations created and did not remove (the journal's ledger).
fn created_files(journal: &Journal, cluster: &str) -> Vec<PathBuf> {
    journal.view(|p| {
        p.owned(cluster)
            .filter(|(k, _)| *k == ObjectKind::File)
            .map(|(_, id)| PathBuf::from(id))
            .collect()
    })
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
    let tool = match request.tool {
        Some(t) => t,
        None if nodes.as_ref().is_some_and(|n| n.len() == 1) => "node_exec",
        None => "node_exec_all",
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
    op.finish(&summary, Outcome::Indeterminate).await;
    Reply {
        op_id: Some(op.id),
        result: Ok(outcomes),
    }
}
