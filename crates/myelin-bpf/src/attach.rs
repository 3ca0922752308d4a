//! Attaching programs to their hooks, adopting attachments a previous agent
//! left, and replacing the programs of live attachments on upgrade.
//!
//! | hook                | TCX mode (kernel >= 6.6)                 | tc mode (older kernels)          |
//! |---------------------|------------------------------------------|----------------------------------|
//! | pod veth in/out     | TCX link pinned links/<if>/ingress|egress | clsact + bpf filter (netlink)    |
//! | uplink in/out       | TCX link pinned links/<if>/uplink_in|out  | clsact + bpf filter (netlink)    |
//! | uplink XDP          | XDP link pinned links/<if>/xdp            | (same)                           |
//! | cgroup sock_addr, sock, skb | cgroup link pinned links/cgroup/<prog> | (same)                    |
//! | tp_btf, tracepoint  | tracing/perf link pinned links/tracing/<prog> | (same)                       |
//!
//! Pinned links and tc filters outlive the agent: traffic keeps flowing
//! while it restarts. [`Datapath::activate`] swaps every pinned link to this
//! build's program with `BPF_LINK_UPDATE` (atomic: the hook is never empty);
//! tc filters are swapped by re-attaching with replace when an endpoint is
//! adopted. Tracing links cannot be updated: they are replaced by a new link
//! pinned over the old one (for an instant both run: an event may be
//! reported twice, none is missed).

use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use libbpf_rs::query::LinkTypeInfo;
use libbpf_rs::{Link, ProgramAttachType, TcHookBuilder, TC_EGRESS, TC_INGRESS};

use crate::datapath::{AttachMode, UpgradeReport};
use crate::objects::{CgroupHook, Hook, TcDir};
use crate::sys::{self, TcxHook};
use crate::{BpfError, Datapath};

/// tc filter handle and priority used in tc mode (one filter per direction).
const TC_HANDLE: u32 = 1;
const TC_PRIORITY: u32 = 1;

pub(crate) fn check_ifname(ifname: &str) -> Result<(), BpfError> {
    if ifname.is_empty()
        || ifname.len() > 15
        || ifname.contains(['/', '.', '\0'])
        || ifname == "cgroup"
        || ifname == "tracing"
    {
        return Err(BpfError::Invalid(format!(
            "{ifname:?} is not a usable interface name (1-15 bytes, no '/', no '.': bpffs refuses dots)"
        )));
    }
    Ok(())
}

fn remove_pin(path: &Path) -> Result<(), BpfError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BpfError::PinDir { action: "removing", path: path.to_path_buf(), source }),
    }
}

fn mkdir(path: &Path) -> Result<(), BpfError> {
    std::fs::create_dir_all(path).map_err(|source| BpfError::PinDir {
        action: "creating",
        path: path.to_path_buf(),
        source,
    })
}

/// The pin leaf of a tc/XDP hook under links/<ifname>/.
fn leaf(hook: Hook) -> &'static str {
    match hook {
        Hook::PodVeth(TcDir::Ingress) => "ingress",
        Hook::PodVeth(TcDir::Egress) => "egress",
        Hook::Uplink(TcDir::Ingress) => "uplink_in",
        Hook::Uplink(TcDir::Egress) => "uplink_out",
        Hook::UplinkXdp => "xdp",
        Hook::Tunnel(TcDir::Ingress) => "tunnel_in",
        Hook::Tunnel(TcDir::Egress) => "tunnel_out",
        Hook::Cgroup(_) => "cgroup",
        Hook::TpBtf(_) | Hook::Tracepoint(..) => "tracing",
    }
}

fn hook_of_leaf(leaf: &str) -> Option<Hook> {
    Some(match leaf {
        "ingress" => Hook::PodVeth(TcDir::Ingress),
        "egress" => Hook::PodVeth(TcDir::Egress),
        "uplink_in" => Hook::Uplink(TcDir::Ingress),
        "uplink_out" => Hook::Uplink(TcDir::Egress),
        "xdp" => Hook::UplinkXdp,
        "tunnel_in" => Hook::Tunnel(TcDir::Ingress),
        "tunnel_out" => Hook::Tunnel(TcDir::Egress),
        _ => return None,
    })
}

fn tc_dir(hook: Hook) -> TcDir {
    match hook {
        Hook::PodVeth(d) | Hook::Uplink(d) | Hook::Tunnel(d) => d,
        _ => TcDir::Ingress,
    }
}

fn cgroup_attach_type(h: CgroupHook) -> libbpf_rs::libbpf_sys::bpf_attach_type {
    use libbpf_rs::libbpf_sys as s;
    match h {
        CgroupHook::Connect4 => s::BPF_CGROUP_INET4_CONNECT,
        CgroupHook::Sendmsg4 => s::BPF_CGROUP_UDP4_SENDMSG,
        CgroupHook::Recvmsg4 => s::BPF_CGROUP_UDP4_RECVMSG,
        CgroupHook::Getpeername4 => s::BPF_CGROUP_INET4_GETPEERNAME,
        CgroupHook::SockRelease => s::BPF_CGROUP_INET_SOCK_RELEASE,
        CgroupHook::PostBind4 => s::BPF_CGROUP_INET4_POST_BIND,
        CgroupHook::SkbIngress => s::BPF_CGROUP_INET_INGRESS,
        CgroupHook::SkbEgress => s::BPF_CGROUP_INET_EGRESS,
    }
}

/// Ids of the programs attached directly to the cgroup (v2) directory
/// `cgroup` at `hook` (by anyone: links and legacy attachments alike).
pub(crate) fn cgroup_prog_ids(cgroup: &Path, hook: CgroupHook) -> Result<Vec<u32>, BpfError> {
    let file = std::fs::File::open(cgroup).map_err(|source| BpfError::PinDir {
        action: "opening the cgroup",
        path: cgroup.to_path_buf(),
        source,
    })?;
    sys::cgroup_prog_ids(file.as_fd(), cgroup_attach_type(hook)).map_err(|source| BpfError::PinDir {
        action: "querying the programs attached to",
        path: cgroup.to_path_buf(),
        source,
    })
}

/// What a pinned link is attached to.
fn pinned_target(path: &Path) -> Option<(LinkTypeInfo, u32)> {
    if !path.exists() {
        return None;
    }
    let link = Link::open(path).ok()?;
    let info = link.info().ok()?;
    Some((info.info, info.prog_id))
}

fn tcx_matches(info: &LinkTypeInfo, dir: TcDir, ifindex: u32) -> bool {
    match info {
        LinkTypeInfo::Tcx(t) => {
            let right = match dir {
                TcDir::Ingress => matches!(t.attach_type, ProgramAttachType::TcxIngress),
                TcDir::Egress => matches!(t.attach_type, ProgramAttachType::TcxEgress),
            };
            right && t.ifindex == ifindex
        }
        _ => false,
    }
}

impl Datapath {
    fn link_dir(&self, ifname: &str) -> PathBuf {
        self.pin_dir.join("links").join(ifname)
    }

    fn hook_prog(&self, hook: Hook) -> Result<(&'static str, &libbpf_rs::ProgramHandle), BpfError> {
        self.prog(hook)
            .ok_or_else(|| BpfError::Invalid(format!("no program for {hook:?} is loaded (see Datapath::unavailable)")))
    }

    /// Attach one tc program; Ok(true) if newly attached.
    fn attach_tc(&self, ifname: &str, ifindex: u32, hook: Hook) -> Result<bool, BpfError> {
        let (prog_name, prog) = self.hook_prog(hook)?;
        let dir = tc_dir(hook);
        let dir_name = match dir {
            TcDir::Ingress => "ingress",
            TcDir::Egress => "egress",
        };
        let attach_err = |source: std::io::Error| BpfError::Attach {
            prog: prog_name,
            hook: dir_name,
            mode: self.mode.as_str(),
            ifname: ifname.to_string(),
            ifindex,
            source,
        };
        mkdir(&self.link_dir(ifname))?;
        match self.mode {
            AttachMode::Tcx => {
                let path = self.link_dir(ifname).join(leaf(hook));
                if let Some((info, _)) = pinned_target(&path) {
                    if tcx_matches(&info, dir, ifindex) {
                        return Ok(false); // adopt: activate() swaps the program if needed
                    }
                }
                // Stale (device gone or recreated) or not what we expect: replace.
                remove_pin(&path)?;
                let link = sys::tcx_link_create(
                    prog.as_fd(),
                    ifindex,
                    match dir {
                        TcDir::Ingress => TcxHook::Ingress,
                        TcDir::Egress => TcxHook::Egress,
                    },
                )
                .map_err(attach_err)?;
                sys::obj_pin(link.as_fd(), &path).map_err(|source| BpfError::PinLink {
                    ifname: ifname.to_string(),
                    path: path.clone(),
                    source,
                })?;
                Ok(true)
            }
            AttachMode::Tc => {
                let ifindex_i = i32::try_from(ifindex).map_err(|_| BpfError::Invalid(format!("ifindex {ifindex}")))?;
                let mut b = TcHookBuilder::new(prog.as_fd());
                b.ifindex(ifindex_i).replace(true).handle(TC_HANDLE).priority(TC_PRIORITY);
                let mut h = b.hook(match dir {
                    TcDir::Ingress => TC_INGRESS,
                    TcDir::Egress => TC_EGRESS,
                });
                let ours = libbpf_rs::Program::id_from_fd(prog.as_fd()).ok();
                if h.query().ok().is_some_and(|id| Some(id) == ours) {
                    return Ok(false);
                }
                // The clsact qdisc may exist already (the other direction, a previous agent).
                if let Err(e) = h.create() {
                    if e.kind() != libbpf_rs::ErrorKind::AlreadyExists {
                        return Err(attach_err(std::io::Error::other(e.to_string())));
                    }
                }
                h.attach().map_err(|e| attach_err(std::io::Error::other(e.to_string())))?;
                Ok(true)
            }
        }
    }

    fn detach_tc(&self, ifname: &str, ifindex: Option<u32>, hook: Hook) -> Result<(), BpfError> {
        match self.mode {
            AttachMode::Tcx => remove_pin(&self.link_dir(ifname).join(leaf(hook))),
            AttachMode::Tc => {
                let (Some(ifindex), Some((_, prog))) = (ifindex, self.prog(hook)) else { return Ok(()) };
                let mut b = TcHookBuilder::new(prog.as_fd());
                b.ifindex(i32::try_from(ifindex).unwrap_or(0)).handle(TC_HANDLE).priority(TC_PRIORITY);
                let mut h = b.hook(match tc_dir(hook) {
                    TcDir::Ingress => TC_INGRESS,
                    TcDir::Egress => TC_EGRESS,
                });
                let _ = h.detach(); // gone with the device, or never there
                Ok(())
            }
        }
    }

    fn attach_pair(&self, ifname: &str, ifindex: u32, hooks: [Hook; 2]) -> Result<bool, BpfError> {
        check_ifname(ifname)?;
        if ifindex == 0 {
            return Err(BpfError::Invalid(format!("ifindex 0 for {ifname}")));
        }
        let first = self.attach_tc(ifname, ifindex, hooks[0])?;
        let second = match self.attach_tc(ifname, ifindex, hooks[1]) {
            Ok(v) => v,
            Err(e) => {
                if first {
                    // Don't leave half an interface plumbed by this call.
                    let _ = self.detach_tc(ifname, Some(ifindex), hooks[0]);
                }
                return Err(e);
            }
        };
        Ok(first || second)
    }

    /// Attach `from_container` at ingress and `to_container` at egress of the
    /// host-side veth `ifname`/`ifindex` (in the calling thread's netns); in
    /// TCX mode the links are pinned at `links/<ifname>/ingress|egress`, so
    /// they survive this process.
    ///
    /// Idempotent: attachments already in place for `ifindex` (agent restart)
    /// are adopted as they are and `Ok(false)` is returned ([`Datapath::activate`]
    /// brings their programs up to date). A pinned link whose device
    /// disappeared or has another ifindex is replaced. `Ok(true)` when
    /// anything was newly attached.
    pub fn attach_endpoint(&self, ifname: &str, ifindex: u32) -> Result<bool, BpfError> {
        self.attach_pair(ifname, ifindex, [Hook::PodVeth(TcDir::Ingress), Hook::PodVeth(TcDir::Egress)])
    }

    /// Both programs of `ifname` are attached to a live device.
    #[must_use]
    pub fn endpoint_attached(&self, ifname: &str) -> bool {
        if check_ifname(ifname).is_err() {
            return false;
        }
        match self.mode {
            AttachMode::Tcx => [TcDir::Ingress, TcDir::Egress].into_iter().all(|d| {
                let path = self.link_dir(ifname).join(leaf(Hook::PodVeth(d)));
                matches!(pinned_target(&path), Some((LinkTypeInfo::Tcx(t), _)) if t.ifindex != 0 && tcx_matches(&LinkTypeInfo::Tcx(t.clone()), d, t.ifindex))
            }),
            AttachMode::Tc => {
                let Ok(ifindex) = nix::net::if_::if_nametoindex(ifname) else { return false };
                [TcDir::Ingress, TcDir::Egress].into_iter().all(|d| {
                    let Some((_, prog)) = self.prog(Hook::PodVeth(d)) else { return false };
                    let mut b = TcHookBuilder::new(prog.as_fd());
                    b.ifindex(i32::try_from(ifindex).unwrap_or(0)).handle(TC_HANDLE).priority(TC_PRIORITY);
                    let mut h = b.hook(if d == TcDir::Ingress { TC_INGRESS } else { TC_EGRESS });
                    h.query().is_ok_and(|id| id != 0)
                })
            }
        }
    }

    /// Detach both programs of `ifname` (TCX: remove the link pins, which
    /// detaches them unless someone else holds the links open). Ok even if
    /// absent.
    pub fn detach_endpoint(&self, ifname: &str) -> Result<(), BpfError> {
        check_ifname(ifname)?;
        let ifindex = nix::net::if_::if_nametoindex(ifname).ok();
        self.detach_tc(ifname, ifindex, Hook::PodVeth(TcDir::Ingress))?;
        self.detach_tc(ifname, ifindex, Hook::PodVeth(TcDir::Egress))?;
        let dir = self.link_dir(ifname);
        match std::fs::remove_dir(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            // Uplink pins may share the directory: leave it.
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(()),
            Err(source) => Err(BpfError::PinDir { action: "removing", path: dir, source }),
        }
    }

    /// Interface names that have a link directory (attached or stale),
    /// sorted: what a restarted agent compares with its endpoints to find
    /// leftovers to detach. The uplink and the cgroup are not listed.
    pub fn pinned_endpoints(&self) -> Result<Vec<String>, BpfError> {
        let links = self.pin_dir.join("links");
        let rd = match std::fs::read_dir(&links) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(BpfError::PinDir { action: "reading", path: links, source }),
        };
        let mut names: Vec<String> = rd
            .filter_map(Result::ok)
            .filter(|e| {
                let dir = e.path();
                e.file_name() != "cgroup"
                    && !dir.join("uplink_in").exists()
                    && !dir.join("xdp").exists()
                    && !dir.join("tunnel_in").exists()
            })
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Attach the uplink programs to the node's uplink `ifname`/`ifindex`:
    /// `from_netdev`/`to_netdev` at tc ingress/egress, and the XDP prefilter
    /// when the xdp object is loaded. Idempotent like [`Datapath::attach_endpoint`].
    pub fn attach_uplink(&self, ifname: &str, ifindex: u32) -> Result<bool, BpfError> {
        let mut new = self.attach_pair(ifname, ifindex, [Hook::Uplink(TcDir::Ingress), Hook::Uplink(TcDir::Egress)])?;
        if let Some((prog_name, prog)) = self.prog(Hook::UplinkXdp) {
            let path = self.link_dir(ifname).join(leaf(Hook::UplinkXdp));
            let adopt = matches!(pinned_target(&path), Some((LinkTypeInfo::Xdp(x), _)) if x.ifindex == ifindex);
            if !adopt {
                remove_pin(&path)?;
                let link =
                    sys::link_create(prog.as_fd(), i32::try_from(ifindex).unwrap_or(0), libbpf_rs::libbpf_sys::BPF_XDP)
                        .map_err(|source| BpfError::Attach {
                            prog: prog_name,
                            hook: "xdp",
                            mode: "link",
                            ifname: ifname.to_string(),
                            ifindex,
                            source,
                        })?;
                sys::obj_pin(link.as_fd(), &path).map_err(|source| BpfError::PinLink {
                    ifname: ifname.to_string(),
                    path: path.clone(),
                    source,
                })?;
                new = true;
            }
        }
        Ok(new)
    }

    /// Detach the uplink's XDP prefilter only (the tc programs stay). Ok if absent.
    pub fn detach_uplink_xdp(&self, ifname: &str) -> Result<(), BpfError> {
        check_ifname(ifname)?;
        remove_pin(&self.link_dir(ifname).join(leaf(Hook::UplinkXdp)))
    }

    /// Detach everything [`Datapath::attach_uplink`] attached. Ok if absent.
    pub fn detach_uplink(&self, ifname: &str) -> Result<(), BpfError> {
        check_ifname(ifname)?;
        let ifindex = nix::net::if_::if_nametoindex(ifname).ok();
        self.detach_tc(ifname, ifindex, Hook::Uplink(TcDir::Ingress))?;
        self.detach_tc(ifname, ifindex, Hook::Uplink(TcDir::Egress))?;
        remove_pin(&self.link_dir(ifname).join(leaf(Hook::UplinkXdp)))?;
        let _ = std::fs::remove_dir(self.link_dir(ifname));
        Ok(())
    }

    /// Attach the overlay programs to the node's tunnel device `ifname`/`ifindex` (VXLAN or
    /// Geneve created in collect-metadata mode, `external`): `from_overlay`/`to_overlay` at tc
    /// ingress/egress. Idempotent like [`Datapath::attach_endpoint`].
    pub fn attach_tunnel(&self, ifname: &str, ifindex: u32) -> Result<bool, BpfError> {
        if self.prog(Hook::Tunnel(TcDir::Ingress)).is_none() {
            return Err(BpfError::Invalid(format!(
                "attaching the overlay to {ifname}: the overlay object is not loaded (loaded: {:?})",
                self.objects()
            )));
        }
        self.attach_pair(ifname, ifindex, [Hook::Tunnel(TcDir::Ingress), Hook::Tunnel(TcDir::Egress)])
    }

    /// Detach what [`Datapath::attach_tunnel`] attached. Ok if absent.
    pub fn detach_tunnel(&self, ifname: &str) -> Result<(), BpfError> {
        check_ifname(ifname)?;
        let ifindex = nix::net::if_::if_nametoindex(ifname).ok();
        self.detach_tc(ifname, ifindex, Hook::Tunnel(TcDir::Ingress))?;
        self.detach_tc(ifname, ifindex, Hook::Tunnel(TcDir::Egress))?;
        let _ = std::fs::remove_dir(self.link_dir(ifname));
        Ok(())
    }

    /// Attach every loaded cgroup program to the cgroup (v2) directory
    /// `cgroup`: the socket load balancer's sock_addr and sock programs and
    /// the traffic accounting's cgroup_skb programs; links pinned at
    /// `links/cgroup/<program>`. Idempotent: links already pinned for this
    /// cgroup are adopted (Ok(false) when nothing was new).
    pub fn attach_cgroup(&self, cgroup: &Path) -> Result<bool, BpfError> {
        let dir = self.pin_dir.join("links").join("cgroup");
        mkdir(&dir)?;
        let file = std::fs::File::open(cgroup).map_err(|source| BpfError::PinDir {
            action: "opening the cgroup",
            path: cgroup.to_path_buf(),
            source,
        })?;
        let cgroup_id = cgroup_id(cgroup)?;
        let mut new = false;
        for (name, hook, prog) in &self.progs {
            let Hook::Cgroup(h) = hook else { continue };
            let path = dir.join(name);
            if matches!(pinned_target(&path), Some((LinkTypeInfo::Cgroup(c), _)) if c.cgroup_id == cgroup_id) {
                continue;
            }
            remove_pin(&path)?;
            let link = sys::link_create(prog.as_fd(), file.as_raw_fd(), cgroup_attach_type(*h)).map_err(|source| {
                BpfError::Attach {
                    prog: name,
                    hook: "cgroup",
                    mode: "link",
                    ifname: cgroup.display().to_string(),
                    ifindex: 0,
                    source,
                }
            })?;
            sys::obj_pin(link.as_fd(), &path).map_err(|source| BpfError::PinLink {
                ifname: "cgroup".into(),
                path: path.clone(),
                source,
            })?;
            new = true;
        }
        Ok(new)
    }

    /// Whether the program of `hook` is attached through a link pinned at
    /// `links/cgroup/<program>` (to whichever cgroup).
    #[must_use]
    pub fn cgroup_attached(&self, hook: CgroupHook) -> bool {
        let Some((name, _)) = self.prog(Hook::Cgroup(hook)) else { return false };
        let path = self.pin_dir.join("links").join("cgroup").join(name);
        matches!(pinned_target(&path), Some((LinkTypeInfo::Cgroup(_), _)))
    }

    /// Detach the cgroup programs (remove their link pins). Ok if absent.
    pub fn detach_cgroup(&self) -> Result<(), BpfError> {
        let dir = self.pin_dir.join("links").join("cgroup");
        for (name, hook, _) in &self.progs {
            if matches!(hook, Hook::Cgroup(_)) {
                remove_pin(&dir.join(name))?;
            }
        }
        let _ = std::fs::remove_dir(&dir);
        Ok(())
    }

    /// Attach the host-wide tracing programs (tp_btf and tracepoints, e.g.
    /// process events); links pinned at `links/tracing/<program>`. A pinned
    /// link that runs this build's program is kept; an older one is
    /// replaced. Returns how many links were created.
    pub fn attach_tracing(&self) -> Result<usize, BpfError> {
        let dir = self.pin_dir.join("links").join("tracing");
        mkdir(&dir)?;
        let mut created = 0;
        for (name, hook, prog) in &self.progs {
            if !hook.is_tracing() {
                continue;
            }
            let path = dir.join(name);
            if self.link_runs(&path, prog)? {
                continue;
            }
            self.replace_tracing_link(name, *hook, prog, &path)?;
            created += 1;
        }
        Ok(created)
    }

    /// Whether the link pinned at `path` runs `prog` (same code, same maps).
    fn link_runs(&self, path: &Path, prog: &libbpf_rs::ProgramHandle) -> Result<bool, BpfError> {
        let Ok(link) = Link::open(path) else { return Ok(false) };
        let Ok(info) = link.info() else { return Ok(false) };
        let ours = sys::prog_identity(prog.as_fd())
            .map_err(|e| BpfError::Invalid(format!("reading the identity of a program: {e}")))?;
        let theirs =
            libbpf_rs::Program::fd_from_id(info.prog_id).ok().and_then(|fd| sys::prog_identity(fd.as_fd()).ok());
        Ok(theirs.is_some_and(|t| t.tag == ours.tag && t.map_ids == ours.map_ids))
    }

    /// Create a tracing link for `prog` and pin it at `path`, atomically
    /// replacing what was pinned there (bpffs rename).
    fn replace_tracing_link(
        &self,
        name: &'static str,
        hook: Hook,
        prog: &libbpf_rs::ProgramHandle,
        path: &Path,
    ) -> Result<(), BpfError> {
        let attach_err = |what: String, source: std::io::Error| BpfError::Attach {
            prog: name,
            hook: "tracing",
            mode: "link",
            ifname: what,
            ifindex: 0,
            source,
        };
        let link = match hook {
            Hook::TpBtf(tp) => sys::link_create(prog.as_fd(), 0, libbpf_rs::libbpf_sys::BPF_TRACE_RAW_TP)
                .map_err(|e| attach_err(format!("tp_btf/{tp}"), e))?,
            Hook::Tracepoint(category, tp) => {
                let id = crate::bpffs::tracepoint_id(category, tp)?;
                let what = format!("tracepoint/{category}/{tp}");
                let perf = sys::perf_event_open_tracepoint(id).map_err(|e| attach_err(what.clone(), e))?;
                sys::link_create(prog.as_fd(), perf.as_raw_fd(), libbpf_rs::libbpf_sys::BPF_PERF_EVENT)
                    .map_err(|e| attach_err(what, e))?
            }
            _ => return Err(BpfError::Invalid(format!("program {name} is not a tracing program"))),
        };
        let tmp = path.with_file_name(format!("{name}_replacing")); // bpffs refuses dots
        remove_pin(&tmp)?;
        sys::obj_pin(link.as_fd(), &tmp).map_err(|source| BpfError::PinLink {
            ifname: "tracing".into(),
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, path).map_err(|source| BpfError::PinDir {
            action: "renaming a link pin over",
            path: path.to_path_buf(),
            source,
        })
    }

    /// Detach the tracing programs (remove their link pins). Ok if absent.
    pub fn detach_tracing(&self) -> Result<(), BpfError> {
        let dir = self.pin_dir.join("links").join("tracing");
        for (name, hook, _) in &self.progs {
            if hook.is_tracing() {
                remove_pin(&dir.join(name))?;
            }
        }
        let _ = std::fs::remove_dir(&dir);
        Ok(())
    }

    /// Bring every pinned link under this pin directory to this build's
    /// programs (`BPF_LINK_UPDATE`: atomic, the hook never empties), then
    /// finish a migration: entries the old programs added to the old maps
    /// since loading are copied over, and the old maps are released.
    ///
    /// Call it once the new maps hold what the new programs need (the
    /// agent first restores endpoints and policy into them): from this
    /// point the new programs decide every packet.
    pub fn activate(&self) -> Result<UpgradeReport, BpfError> {
        let links = self.pin_dir.join("links");
        let mut updated = 0;
        let mut current = 0;
        let mut pins: Vec<(PathBuf, Hook)> = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&links) {
            for dir in rd.filter_map(Result::ok) {
                if dir.file_name() == "tracing" {
                    continue; // replaced, not updated: attach_tracing
                }
                let is_cgroup = dir.file_name() == "cgroup";
                let Ok(inner) = std::fs::read_dir(dir.path()) else { continue };
                for e in inner.filter_map(Result::ok) {
                    let leaf_name = e.file_name().to_string_lossy().into_owned();
                    let hook = if is_cgroup {
                        self.progs.iter().find(|(n, _, _)| *n == leaf_name).map(|(_, h, _)| *h)
                    } else {
                        hook_of_leaf(&leaf_name)
                    };
                    if let Some(hook) = hook {
                        pins.push((e.path(), hook));
                    }
                }
            }
        }
        for (path, hook) in pins {
            let Some((prog_name, prog)) = self.prog(hook) else { continue };
            let Ok(link) = Link::open(&path) else { continue };
            let Ok(info) = link.info() else { continue };
            let ours = sys::prog_identity(prog.as_fd())
                .map_err(|e| BpfError::Invalid(format!("reading the identity of program {prog_name}: {e}")))?;
            let theirs =
                libbpf_rs::Program::fd_from_id(info.prog_id).ok().and_then(|fd| sys::prog_identity(fd.as_fd()).ok());
            if theirs.as_ref().is_some_and(|t| t.tag == ours.tag && t.map_ids == ours.map_ids) {
                current += 1;
                continue;
            }
            sys::link_update(link.as_fd(), prog.as_fd()).map_err(|source| BpfError::Attach {
                prog: prog_name,
                hook: "link update",
                mode: "link",
                ifname: path.display().to_string(),
                ifindex: 0,
                source,
            })?;
            updated += 1;
        }
        // Tracing links cannot be updated: pinned ones are replaced.
        let tracing = links.join("tracing");
        for (name, hook, prog) in &self.progs {
            let path = tracing.join(name);
            if !hook.is_tracing() || !path.exists() {
                continue;
            }
            if self.link_runs(&path, prog)? {
                current += 1;
            } else {
                self.replace_tracing_link(name, *hook, prog, &path)?;
                updated += 1;
            }
        }
        // The old programs are gone from every hook: carry over what they
        // wrote since loading, then let the old maps go.
        let moved = {
            let up = self.upgrade.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            up.1.clone()
        };
        self.migrate_moved(moved, true)?;
        let migrate = crate::loader::migrate_dir(&self.pin_dir);
        if migrate.exists() {
            std::fs::remove_dir_all(&migrate).map_err(|source| BpfError::PinDir {
                action: "removing",
                path: migrate.clone(),
                source,
            })?;
        }
        let mut up = self.upgrade.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        up.0.links_updated = updated;
        up.0.links_current = current;
        up.1.clear();
        Ok(up.0.clone())
    }
}

/// The cgroup id of a cgroup v2 directory (its inode number).
fn cgroup_id(path: &Path) -> Result<u64, BpfError> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.ino()).map_err(|source| BpfError::PinDir {
        action: "reading",
        path: path.to_path_buf(),
        source,
    })
}
