//! The actors of vmcluster: they own every libvirt connection, SSH session and background task.
//!
//! [`Engine`] is the handle the MCP server and the CLI hold. Each of its methods is one
//! request/reply exchange with the [`cluster::ClusterActor`]:
//!
//! 1. the caller builds a message carrying a `RpcReplyPort`;
//! 2. the actor validates what it can answer from its own state (unknown cluster → `NOT_FOUND`);
//! 3. work that touches the host runs in a task holding the cluster's operation lock, so the
//!    actor keeps answering `cluster_status` while a cluster boots;
//! 4. that task journals the command before its first side effect ([`ops::Op`]);
//! 5. it sends a typed `Result` back through the port; the caller maps errors once.
//!
//! **Invariant:** this is the only crate that spawns tasks or opens connections; the MCP layer
//! never touches libvirt, SSH or the journal directly.

pub mod cluster;
pub mod error;
pub mod events;
pub mod exec;
pub mod files;
pub mod host;
pub mod hostnet;
pub mod libvirt;
pub mod node;
pub mod ops;
pub mod optrack;
pub mod outputs;
pub mod snapshot;
pub mod ssh;

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use vmcluster_engine::config::Config;
use vmcluster_engine::view::{
    ClusterHandle, ClusterList, ClusterStatus, NodeResult, OpList, OpStatus,
};
use vmcluster_journal::Journal;

use cluster::{ClusterActor, ClusterArgs, ClusterMsg, ask};
pub use cluster::{NodeOp, Reply, StopMode};
pub use error::{EngineError, Result};
use hostnet::{HostNetActor, HostNetMsg};
pub use ops::OpProgress;
use ops::{OpControl, Ticket};
use optrack::OpTracker;

/// How a caller wants a slow command run.
#[derive(Debug, Default)]
pub struct Submit {
    /// Return `Running` after this long (the work goes on); `None` waits for the end.
    pub wait: Option<Duration>,
    /// Cancels the command at its next step boundary.
    pub cancel: Option<CancellationToken>,
    /// Receives the command's progress.
    pub progress: Option<watch::Sender<OpProgress>>,
}

/// A slow command's answer: its reply, or its id when the caller's wait ran out first.
#[derive(Debug)]
pub enum Submitted<T> {
    /// It ended within the wait.
    Done(Reply<T>),
    /// It is still running; ask `op_status` / `op_wait` with this id.
    Running {
        /// The operation's id.
        op_id: Uuid,
    },
}

impl<T> Submitted<T> {
    /// The reply, when the caller waited for the end.
    fn into_reply(self) -> Reply<T> {
        match self {
            Submitted::Done(r) => r,
            Submitted::Running { op_id } => Reply {
                op_id: Some(op_id),
                result: Err(EngineError::Internal(
                    "the operation is still running".into(),
                )),
            },
        }
    }
}

/// The running engine: actors, libvirt connection and journal of one process.
#[derive(Debug, Clone)]
pub struct Engine {
    cluster: ActorRef<ClusterMsg>,
    hostnet: ActorRef<HostNetMsg>,
    journal: Journal,
    events: events::EventFeed,
    config: Arc<Config>,
    tracker: Arc<OpTracker>,
    outputs: outputs::OutputStore,
}

impl Engine {
    /// Opens the journal and libvirt, replays the journal and starts the actors.
    pub async fn start(config: Config) -> Result<Engine> {
        let config = Arc::new(config);
        host::ensure_dir(&config.state_dir)?;
        let (journal, recovery) = Journal::open(&config.state_dir.join("journal"))?;
        if recovery.discarded_tail {
            tracing::warn!("the journal's last record was torn and has been discarded");
        }
        let outputs = outputs::OutputStore::open(&config.state_dir.join("exec-outputs"))?;
        let (virt, mut events) = libvirt::Virt::open(&config.libvirt_uri).await?;
        let (hostnet, _) = Actor::spawn(None, HostNetActor, virt.clone())
            .await
            .map_err(|e| EngineError::Internal(format!("spawn host network actor: {e}")))?;
        let args = ClusterArgs {
            config: config.clone(),
            virt,
            journal: journal.clone(),
            hostnet: hostnet.clone(),
            outputs: outputs.clone(),
        };
        let (cluster, _) = Actor::spawn(None, ClusterActor, args)
            .await
            .map_err(|e| EngineError::Internal(format!("spawn cluster actor: {e}")))?;
        let router = cluster.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if router.cast(ClusterMsg::Domain(ev)).is_err() {
                    break;
                }
            }
        });
        // Settle what the last run left in flight before accepting any call.
        ask(&cluster, |reply| ClusterMsg::Settle { reply }, None).await?;
        Ok(Engine {
            cluster,
            hostnet,
            events: events::EventFeed::new(journal.clone()),
            journal,
            config,
            tracker: Arc::default(),
            outputs,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The journal (read-only use: tailing, audits).
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The journal as a stream of events (`vmcluster events`, the MCP event resources).
    pub fn events(&self) -> &events::EventFeed {
        &self.events
    }

    /// Stops the actors and waits until they are gone, so the journal and the actors' registered
    /// names are released when this returns (another engine may then open the same state).
    pub async fn shutdown(self) {
        let budget = Some(Duration::from_secs(10));
        let nodes = self.cluster.get_children();
        let _ = self.cluster.stop_and_wait(None, budget).await;
        for n in nodes {
            let _ = n.wait(budget).await;
        }
        let _ = self.hostnet.stop_and_wait(None, budget).await;
    }

    async fn reply<T: Send + 'static>(
        &self,
        msg: impl FnOnce(ractor::RpcReplyPort<Reply<T>>) -> ClusterMsg,
    ) -> Reply<T> {
        match ask(&self.cluster, msg, None).await {
            Ok(r) => r,
            Err(e) => Reply {
                op_id: None,
                result: Err(e),
            },
        }
    }

    /// Sends a journaled command with a fresh op id, and waits for it as `opts` says.
    async fn submit<T: Send + 'static>(
        &self,
        tool: &str,
        cluster: Option<&str>,
        opts: Submit,
        msg: impl FnOnce(Ticket, ractor::RpcReplyPort<Reply<T>>) -> ClusterMsg + Send + 'static,
    ) -> Submitted<T> {
        let ticket = Ticket {
            op_id: Uuid::now_v7(),
            control: OpControl {
                cancel: opts.cancel.unwrap_or_default(),
                progress: opts.progress,
            },
        };
        let op_id = ticket.op_id;
        self.tracker
            .register(op_id, tool, cluster, ticket.control.cancel.clone());
        let (tx, rx) = oneshot::channel();
        let engine = self.clone();
        tokio::spawn(async move {
            let reply = engine.reply(|reply| msg(ticket, reply)).await;
            let refused = match (&reply.op_id, &reply.result) {
                (None, Err(e)) => Some(e),
                _ => None,
            };
            engine.tracker.complete(op_id, refused);
            let _ = tx.send(reply);
        });
        let lost = || Reply {
            op_id: Some(op_id),
            result: Err(EngineError::Internal(
                "the command's task ended without a reply".into(),
            )),
        };
        match opts.wait {
            None => Submitted::Done(rx.await.unwrap_or_else(|_| lost())),
            Some(w) => match tokio::time::timeout(w, rx).await {
                Ok(r) => Submitted::Done(r.unwrap_or_else(|_| lost())),
                Err(_) => Submitted::Running { op_id },
            },
        }
    }

    /// `cluster_define`: converge the host to the topology `topology`.
    pub async fn define(&self, topology: &str) -> Reply<ClusterStatus> {
        self.define_with(topology, Submit::default())
            .await
            .into_reply()
    }

    /// [`Engine::define`] with a bounded wait, cancellation and progress.
    pub async fn define_with(&self, topology: &str, opts: Submit) -> Submitted<ClusterStatus> {
        let topology = topology.to_owned();
        self.submit("cluster_define", None, opts, |ticket, reply| {
            ClusterMsg::Define {
                topology,
                ticket,
                reply,
            }
        })
        .await
    }

    /// `cluster_start`: boot every node, optionally waiting for readiness.
    pub async fn start_cluster(
        &self,
        cluster: &str,
        wait_for_ssh: bool,
        ssh_timeout: Duration,
    ) -> Reply<ClusterStatus> {
        self.start_cluster_with(cluster, wait_for_ssh, ssh_timeout, Submit::default())
            .await
            .into_reply()
    }

    /// [`Engine::start_cluster`] with a bounded wait, cancellation and progress.
    pub async fn start_cluster_with(
        &self,
        cluster: &str,
        wait_for_ssh: bool,
        ssh_timeout: Duration,
        opts: Submit,
    ) -> Submitted<ClusterStatus> {
        let c = cluster.to_owned();
        self.submit(
            "cluster_start",
            Some(cluster),
            opts,
            move |ticket, reply| ClusterMsg::Start {
                cluster: c,
                wait_for_ssh,
                ssh_timeout,
                ticket,
                reply,
            },
        )
        .await
    }

    /// `cluster_stop`.
    pub async fn stop_cluster(
        &self,
        cluster: &str,
        mode: StopMode,
        timeout: Duration,
    ) -> Reply<ClusterStatus> {
        self.stop_cluster_with(cluster, mode, timeout, Submit::default())
            .await
            .into_reply()
    }

    /// [`Engine::stop_cluster`] with a bounded wait, cancellation and progress.
    pub async fn stop_cluster_with(
        &self,
        cluster: &str,
        mode: StopMode,
        timeout: Duration,
        opts: Submit,
    ) -> Submitted<ClusterStatus> {
        let c = cluster.to_owned();
        self.submit("cluster_stop", Some(cluster), opts, move |ticket, reply| {
            ClusterMsg::Stop {
                cluster: c,
                mode,
                timeout,
                ticket,
                reply,
            }
        })
        .await
    }

    /// `cluster_destroy`.
    pub async fn destroy(&self, cluster: &str, remove_overlays: bool) -> Reply<ClusterStatus> {
        self.destroy_with(cluster, remove_overlays, Submit::default())
            .await
            .into_reply()
    }

    /// [`Engine::destroy`] with a bounded wait, cancellation and progress.
    pub async fn destroy_with(
        &self,
        cluster: &str,
        remove_overlays: bool,
        opts: Submit,
    ) -> Submitted<ClusterStatus> {
        let c = cluster.to_owned();
        self.submit(
            "cluster_destroy",
            Some(cluster),
            opts,
            move |ticket, reply| ClusterMsg::Destroy {
                cluster: c,
                remove_overlays,
                ticket,
                reply,
            },
        )
        .await
    }

    /// `op_status`: an operation as the journal records it.
    pub fn op_status(&self, op_id: Uuid) -> Result<OpStatus> {
        optrack::op_status(&self.journal, &self.tracker, op_id)
    }

    /// `op_wait`: waits up to `wait` for an operation to finish.
    pub async fn op_wait(&self, op_id: Uuid, wait: Duration) -> Result<OpStatus> {
        optrack::op_wait(&self.journal, &self.tracker, op_id, wait).await
    }

    /// `op_list`: recent operations, newest first.
    pub fn op_list(&self, cluster: Option<&str>, limit: usize) -> OpList {
        optrack::op_list(&self.journal, cluster, limit)
    }

    /// `op_cancel`: asks a running operation to stop at its next step boundary.
    pub fn op_cancel(&self, op_id: Uuid) -> Result<OpStatus> {
        let status = self.op_status(op_id)?;
        if status.state != vmcluster_engine::view::OpState::Running || !self.tracker.cancel(op_id) {
            return Err(EngineError::FailedPrecondition(format!(
                "Operation {op_id} is not running in this server"
            )));
        }
        Ok(status)
    }

    /// `cluster_status`: from actor state, never waiting on the network.
    pub async fn status(&self, cluster: &str) -> Result<ClusterStatus> {
        let cluster = cluster.to_owned();
        ask(
            &self.cluster,
            |reply| ClusterMsg::Status { cluster, reply },
            None,
        )
        .await?
    }

    /// `cluster_handle`.
    pub async fn handle(&self, cluster: &str) -> Result<ClusterHandle> {
        let cluster = cluster.to_owned();
        ask(
            &self.cluster,
            |reply| ClusterMsg::Handle { cluster, reply },
            None,
        )
        .await?
    }

    /// `cluster_list`.
    pub async fn list(&self) -> Result<ClusterList> {
        ask(&self.cluster, |reply| ClusterMsg::List { reply }, None).await
    }

    /// `node_exec` / `node_exec_all`: runs `request` on `nodes` (every node when `None`).
    pub async fn exec(
        &self,
        cluster: &str,
        nodes: Option<Vec<String>>,
        request: exec::ExecRequest,
    ) -> Reply<crate::exec::NodeOutcomes> {
        let cluster = cluster.to_owned();
        self.reply(|reply| ClusterMsg::Exec {
            cluster,
            nodes,
            request,
            reply,
        })
        .await
    }

    /// `dmesg_mark`: writes one fresh marker into the kernel log of each chosen node (all when
    /// `None`). Returns the marker id and each node's outcome.
    pub async fn dmesg_mark(
        &self,
        cluster: &str,
        nodes: Option<Vec<String>>,
    ) -> (String, Reply<exec::NodeOutcomes>) {
        let id = format!("{}", uuid::Uuid::now_v7().simple());
        let line = vmcluster_engine::dmesg::marker_line(&id);
        let mut request = exec::ExecRequest::new(
            format!("printf '%s\\n' {} > /dev/kmsg", exec::shell_quote(&line)),
            Duration::from_secs(20),
        );
        request.tool = Some("dmesg_mark");
        (id, self.exec(cluster, nodes, request).await)
    }

    /// `dmesg_collect`: each chosen node's kernel log after `marker` (or after what the last
    /// collect returned), filtered and capped.
    pub async fn dmesg_collect(
        &self,
        cluster: &str,
        nodes: Option<Vec<String>>,
        marker: Option<String>,
        filter: vmcluster_engine::dmesg::FilterLevel,
        max_lines: usize,
    ) -> Result<crate::exec::NodeCollections> {
        let cluster = cluster.to_owned();
        ask(
            &self.cluster,
            |reply| ClusterMsg::Dmesg {
                cluster,
                nodes,
                marker,
                filter,
                max_lines,
                reply,
            },
            None,
        )
        .await?
    }

    /// `node_console`: the last `lines` lines of a node's serial console.
    pub async fn console(
        &self,
        cluster: &str,
        node: &str,
        lines: usize,
    ) -> Result<vmcluster_engine::view::ConsoleTail> {
        let (cluster, node) = (cluster.to_owned(), node.to_owned());
        ask(
            &self.cluster,
            |reply| ClusterMsg::Console {
                cluster,
                node,
                lines,
                reply,
            },
            None,
        )
        .await?
    }

    /// `node_upload` / `node_download`: moves one file between this host and a node.
    pub async fn transfer(
        &self,
        cluster: &str,
        node: &str,
        transfer: files::Transfer,
    ) -> Reply<vmcluster_engine::view::FileTransferResult> {
        let (cluster, node) = (cluster.to_owned(), node.to_owned());
        self.reply(|reply| ClusterMsg::Transfer {
            cluster,
            node,
            transfer,
            reply,
        })
        .await
    }

    /// The full output behind an exec output URI (`NOT_FOUND` when unknown or evicted).
    pub async fn exec_output(&self, uri: &str) -> Result<Vec<u8>> {
        let Some((op_id, node, stream)) = outputs::parse_uri(uri) else {
            return Err(EngineError::NotFound {
                kind: "exec output",
                name: uri.to_owned(),
            });
        };
        let store = self.outputs.clone();
        tokio::task::spawn_blocking(move || store.read(op_id, &node, stream))
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))?
    }

    /// Every kept exec output, oldest first.
    pub async fn exec_outputs(&self) -> Vec<outputs::StoredOutput> {
        let store = self.outputs.clone();
        tokio::task::spawn_blocking(move || store.list())
            .await
            .unwrap_or_default()
    }

    /// `node_crash`, `node_start`, `node_stop`, `node_reboot`.
    pub async fn node(&self, cluster: &str, node: &str, op: NodeOp) -> Reply<NodeResult> {
        self.node_with(cluster, node, op, Submit::default())
            .await
            .into_reply()
    }

    /// [`Engine::node`] with a bounded wait, cancellation and progress.
    pub async fn node_with(
        &self,
        cluster: &str,
        node: &str,
        op: NodeOp,
        opts: Submit,
    ) -> Submitted<NodeResult> {
        let (c, node) = (cluster.to_owned(), node.to_owned());
        self.submit(op.tool(), Some(cluster), opts, move |ticket, reply| {
            ClusterMsg::Node {
                cluster: c,
                node,
                op,
                ticket,
                reply,
            }
        })
        .await
    }
}

impl Engine {
    /// `snapshot_create`: a consistent cut of every node (see [`snapshot`]).
    pub async fn snapshot_create(
        &self,
        cluster: &str,
        request: snapshot::CreateRequest,
    ) -> Reply<vmcluster_engine::snapshot::SnapshotInfo> {
        let cluster = cluster.to_owned();
        self.reply(|reply| ClusterMsg::SnapshotCreate {
            cluster,
            request,
            reply,
        })
        .await
    }

    /// `snapshot_list`.
    pub async fn snapshot_list(
        &self,
        cluster: &str,
    ) -> Result<vmcluster_engine::snapshot::SnapshotList> {
        let cluster = cluster.to_owned();
        ask(
            &self.cluster,
            |reply| ClusterMsg::SnapshotList { cluster, reply },
            None,
        )
        .await?
    }

    /// `snapshot_revert`.
    pub async fn snapshot_revert(
        &self,
        cluster: &str,
        request: snapshot::RevertRequest,
    ) -> Reply<vmcluster_engine::snapshot::SnapshotRevertResult> {
        let cluster = cluster.to_owned();
        self.reply(|reply| ClusterMsg::SnapshotRevert {
            cluster,
            request,
            reply,
        })
        .await
    }

    /// `snapshot_delete`.
    pub async fn snapshot_delete(
        &self,
        cluster: &str,
        snapshot: &str,
    ) -> Reply<vmcluster_engine::snapshot::SnapshotDeleteResult> {
        let (cluster, snapshot) = (cluster.to_owned(), snapshot.to_owned());
        self.reply(|reply| ClusterMsg::SnapshotDelete {
            cluster,
            snapshot,
            reply,
        })
        .await
    }
}

/// How long to wait by default for nodes to become ready.
pub const DEFAULT_SSH_TIMEOUT: Duration = Duration::from_secs(120);
