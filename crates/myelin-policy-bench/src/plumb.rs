//! (c) Plumbing throughput: N CNI ADDs (through the agent API, as the CNI
//! plugin sends them) issued one at a time versus all at once, in interleaved
//! rounds. Each ADD creates a veth, installs the endpoint's policy and entry
//! and attaches two TCX programs (each attach waits for an RCU grace period):
//! concurrent ADDs share those waits.

use anyhow::{Context, Result};
use myelin_api::{Client, Deleted, Endpoint, EndpointAddRequest};
use serde::Serialize;
use std::time::Instant;

use crate::netns::NetnsSet;
use crate::stats;

#[derive(Debug, Serialize)]
pub struct Plumbing {
    pub pods: usize,
    pub rounds: usize,
    /// Pods per second, per round.
    pub serial_pods_per_s: Vec<f64>,
    pub concurrent_pods_per_s: Vec<f64>,
    pub serial_median: f64,
    pub concurrent_median: f64,
    /// concurrent / serial, medians.
    pub speedup: f64,
}

fn req(prefix: &str, nets: &NetnsSet, i: usize) -> EndpointAddRequest {
    EndpointAddRequest {
        container_id: format!("{prefix}-{i}"),
        netns: nets.path(i).display().to_string(),
        ifname: format!("eth{i}"),
        namespace: Some(crate::policies::NAMESPACE.into()),
        pod_name: Some(format!("{prefix}-{i}")),
        labels: [("app".to_owned(), "plumb".to_owned())].into_iter().collect(),
        ports: vec![],
        labels_pending: false,
    }
}

fn delete_all(client: &Client, prefix: &str, n: usize) -> Result<()> {
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|i| {
                let c = client.clone();
                s.spawn(move || c.delete::<Deleted>(&format!("/v1/endpoints/by-container/{prefix}-{i}/eth{i}")))
            })
            .collect();
        for h in hs {
            h.join().map_err(|_| anyhow::anyhow!("DEL thread panicked"))?.context("DEL")?;
        }
        Ok(())
    })
}

/// One batch of `n` ADDs, serial or concurrent; pods per second.
fn batch(client: &Client, prefix: &str, nets: &NetnsSet, n: usize, concurrent: bool) -> Result<f64> {
    let t = Instant::now();
    if concurrent {
        std::thread::scope(|s| -> Result<()> {
            let hs: Vec<_> = (0..n)
                .map(|i| {
                    let c = client.clone();
                    let r = req(prefix, nets, i);
                    s.spawn(move || c.post::<_, Endpoint>("/v1/endpoints", &r))
                })
                .collect();
            for (i, h) in hs.into_iter().enumerate() {
                h.join().map_err(|_| anyhow::anyhow!("ADD thread panicked"))?.with_context(|| format!("ADD {i}"))?;
            }
            Ok(())
        })?;
    } else {
        for i in 0..n {
            let _: Endpoint =
                client.post("/v1/endpoints", &req(prefix, nets, i)).with_context(|| format!("ADD {i}"))?;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    delete_all(client, prefix, n)?;
    Ok(n as f64 / secs)
}

pub fn run(client: &Client, lab: &str, pods: usize, rounds: usize) -> Result<Plumbing> {
    // One netns per pod, as a runtime gives each pod (created before timing).
    let nets = NetnsSet::create((0..pods).map(|i| format!("{lab}-pl{i}")).collect())?;
    let (mut serial, mut conc) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which goes first: drift cancels.
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        for concurrent in order {
            let prefix = format!("{lab}-p{round}{}", if concurrent { "c" } else { "s" });
            let rate = batch(client, &prefix, &nets, pods, concurrent)?;
            crate::say(&format!(
                "plumbing round {round}: {pods} ADDs {} at {rate:.1} pods/s",
                if concurrent { "concurrently" } else { "one at a time" }
            ));
            if concurrent { &mut conc } else { &mut serial }.push(rate);
        }
    }
    let (s, c) = (stats::median(&serial), stats::median(&conc));
    Ok(Plumbing {
        pods,
        rounds,
        serial_pods_per_s: serial,
        concurrent_pods_per_s: conc,
        serial_median: s,
        concurrent_median: c,
        speedup: if s > 0.0 { c / s } else { 0.0 },
    })
}
