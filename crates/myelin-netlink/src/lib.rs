//! Kernel glue for links, addresses, routes and neighbours, over rtnetlink.
//!
//! Every `async fn` acts on the network namespace of the *calling thread* (the agent's node
//! netns): each call opens its own netlink socket on the current thread and drives it on the
//! current tokio runtime. Work inside a pod's netns happens on a dedicated OS thread that has
//! `setns`'d into it ([`in_netns`] / [`in_netns_async`]); a tokio worker thread is never moved.
//!
//! ```text
//!  agent runtime (node netns)            dedicated thread (pod netns)
//!  create_pod_veth ──veth add (peer
//!     + IFLA_NET_NS_FD)──────────────▶   rename tmp peer → pod_ifname, addr /32,
//!                  ◀── oneshot result ── up, lo up, gw/32 scope link, default via gw
//!  host side up, or delete host side on any error
//! ```
#![forbid(unsafe_code)]

use std::fmt;
use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

pub mod tunnel;

use futures::TryStreamExt;
use nix::sched::CloneFlags;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkDummy, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// An Ethernet hardware address.
pub type Mac = [u8; 6];

/// Linux limit for interface names (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// A link as seen by the kernel.
#[derive(Debug, Clone)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mac: Mac,
    /// Administratively up (IFF_UP).
    pub up: bool,
    pub mtu: u32,
}

/// What to build for one pod interface (CNI ADD).
#[derive(Debug, Clone)]
pub struct PodVeth {
    /// Host-side name, e.g. "lxc1a2b3c4d5e6f" (<= 15 chars); stays in the agent's netns.
    pub host_ifname: String,
    /// Container netns, e.g. /var/run/netns/NAME or /proc/PID/ns/net.
    pub netns_path: PathBuf,
    /// CNI_IFNAME, e.g. "eth0", inside the container.
    pub pod_ifname: String,
    /// Configured as /32 on `pod_ifname`.
    pub pod_ip: Ipv4Addr,
    /// Pod routes: `gateway/32 dev pod_ifname scope link`, `default via gateway dev pod_ifname`.
    pub gateway: Ipv4Addr,
    pub mtu: Option<u32>,
}

/// What [`create_pod_veth`] built.
#[derive(Debug, Clone)]
pub struct PodVethResult {
    pub host: LinkInfo,
    pub pod_mac: Mac,
    pub pod_ifindex: u32,
}

/// Where an operation ran: the agent's own netns or a named one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Netns {
    /// The calling thread's netns (the agent's node netns).
    Current,
    Path(PathBuf),
}

impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Netns::Current => write!(f, "the current netns"),
            Netns::Path(p) => write!(f, "netns {}", p.display()),
        }
    }
}

#[derive(thiserror::Error, Debug)]
pub enum NetlinkError {
    #[error("network namespace {} does not exist", .0.display())]
    NetnsNotFound(PathBuf),
    #[error("opening network namespace {}: {source}", path.display())]
    NetnsOpen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("entering network namespace {} (setns): {source}", path.display())]
    Setns {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("starting a thread for network namespace {}: {source}", path.display())]
    Thread {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the worker thread in network namespace {} died before finishing", path.display())]
    ThreadDied { path: PathBuf },
    #[error("opening a netlink socket in {ns}: {source}")]
    Socket {
        ns: Netns,
        #[source]
        source: std::io::Error,
    },
    #[error("link {name} already exists in {ns}")]
    LinkExists { name: String, ns: Netns },
    #[error("link {name} not found in {ns}")]
    LinkNotFound { name: String, ns: Netns },
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("{op} in {ns}: {source}")]
    Request {
        /// What was being done, naming the interface, e.g. "adding 10.0.0.5/32 to eth0".
        op: String,
        ns: Netns,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("check of {ifname} in {ns} failed: {reason}")]
    CheckFailed { ifname: String, ns: Netns, reason: String },
    #[error("invalid MAC address {0:?}: expected six hex octets like aa:bb:cc:dd:ee:ff")]
    InvalidMac(String),
    #[error("this kernel cannot create {kind} devices (built without it: {config}); {fix}")]
    Unsupported { kind: &'static str, config: &'static str, fix: &'static str },
}

impl NetlinkError {
    /// The errno carried by a failed netlink request, if any (positive, e.g. `libc::EEXIST`).
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request { source, .. } => errno_of(source),
            _ => None,
        }
    }
}

type Result<T, E = NetlinkError> = std::result::Result<T, E>;

const ENOENT: i32 = nix::errno::Errno::ENOENT as i32;
const ENODEV: i32 = nix::errno::Errno::ENODEV as i32;
const EEXIST: i32 = nix::errno::Errno::EEXIST as i32;
const EOPNOTSUPP: i32 = nix::errno::Errno::EOPNOTSUPP as i32;
const ESRCH: i32 = nix::errno::Errno::ESRCH as i32;

fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| c.get().abs()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Pure helpers

/// Deterministic host-side veth name: "lxc" + 12 lowercase hex chars of FNV-1a 64 over
/// `container_id`, a NUL separator and `ifname`.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for b in container_id.bytes().chain([0u8]).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    format!("lxc{:012x}", h & 0xffff_ffff_ffff)
}

/// "aa:bb:cc:dd:ee:ff".
pub fn format_mac(mac: &Mac) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Parse "aa:bb:cc:dd:ee:ff" (case-insensitive; '-' also accepted as separator).
pub fn parse_mac(s: &str) -> Result<Mac> {
    let bad = || NetlinkError::InvalidMac(s.to_string());
    let mut mac = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for slot in &mut mac {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *slot = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

fn validate_ifname(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_IFNAME_LEN {
        "longer than 15 bytes"
    } else if name.contains(['/', ' ', '\0', ':']) || name == "." || name == ".." {
        "contains '/', ':', whitespace or NUL, or is '.'/'..'"
    } else {
        return Ok(());
    };
    Err(NetlinkError::InvalidName { name: name.to_string(), reason })
}

fn open_netns(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            NetlinkError::NetnsNotFound(path.to_path_buf())
        } else {
            NetlinkError::NetnsOpen { path: path.to_path_buf(), source: e }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Namespace threads

/// Run `f` on a fresh OS thread that has entered the network namespace at `path` (network
/// namespace only), wait for it, and return its result. A panic in `f` is resumed on the caller.
/// Blocks the calling thread: from async code prefer [`in_netns_async`].
pub fn in_netns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> Result<T, NetlinkError> {
    let file = open_netns(path)?;
    let owned = path.to_path_buf();
    let handle = std::thread::Builder::new()
        .name("myelin-netns".into())
        .spawn(move || {
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                .map_err(|source| NetlinkError::Setns { path: owned, source })?;
            drop(file);
            Ok(f())
        })
        .map_err(|source| NetlinkError::Thread { path: path.to_path_buf(), source })?;
    match handle.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Run the future built by `f` to completion on a fresh OS thread that has entered the network
/// namespace at `path`, on a current-thread tokio runtime of its own; await the result without
/// blocking the caller's runtime. Netlink sockets opened inside are bound to that netns.
pub async fn in_netns_async<T, F, Fut>(path: &Path, f: F) -> Result<T, NetlinkError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetlinkError>>,
{
    let file = open_netns(path)?;
    let owned = path.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("myelin-netns".into())
        .spawn(move || {
            let res = (|| {
                nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|source| NetlinkError::Setns { path: owned.clone(), source })?;
                drop(file);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|source| NetlinkError::Thread { path: owned.clone(), source })?;
                rt.block_on(f())
            })();
            let _ = tx.send(res);
        })
        .map_err(|source| NetlinkError::Thread { path: path.to_path_buf(), source })?;
    rx.await.unwrap_or_else(|_| Err(NetlinkError::ThreadDied { path: path.to_path_buf() }))
}

// ---------------------------------------------------------------------------------------------
// One netlink connection bound to the calling thread's netns.

struct Nl {
    handle: Handle,
    ns: Netns,
}

impl Nl {
    fn connect(ns: Netns) -> Result<Self> {
        let (conn, handle, _messages) =
            rtnetlink::new_connection().map_err(|source| NetlinkError::Socket { ns: ns.clone(), source })?;
        // Ends once `handle` (and its clones) are dropped.
        tokio::spawn(conn);
        Ok(Nl { handle, ns })
    }

    fn err(&self, op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError + '_ {
        let op = op.into();
        move |source| NetlinkError::Request { op, ns: self.ns.clone(), source }
    }

    async fn link_msg_by_name(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut s = self.handle.link().get().match_name(name.to_string()).execute();
        match s.try_next().await {
            Ok(m) => Ok(m),
            Err(e) if matches!(errno_of(&e), Some(ENODEV | ENOENT)) => Ok(None),
            Err(e) => Err(self.err(format!("looking up link {name}"))(e)),
        }
    }

    async fn link_msg_by_index(&self, index: u32) -> Result<Option<LinkMessage>> {
        let mut s = self.handle.link().get().match_index(index).execute();
        match s.try_next().await {
            Ok(m) => Ok(m),
            Err(e) if matches!(errno_of(&e), Some(ENODEV | ENOENT)) => Ok(None),
            Err(e) => Err(self.err(format!("looking up link index {index}"))(e)),
        }
    }

    async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>> {
        Ok(self.link_msg_by_name(name).await?.map(|m| link_info(&m)))
    }

    async fn require_link(&self, name: &str) -> Result<LinkInfo> {
        self.link_by_name(name)
            .await?
            .ok_or_else(|| NetlinkError::LinkNotFound { name: name.to_string(), ns: self.ns.clone() })
    }

    async fn set_up(&self, index: u32, what: &str) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(self.err(format!("setting {what} up")))
    }

    async fn delete_index(&self, index: u32, what: &str) -> Result<bool> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if matches!(errno_of(&e), Some(ENODEV | ENOENT)) => Ok(false),
            Err(e) => Err(self.err(format!("deleting link {what}"))(e)),
        }
    }

    async fn addresses_v4(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(self.err(format!("listing addresses of link index {index}")))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index && m.header.family == AddressFamily::Inet)
            .filter_map(|m| {
                let local = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                });
                let addr = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                });
                local.or(addr).map(|ip| (ip, m.header.prefix_len))
            })
            .collect())
    }

    async fn add_address(&self, index: u32, ifname: &str, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        match self.handle.address().add(index, IpAddr::V4(ip), prefix).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(self.err(format!("adding {ip}/{prefix} to {ifname}"))(e)),
        }
    }

    async fn routes_v4(&self) -> Result<Vec<RouteMessage>> {
        self.handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(self.err("listing IPv4 routes"))
    }

    async fn replace_route(&self, msg: RouteMessage, what: String) -> Result<()> {
        self.handle.route().add(msg).replace().execute().await.map_err(self.err(what))
    }
}

fn link_info(m: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: m.header.index,
        name: String::new(),
        mac: [0; 6],
        up: m.header.flags.contains(LinkFlags::Up),
        mtu: 0,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => info.name.clone_from(n),
            LinkAttribute::Mtu(v) => info.mtu = *v,
            LinkAttribute::Address(bytes) if bytes.len() == 6 => {
                info.mac.copy_from_slice(bytes);
            }
            _ => {}
        }
    }
    info
}

fn host_route_msg(ip: Ipv4Addr, ifindex: u32) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(ip, 32)
        .output_interface(ifindex)
        .scope(RouteScope::Link)
        .build()
}

fn route_dst(r: &RouteMessage) -> Option<Ipv4Addr> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}

fn route_gw(r: &RouteMessage) -> Option<Ipv4Addr> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}

fn route_oif(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

const RT_TABLE_MAIN: u32 = 254;

// ---------------------------------------------------------------------------------------------
// Public operations in the caller's netns

/// Create the veth pair for a pod and configure both ends.
///
/// The peer is created with a temporary unique name directly inside the pod netns (the veth
/// request carries IFLA_NET_NS_FD), then renamed to `pod_ifname` there and given `pod_ip/32`,
/// up, `lo` up, `gateway/32 scope link` and `default via gateway`. The host side is then set
/// up. On any failure after the pair exists the host side is deleted (which deletes the pair).
pub async fn create_pod_veth(spec: &PodVeth) -> Result<PodVethResult, NetlinkError> {
    validate_ifname(&spec.host_ifname)?;
    validate_ifname(&spec.pod_ifname)?;
    let netns_file = open_netns(&spec.netns_path)?;
    let nl = Nl::connect(Netns::Current)?;
    if nl.link_by_name(&spec.host_ifname).await?.is_some() {
        return Err(NetlinkError::LinkExists { name: spec.host_ifname.clone(), ns: nl.ns });
    }

    let tmp = temp_ifname();
    let mut peer = LinkUnspec::new_with_name(&tmp).setns_by_fd(netns_file.as_raw_fd());
    let mut host = LinkVeth::new(&spec.host_ifname, &tmp);
    if let Some(mtu) = spec.mtu {
        peer = peer.mtu(mtu);
        host = host.mtu(mtu);
    }
    let msg = host.set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build()))).build();
    let created = nl.handle.link().add(msg).execute().await;
    drop(netns_file);
    if let Err(e) = created {
        if errno_of(&e) == Some(EEXIST) {
            return Err(NetlinkError::LinkExists { name: spec.host_ifname.clone(), ns: nl.ns });
        }
        return Err(nl.err(format!(
            "creating veth {} (peer {tmp} in netns {})",
            spec.host_ifname,
            spec.netns_path.display()
        ))(e));
    }

    match finish_pod_veth(&nl, spec, tmp).await {
        Ok(r) => Ok(r),
        Err(e) => {
            // Best effort: the original error is what the caller needs to see.
            if let Ok(Some(link)) = nl.link_by_name(&spec.host_ifname).await {
                let _ = nl.delete_index(link.index, &spec.host_ifname).await;
            }
            Err(e)
        }
    }
}

async fn finish_pod_veth(nl: &Nl, spec: &PodVeth, tmp: String) -> Result<PodVethResult> {
    let host = nl.require_link(&spec.host_ifname).await?;
    let path = spec.netns_path.clone();
    let pod_ifname = spec.pod_ifname.clone();
    let (pod_ip, gateway) = (spec.pod_ip, spec.gateway);
    let pod = in_netns_async(&spec.netns_path, move || async move {
        let pod = Nl::connect(Netns::Path(path))?;
        configure_pod_side(&pod, &tmp, &pod_ifname, pod_ip, gateway).await
    })
    .await?;
    nl.set_up(host.index, &spec.host_ifname).await?;
    let host = nl.require_link(&spec.host_ifname).await?;
    Ok(PodVethResult { host, pod_mac: pod.mac, pod_ifindex: pod.index })
}

async fn configure_pod_side(nl: &Nl, tmp: &str, ifname: &str, ip: Ipv4Addr, gateway: Ipv4Addr) -> Result<LinkInfo> {
    let link = nl.require_link(tmp).await?;
    if nl.link_by_name(ifname).await?.is_some() {
        return Err(NetlinkError::LinkExists { name: ifname.to_string(), ns: nl.ns.clone() });
    }
    nl.handle
        .link()
        .set(LinkUnspec::new_with_index(link.index).name(ifname.to_string()).build())
        .execute()
        .await
        .map_err(nl.err(format!("renaming veth peer {tmp} to {ifname}")))?;
    nl.add_address(link.index, ifname, ip, 32).await?;
    nl.set_up(link.index, ifname).await?;
    let lo = nl.require_link("lo").await?;
    nl.set_up(lo.index, "lo").await?;
    nl.replace_route(host_route_msg(gateway, link.index), format!("adding route {gateway}/32 dev {ifname} scope link"))
        .await?;
    nl.replace_route(
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .gateway(gateway)
            .output_interface(link.index)
            .build(),
        format!("adding route default via {gateway} dev {ifname}"),
    )
    .await?;
    nl.require_link(ifname).await
}

fn temp_ifname() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // "mytmp" + 5 hex of pid + 5 hex of counter = 15 chars.
    format!("mytmp{:05x}{:05x}", std::process::id() & 0xf_ffff, n & 0xf_ffff)
}

/// Delete a link in the caller's netns by name; `Ok(false)` if it did not exist.
pub async fn delete_link(name: &str) -> Result<bool, NetlinkError> {
    let nl = Nl::connect(Netns::Current)?;
    match nl.link_by_name(name).await? {
        Some(link) => nl.delete_index(link.index, name).await,
        None => Ok(false),
    }
}

pub async fn link_by_name(name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
    Nl::connect(Netns::Current)?.link_by_name(name).await
}

pub async fn link_by_index(index: u32) -> Result<Option<LinkInfo>, NetlinkError> {
    let nl = Nl::connect(Netns::Current)?;
    Ok(nl.link_msg_by_index(index).await?.map(|m| link_info(&m)))
}

/// `ip route replace IP/32 dev <ifindex> scope link` in the caller's netns.
pub async fn replace_host_route(ip: Ipv4Addr, ifindex: u32) -> Result<(), NetlinkError> {
    let nl = Nl::connect(Netns::Current)?;
    nl.replace_route(host_route_msg(ip, ifindex), format!("replacing route {ip}/32 dev index {ifindex} scope link"))
        .await
}

/// Delete `IP/32 dev <ifindex>` from the main table; `Ok(false)` if there was no such route.
pub async fn delete_host_route(ip: Ipv4Addr, ifindex: u32) -> Result<bool, NetlinkError> {
    let nl = Nl::connect(Netns::Current)?;
    let mut msg = host_route_msg(ip, ifindex);
    // Match regardless of scope/protocol.
    msg.header.scope = RouteScope::NoWhere;
    msg.header.protocol = rtnetlink::packet_route::route::RouteProtocol::Unspec;
    match nl.handle.route().del(msg).execute().await {
        Ok(()) => Ok(true),
        Err(e) if matches!(errno_of(&e), Some(ESRCH | ENOENT | ENODEV)) => Ok(false),
        Err(e) => Err(nl.err(format!("deleting route {ip}/32 dev index {ifindex}"))(e)),
    }
}

/// `ip neigh replace IP lladdr MAC dev <ifindex> nud permanent`.
pub async fn replace_neighbour(ip: Ipv4Addr, mac: Mac, ifindex: u32) -> Result<(), NetlinkError> {
    let nl = Nl::connect(Netns::Current)?;
    nl.handle
        .neighbours()
        .add(ifindex, IpAddr::V4(ip))
        .link_local_address(&mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(nl.err(format!("replacing neighbour {ip} lladdr {} dev index {ifindex}", format_mac(&mac))))
}

/// `ip neigh del IP dev <ifindex>`; `Ok(false)` if there was no such entry.
pub async fn delete_neighbour(ip: Ipv4Addr, ifindex: u32) -> Result<bool, NetlinkError> {
    let nl = Nl::connect(Netns::Current)?;
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.ifindex = ifindex;
    msg.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
    match nl.handle.neighbours().del(msg).execute().await {
        Ok(()) => Ok(true),
        Err(e) if matches!(errno_of(&e), Some(ENOENT | ESRCH | ENODEV)) => Ok(false),
        Err(e) => Err(nl.err(format!("deleting neighbour {ip} dev index {ifindex}"))(e)),
    }
}

/// The permanent/learned neighbour MAC for `ip` on `ifindex`, if any.
pub async fn neighbour_mac(ip: Ipv4Addr, ifindex: u32) -> Result<Option<Mac>, NetlinkError> {
    let nl = Nl::connect(Netns::Current)?;
    let msgs: Vec<NeighbourMessage> = nl
        .handle
        .neighbours()
        .get()
        .set_family(rtnetlink::IpVersion::V4)
        .execute()
        .try_collect()
        .await
        .map_err(nl.err("listing IPv4 neighbours"))?;
    Ok(msgs.iter().filter(|m| m.header.ifindex == ifindex).find_map(|m| {
        let dst = m
            .attributes
            .iter()
            .any(|a| matches!(a, NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) if d == &ip));
        if !dst {
            return None;
        }
        m.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLocalAddress(b) => <Mac>::try_from(b.as_slice()).ok(),
            _ => None,
        })
    }))
}

/// For CNI CHECK: inside `netns_path`, `pod_ifname` exists, is up, carries `pod_ip/32`, and the
/// default route via `gateway` on it exists. The error describes the first mismatch.
pub async fn check_pod_interface(
    netns_path: &Path,
    pod_ifname: &str,
    pod_ip: Ipv4Addr,
    gateway: Ipv4Addr,
) -> Result<(), NetlinkError> {
    let path = netns_path.to_path_buf();
    let ifname = pod_ifname.to_string();
    in_netns_async(netns_path, move || async move {
        let nl = Nl::connect(Netns::Path(path))?;
        let fail = |reason: String| NetlinkError::CheckFailed { ifname: ifname.clone(), ns: nl.ns.clone(), reason };
        let Some(link) = nl.link_by_name(&ifname).await? else {
            return Err(fail("the interface does not exist".into()));
        };
        if !link.up {
            return Err(fail("the interface is down".into()));
        }
        let addrs = nl.addresses_v4(link.index).await?;
        if !addrs.contains(&(pod_ip, 32)) {
            let have: Vec<String> = addrs.iter().map(|(ip, p)| format!("{ip}/{p}")).collect();
            return Err(fail(format!("{pod_ip}/32 is not configured (has [{}])", have.join(", "))));
        }
        let routes = nl.routes_v4().await?;
        let ok = routes.iter().any(|r| {
            r.header.destination_prefix_length == 0
                && route_table(r) == RT_TABLE_MAIN
                && route_gw(r) == Some(gateway)
                && route_oif(r) == Some(link.index)
        });
        if !ok {
            return Err(fail(format!("no default route via {gateway} dev {ifname}")));
        }
        Ok(())
    })
    .await
}

/// The first IPv4 address of a link, `None` if it has none.
/// Errors with [`NetlinkError::LinkNotFound`] if the link does not exist.
pub async fn link_ipv4(name: &str) -> Result<Option<(Ipv4Addr, u8)>, NetlinkError> {
    let nl = Nl::connect(Netns::Current)?;
    let link = nl.require_link(name).await?;
    Ok(nl.addresses_v4(link.index).await?.into_iter().next())
}

/// Create (if missing) a dummy link carrying `ip/prefix`, and set it up. Idempotent.
/// On kernels without dummy support (CONFIG_DUMMY unset, EOPNOTSUPP) a bridge with no ports is
/// created instead: it is up, holds the address and answers for it the same way.
/// If a link of that name exists it is reused as is (its kind is not checked).
pub async fn ensure_dummy_with_addr(name: &str, ip: Ipv4Addr, prefix: u8) -> Result<LinkInfo, NetlinkError> {
    validate_ifname(name)?;
    let nl = Nl::connect(Netns::Current)?;
    if nl.link_by_name(name).await?.is_none() {
        match nl.handle.link().add(LinkDummy::new(name).build()).execute().await {
            Ok(()) => {}
            Err(e) if errno_of(&e) == Some(EEXIST) => {}
            // Kernel built without CONFIG_DUMMY: a port-less bridge holds an address just as well.
            Err(e) if errno_of(&e) == Some(EOPNOTSUPP) => {
                match nl.handle.link().add(LinkBridge::new(name).build()).execute().await {
                    Ok(()) => {}
                    Err(e) if errno_of(&e) == Some(EEXIST) => {}
                    Err(e) => {
                        return Err(nl
                            .err(format!("creating bridge {name} (fallback: this kernel has no dummy links)"))(
                            e
                        ))
                    }
                }
            }
            Err(e) => return Err(nl.err(format!("creating dummy link {name}"))(e)),
        }
    }
    let link = nl.require_link(name).await?;
    if !nl.addresses_v4(link.index).await?.contains(&(ip, prefix)) {
        nl.add_address(link.index, name, ip, prefix).await?;
    }
    if !link.up {
        nl.set_up(link.index, name).await?;
    }
    nl.require_link(name).await
}

/// IPv4 routes in the caller's netns main table with a /32 destination on `ifindex`.
pub async fn host_routes(ifindex: u32) -> Result<Vec<Ipv4Addr>, NetlinkError> {
    let nl = Nl::connect(Netns::Current)?;
    Ok(nl
        .routes_v4()
        .await?
        .iter()
        .filter(|r| {
            r.header.destination_prefix_length == 32 && route_table(r) == RT_TABLE_MAIN && route_oif(r) == Some(ifindex)
        })
        .filter_map(route_dst)
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn host_ifname_is_stable_and_short() {
        let a = host_ifname("abc123", "eth0");
        assert_eq!(a, host_ifname("abc123", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("lxc"));
        assert!(a[3..].chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, host_ifname("abc123", "eth1"));
        assert_ne!(a, host_ifname("abc124", "eth0"));
        // The separator keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(host_ifname("ab", "c"), host_ifname("a", "bc"));
        validate_ifname(&a).unwrap();
    }

    #[test]
    fn mac_roundtrip() {
        let mac = [0xaa, 0xbb, 0x0c, 0x00, 0xff, 0x01];
        assert_eq!(format_mac(&mac), "aa:bb:0c:00:ff:01");
        assert_eq!(parse_mac("aa:bb:0c:00:ff:01").unwrap(), mac);
        assert_eq!(parse_mac("AA-BB-0C-00-FF-01").unwrap(), mac);
        for bad in ["", "aa:bb", "aa:bb:cc:dd:ee:ff:00", "aa:bb:cc:dd:ee:gg", "a:bb:cc:dd:ee:ff0"] {
            assert!(matches!(parse_mac(bad), Err(NetlinkError::InvalidMac(_))), "{bad}");
        }
    }

    #[test]
    fn temp_names_fit_and_differ() {
        let a = temp_ifname();
        let b = temp_ifname();
        assert_ne!(a, b);
        assert!(a.len() <= MAX_IFNAME_LEN);
    }

    #[test]
    fn ifname_validation() {
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("").is_err());
        assert!(validate_ifname("abcdefghijklmnop").is_err());
        assert!(validate_ifname("a/b").is_err());
    }
}
