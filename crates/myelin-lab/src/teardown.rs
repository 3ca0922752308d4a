//! Tearing a lab down, from its state file, however far its `up` got.

use crate::error::{io, LabError, Result};
use crate::lab::Lab;
use crate::naming;
use crate::plan::{STATE_FILE, STATE_ROOT};
use crate::procs;
use crate::sys;
use nix::sys::signal::Signal;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

impl Lab {
    pub(crate) fn teardown(&mut self) -> Result<()> {
        let mut errors: Vec<String> = Vec::new();
        fn note(errors: &mut Vec<String>, r: Result<()>) {
            if let Err(e) = r {
                errors.push(e.to_string());
            }
        }
        for i in 0..self.state.nodes.len() {
            if self.state.nodes[i].agent_pid.is_some() {
                self.say(&format!("stopping the agent of {}", self.state.nodes[i].name));
            }
            note(&mut errors, self.stop_agent(i, Signal::SIGTERM));
        }
        // After the agents, which may still be talking to it.
        if self.state.kvstore.as_ref().is_some_and(|kv| kv.members.iter().any(|m| m.pid.is_some())) {
            self.say("stopping etcd");
        }
        note(&mut errors, self.stop_kvstore());
        // What still runs in the pods (their cgroups) or anywhere in the lab's namespaces
        // would keep the deleted namespaces alive: end it first.
        let cgroups: Vec<PathBuf> = self.state.pods.iter().filter_map(|p| p.cgroup_dir.clone()).collect();
        let netns: Vec<PathBuf> = self.netns_names().iter().map(|n| naming::netns_path(n)).collect();
        let ended = procs::end_processes(&cgroups, &netns, procs::END_TIMEOUT);
        let all_ended = ended.is_ok();
        note(&mut errors, ended);
        if all_ended {
            for cg in &cgroups {
                note(&mut errors, sys::rmdir_if_exists(cg));
            }
        }
        if let Some(root) = &self.state.cgroup_root {
            if all_ended {
                // The nodes' cgroups (their agents' cgroup_root), then the lab's.
                for n in &self.state.nodes {
                    note(&mut errors, sys::rmdir_if_exists(&root.join(&n.name)));
                }
            }
            note(&mut errors, sys::rmdir_if_exists(root));
            if let Some(parent) = root.parent() {
                sys::rmdir_if_empty(parent);
            }
        }
        let present: Vec<String> = self.netns_names().into_iter().filter(|n| naming::netns_path(n).exists()).collect();
        if !present.is_empty() {
            self.say(&format!("deleting {} network namespaces", present.len()));
            let lines: Vec<String> = present.iter().map(|n| format!("netns del {n}")).collect();
            // -force: go on after a failure; check what is left afterwards.
            let _ = Command::new("ip")
                .args(["-force", "-batch", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .and_then(|mut c| {
                    if let Some(mut stdin) = c.stdin.take() {
                        stdin.write_all((lines.join("\n") + "\n").as_bytes())?;
                    }
                    c.wait()
                });
            for n in present.iter().filter(|n| naming::netns_path(n).exists()) {
                note(&mut errors, sys::ip_batch("deleting netns", None, &[format!("netns del {n}")]));
            }
        }
        let bpf = self.state.bpf_root.clone();
        match std::fs::remove_dir_all(&bpf) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => note(&mut errors, Err(io("removing bpffs directory", &bpf)(e))),
        }
        if let Some(lab_root) = bpf.parent() {
            sys::rmdir_if_empty(lab_root);
            if let Some(myelin) = lab_root.parent() {
                sys::rmdir_if_empty(myelin);
            }
        }
        if errors.is_empty() {
            let dir = self.state.state_dir.clone();
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => note(&mut errors, Err(io("removing state directory", &dir)(e))),
            }
            sys::rmdir_if_empty(Path::new(STATE_ROOT));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(LabError::State {
                path: self.state.state_dir.join(STATE_FILE),
                message: format!(
                    "lab {} was not fully removed (the state file is kept; run down again): {}",
                    self.state.name,
                    errors.join("; ")
                ),
            })
        }
    }
}
