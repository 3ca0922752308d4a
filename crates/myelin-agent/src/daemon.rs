//! Starting the agent: what runs, and how the pieces talk.
//!
//! ```text
//!   CNI plugin / CLI / lab --HTTP on the unix socket--> server (axum, tokio workers)
//!        |  reads: Snapshots (ArcSwap: endpoints, policy, IPAM views) -- no lock, never waits
//!        |  writes: a command + a oneshot for the answer
//!        v                                   v
//!  [endpoints thread]  EndpointCmd      [policy thread]  PolicyCmd (batched)
//!   records, store(endpoints),           policies, identities, namespaces, rule ids,
//!   endpoint ids; books an ADD,          compiler; the ONLY writer of policy maps,
//!   then spawns a plumbing task --+      endpoint entries, ipcache, policy_cidrs
//!   per ADD (tokio), answered on  |             ^
//!   Plumbed; a DEL's address goes |             | PolicyCmd::Endpoints (identity + policy
//!   back to IPAM after its record |             |  installed, then the entry)
//!                                 v             |
//!   plumbing task: address (IpamCmd::Allocate) -> veth (netlink) -> policy
//!     -> attach on the blocking pool (TCX waits an RCU grace period: concurrent ADDs overlap)
//!     -> routes -> EndpointCmd::Plumbed
//!  [ipam thread]  IpamCmd: the pool, store(allocations + cursor), Snapshots::ipam; drawn in `ipam`
//!  [ct-gc thread]  timer -> Datapath::ct_gc (its own handle; blocking syscalls)
//!  [cluster task]  (with kvstore_endpoints) the only etcd client: cluster identities for the
//!   policy thread (blocking call with a timeout), remote identities and pod addresses to it
//!   (PolicyCmd::Cluster), this node's pods to etcd, the overlay's routes and tunnel_map;
//!   drawn in detail in `cluster/mod.rs`
//!  Datapath (Arc, Send + Sync): owned fds; every call is one syscall-level operation
//! ```

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use myelin_api::{DatapathStatus, Feature, Status};
use myelin_bpf::{AttachMode, Datapath, LoadOptions};
use tracing::{info, warn};

use crate::config::Config;
use crate::endpoints::plumb::Plumber;
use crate::policy::{EngineState, PolicyEngine, PolicySettings, StoredPolicy};
use crate::server::{router, AgentState};
use crate::snapshot::Snapshots;
use crate::store::Store;
use crate::{cluster, endpoints, gc, ipam, masq, policy};
use myelin_netlink::tunnel::TunnelKind;

fn write_sysctl(path: &str, value: &str) -> Result<()> {
    std::fs::write(Path::new("/proc/sys").join(path), value).with_context(|| format!("setting sysctl {path}={value}"))
}

/// Run the agent until SIGTERM/SIGINT; the datapath keeps forwarding after.
pub async fn run(mut cfg: Config) -> Result<()> {
    let started = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let store = Arc::new(Store::open(&cfg.state_dir)?);
    // Given, or claimed from the cluster pool in etcd (and kept in the store).
    let pod_cidr = cluster::podcidr::resolve(&cfg, &store).await?;
    cfg.pod_cidr = Some(pod_cidr);
    if let Some(pool) = cfg.cluster_pool_ipv4_cidr {
        // Other nodes' pods are in the pool: reached unmasqueraded.
        cfg.native_routing_cidrs.push(pool);
    }
    let gateway = cfg.gateway().context("pod_cidr has no host addresses")?;
    info!(node = %cfg.node_name, %pod_cidr, %gateway, "starting");

    // Kernel features: say plainly what is there and what is not.
    myelin_bpf::ensure_bpffs(Path::new("/sys/fs/bpf")).context("mounting bpffs at /sys/fs/bpf")?;
    let mut features: Vec<Feature> = myelin_bpf::probe_features()
        .into_iter()
        .map(|p| Feature { name: p.name, available: p.available, detail: p.detail })
        .collect();
    for f in &features {
        if f.available {
            info!(feature = %f.name, detail = %f.detail, "kernel feature available");
        } else {
            warn!(feature = %f.name, detail = %f.detail, "kernel feature NOT available");
        }
    }

    let node_ip = match cfg.node_ip {
        Some(ip) => ip,
        None => match myelin_netlink::link_ipv4(&cfg.uplink).await? {
            Some((ip, _)) => ip,
            None => bail!("uplink {} has no IPv4 address; set node_ip in the config or fix uplink", cfg.uplink),
        },
    };
    if cfg.ip_forward {
        write_sysctl("net/ipv4/ip_forward", "1")?;
    }
    myelin_netlink::ensure_dummy_with_addr("myelin_host", gateway, 32)
        .await
        .context("creating the gateway device myelin_host")?;

    let bpf_dir = cfg.bpf_dir();
    let attach_mode = match cfg.attach_mode.as_str() {
        "tcx" => Some(AttachMode::Tcx),
        "tc" => Some(AttachMode::Tc),
        _ => None,
    };
    let load = LoadOptions { objects: None, attach_mode };
    let dir = bpf_dir.clone();
    let datapath = tokio::task::spawn_blocking(move || Datapath::load_with(&dir, &load))
        .await?
        .with_context(|| format!("loading the datapath into {}", bpf_dir.display()))?;
    for u in datapath.unavailable() {
        warn!(object = u.object, reason = %u.reason, "datapath object NOT loaded");
    }
    datapath.set_node_config(&myelin_bpf::NodeConfig {
        node_ip,
        gateway,
        pod_cidr: pod_cidr.network(),
        pod_cidr_prefix: pod_cidr.prefix_len(),
    })?;
    let datapath = Arc::new(datapath);

    if cfg.masquerade {
        match masq::install(pod_cidr, &cfg.uplink, &cfg.native_routing_cidrs) {
            Ok(()) => features.push(Feature {
                name: "masquerade".into(),
                available: true,
                detail: format!("nftables, via {}", cfg.uplink),
            }),
            Err(e) => {
                warn!(error = %e, "pod-to-world masquerade is NOT enabled");
                features.push(Feature { name: "masquerade".into(), available: false, detail: e });
            }
        }
    }

    // State: the store, then the policy engine with the stored endpoints (it writes the
    // datapath's policy state), then the endpoints (adopted: nothing that forwards is touched).
    let snapshots = Snapshots::new();
    let state: EngineState = match store.get_kv("policy_engine")? {
        Some(j) => serde_json::from_str(&j).context("the stored policy engine state is corrupt")?,
        None => EngineState::default(),
    };
    let mut policies = Vec::new();
    for (key, json) in store.policies()? {
        match serde_json::from_str::<StoredPolicy>(&json) {
            Ok(p) => policies.push(p),
            Err(e) => warn!(policy = %key, error = %e, "stored policy is unreadable; dropped"),
        }
    }
    let stored = store.snapshot()?;
    let mut engine =
        PolicyEngine::new(state, policies, store.rules()?, stored.endpoints.clone(), vec![node_ip, gateway]);
    let cluster_parts = if cfg.kvstore_endpoints.is_empty() {
        None
    } else {
        let (identities, prepared) = cluster::prepare();
        engine.set_cluster(Box::new(identities));
        Some(prepared)
    };
    // The overlay: its device and programs before any pod is plumbed (pods get its MTU).
    let tunnel_kind = match cfg.routing.as_str() {
        "vxlan" => Some(TunnelKind::Vxlan),
        "geneve" => Some(TunnelKind::Geneve),
        _ => None,
    };
    let (overlay, pod_mtu) = match tunnel_kind {
        Some(kind) => {
            let uplink_mtu = myelin_netlink::link_by_name(&cfg.uplink).await?.map_or(1500, |l| l.mtu);
            let mtu = uplink_mtu.saturating_sub(kind.overhead());
            let o = cluster::overlay::Overlay::setup(kind, &datapath, mtu, node_ip)
                .await
                .with_context(|| format!("setting up the {} overlay", cfg.routing))?;
            features.push(Feature {
                name: "overlay".into(),
                available: true,
                detail: format!("{} ({}), pod MTU {mtu}", cfg.routing, cluster::overlay::device_name(kind)),
            });
            (Some(o), Some(mtu))
        }
        None => (None, None),
    };
    let settings = PolicySettings {
        rule_retention: Duration::from_secs(cfg.rule_retention_hours * 3600),
        publish: cluster_parts.as_ref().map(cluster::Prepared::publisher),
    };
    let (dp, st, sn) = (datapath.clone(), store.clone(), snapshots.clone());
    let policy = tokio::task::spawn_blocking(move || policy::spawn(engine, dp, st, sn, settings))
        .await?
        .context("starting the policy component")?;

    let plumber = Plumber { datapath: datapath.clone(), policy: policy.clone(), gateway, mtu: pod_mtu };
    // IPAM keeps the allocations of recorded endpoints and releases the rest (ADDs a crash
    // interrupted); the endpoints component removes their veths and adopts the others.
    let (pool, orphans) = ipam::restore(&store, &stored, pod_cidr, &endpoints::owners(&stored.endpoints))?;
    let restored = endpoints::restore(stored.endpoints, stored.next_endpoint_id, &orphans, &plumber).await;
    info!(endpoints = restored.records.len(), adopted = restored.adopted, "state restored");

    // Endpoints and policy are in the (possibly new) maps: from now on this build's programs
    // decide every packet.
    let dp = datapath.clone();
    let upgrade = tokio::task::spawn_blocking(move || dp.activate()).await??;
    info!(
        previous_abi = ?upgrade.previous_abi,
        abi = upgrade.abi,
        migrated = upgrade.migrated.len(),
        links_updated = upgrade.links_updated,
        links_current = upgrade.links_current,
        "datapath active"
    );
    for m in &upgrade.migrated {
        info!(map = %m.map, how = %m.how, copied = m.copied, skipped = m.skipped, "map migrated");
    }

    // The node's own hooks: the uplink (tc, and XDP when asked) and the pods' cgroup.
    let uplink = myelin_netlink::link_by_name(&cfg.uplink).await?;
    match uplink {
        Some(link) => {
            let dp = datapath.clone();
            let name = cfg.uplink.clone();
            let xdp = cfg.xdp_prefilter;
            let r = tokio::task::spawn_blocking(move || {
                dp.attach_uplink(&name, link.index)?;
                if !xdp {
                    dp.detach_uplink_xdp(&name)?;
                }
                Ok::<(), myelin_bpf::BpfError>(())
            })
            .await?;
            match r {
                Ok(()) => features.push(Feature { name: "uplink".into(), available: true, detail: cfg.uplink.clone() }),
                Err(e) => {
                    warn!(error = %e, uplink = %cfg.uplink, "uplink programs NOT attached");
                    features.push(Feature { name: "uplink".into(), available: false, detail: e.to_string() });
                }
            }
        }
        None => warn!(uplink = %cfg.uplink, "no such uplink: its programs are not attached"),
    }
    if let Some(cg) = &cfg.cgroup_root {
        let dp = datapath.clone();
        let cg2 = cg.clone();
        match tokio::task::spawn_blocking(move || dp.attach_cgroup(&cg2)).await? {
            Ok(_) => {
                features.push(Feature {
                    name: "socket_lb".into(),
                    available: true,
                    detail: format!("cgroup {}", cg.display()),
                });
                // Per-cgroup traffic accounting (cgroup_skb), attached with the socket programs.
                let on = crate::cgroups::accounting_on(&datapath);
                features.push(Feature {
                    name: "cgroup_traffic".into(),
                    available: on,
                    detail: if on {
                        format!("cgroup_skb ingress/egress on {}: GET /v1/cgroup-traffic", cg.display())
                    } else {
                        "the cgroup_skb object is not loaded (see datapath.unavailable)".into()
                    },
                });
            }
            Err(e) => {
                warn!(error = %e, "socket load balancing NOT attached");
                features.push(Feature { name: "socket_lb".into(), available: false, detail: e.to_string() });
            }
        }
    }

    let ipam = ipam::spawn(pool, store.clone(), snapshots.clone())?;
    let endpoints = endpoints::spawn(
        restored,
        store.clone(),
        ipam.clone(),
        plumber.clone(),
        snapshots.clone(),
        tokio::runtime::Handle::current(),
    )?;
    let gc = gc::spawn(datapath.clone(), Duration::from_secs(cfg.gc_interval_s))?;
    let cluster = match cluster_parts {
        Some(prepared) => {
            let settings = cluster::ClusterSettings {
                endpoints: cfg.kvstore_endpoints.clone(),
                cluster: cfg.cluster_name.clone(),
                node: cfg.node_name.clone(),
                node_ip,
                pod_cidr,
                lease_ttl: Duration::from_secs(cfg.kvstore_lease_ttl_s),
            };
            let status = cluster::start(
                prepared,
                settings,
                policy.clone(),
                datapath.clone(),
                snapshots.clone(),
                overlay,
                Duration::from_secs(5),
            )
            .await;
            if !status.borrow().connected {
                warn!(endpoints = ?cfg.kvstore_endpoints, "the kvstore is not reachable yet; starting with node-local identities");
            }
            Some(status)
        }
        None => None,
    };
    let observability = Arc::new(
        crate::observe::start(&cfg, &datapath, snapshots.clone(), gc.clone(), Vec::new())
            .await
            .context("starting flow observability")?,
    );

    let process = if cfg.process_events {
        let dp = datapath.clone();
        let sn = snapshots.clone();
        match tokio::task::spawn_blocking(move || crate::process::start(&dp, sn, 16_384)).await? {
            Ok(h) => {
                features.push(Feature {
                    name: "process_events".into(),
                    available: true,
                    detail: "tp_btf + tracepoint".into(),
                });
                Some(h)
            }
            Err(e) => {
                warn!(error = %e, "process events NOT available");
                features.push(Feature { name: "process_events".into(), available: false, detail: e });
                None
            }
        }
    } else {
        None
    };
    let status = Status {
        node: cfg.node_name.clone(),
        healthy: true,
        version: env!("CARGO_PKG_VERSION").into(),
        pod_cidr: pod_cidr.to_string(),
        gateway: gateway.to_string(),
        node_ip: node_ip.to_string(),
        bpf_dir: bpf_dir.display().to_string(),
        endpoints: 0,
        features,
        started,
        adopted_endpoints: 0,
        datapath: DatapathStatus {
            objects: datapath.objects().iter().map(|s| (*s).to_owned()).collect(),
            unavailable: datapath
                .unavailable()
                .iter()
                .map(|u| Feature { name: u.object.into(), available: false, detail: u.reason.clone() })
                .collect(),
            attach_mode: datapath.attach_mode().as_str().into(),
            abi: upgrade.abi,
            previous_abi: upgrade.previous_abi,
            migrated: upgrade
                .migrated
                .iter()
                .map(|m| format!("{}: {} (copied {}, skipped {})", m.map, m.how, m.copied, m.skipped))
                .collect(),
            links_updated: upgrade.links_updated,
            gc_runs: 0,
            gc_removed: 0,
        },
        flows: None,
        cluster: None,
    };
    let state = Arc::new(AgentState {
        snapshots,
        endpoints,
        ipam,
        policy,
        plumber,
        datapath,
        gc,
        observability: Some(observability.clone()),
        status,
        debug_api: cfg.debug_api,
        cgroup_root: cfg.cgroup_root.clone(),
        process,
        cluster,
    });

    if let Some(dir) = cfg.socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(&cfg.socket) {
        Ok(()) => info!(socket = %cfg.socket.display(), "removed a stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale socket {}", cfg.socket.display())),
    }
    let listener =
        tokio::net::UnixListener::bind(&cfg.socket).with_context(|| format!("binding {}", cfg.socket.display()))?;
    std::fs::set_permissions(&cfg.socket, std::fs::Permissions::from_mode(0o600))?;
    info!(socket = %cfg.socket.display(), "serving the local API");

    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown_signal()).await?;
    let _ = std::fs::remove_file(&cfg.socket);
    let _ = std::fs::remove_file(cfg.observer_socket());
    // Ingest stops; the history writer stores its open block.
    let obs = observability.clone();
    let _ = tokio::task::spawn_blocking(move || obs.observer.stop()).await;
    info!("stopped; the datapath keeps forwarding");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        _ = int.recv() => info!("SIGINT"),
    }
}
