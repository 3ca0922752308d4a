//! Merging the flows of several nodes in time order, as Hubble Relay does.
//!
//! - Without `--follow`: every node's answer is collected, sorted by time
//!   (stable, so one node's order is kept for equal times), then `--last N`
//!   keeps the newest N flows and `--first N` the oldest N.
//! - With `--follow`: each node streams in its own time order, so the merge is
//!   a k-way merge. The oldest held response goes out as soon as every node
//!   still streaming has sent something at least as new (then nothing older
//!   can come); a node that is quiet holds the others back for at most
//!   [`WINDOW`] after a response arrived. Output is in time order unless a node
//!   delivers a response more than [`WINDOW`] late.

use myelin_observe::proto::observer::{get_flows_response::ResponseTypes, GetFlowsResponse};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use super::when::ts_nanos;

/// How long a followed response may wait for slower nodes.
pub const WINDOW: Duration = Duration::from_millis(250);

/// When a response happened: its flow's time, else the response time.
pub fn time_of(r: &GetFlowsResponse) -> i128 {
    match &r.response_types {
        Some(ResponseTypes::Flow(f)) if f.time.is_some() => ts_nanos(f.time.as_ref()),
        _ => ts_nanos(r.time.as_ref()),
    }
}

fn is_flow(r: &GetFlowsResponse) -> bool {
    matches!(r.response_types, Some(ResponseTypes::Flow(_)))
}

/// How many flows a non-follow query keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    All,
    Last(usize),
    First(usize),
}

/// Merge complete answers of several nodes: time order, then the limit on
/// flows (lost events and node status are kept).
pub fn merge_all(per_node: Vec<Vec<GetFlowsResponse>>, limit: Limit) -> Vec<GetFlowsResponse> {
    let mut all: Vec<GetFlowsResponse> = per_node.into_iter().flatten().collect();
    all.sort_by_key(time_of);
    let flows = all.iter().filter(|r| is_flow(r)).count();
    let (skip_first, keep) = match limit {
        Limit::All => (0, flows),
        Limit::Last(n) => (flows.saturating_sub(n), n.min(flows)),
        Limit::First(n) => (0, n.min(flows)),
    };
    let mut seen = 0usize;
    all.into_iter()
        .filter(|r| {
            if !is_flow(r) {
                return true;
            }
            seen += 1;
            seen > skip_first && seen <= skip_first + keep
        })
        .collect()
}

struct Held {
    time: i128,
    order: u64,
    arrived: Instant,
    resp: GetFlowsResponse,
}

impl PartialEq for Held {
    fn eq(&self, o: &Self) -> bool {
        (self.time, self.order) == (o.time, o.order)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Held {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.time, self.order).cmp(&(o.time, o.order))
    }
}

/// The follow merge of `n` node streams.
pub struct Merger {
    heap: BinaryHeap<Reverse<Held>>,
    /// Newest time seen per node; None: nothing yet.
    newest: Vec<Option<i128>>,
    open: Vec<bool>,
    order: u64,
    window: Duration,
}

impl Merger {
    pub fn new(nodes: usize, window: Duration) -> Self {
        Self { heap: BinaryHeap::new(), newest: vec![None; nodes], open: vec![true; nodes], order: 0, window }
    }

    /// A response from node `i`, received at `now`.
    pub fn push(&mut self, i: usize, resp: GetFlowsResponse, now: Instant) {
        let time = time_of(&resp);
        if let Some(n) = self.newest.get_mut(i) {
            *n = Some(n.map_or(time, |t| t.max(time)));
        }
        self.order += 1;
        self.heap.push(Reverse(Held { time, order: self.order, arrived: now, resp }));
    }

    /// Node `i` ended its stream: it holds nothing back any more.
    pub fn close(&mut self, i: usize) {
        if let Some(o) = self.open.get_mut(i) {
            *o = false;
        }
    }

    /// Every node has ended and everything was handed out.
    pub fn done(&self) -> bool {
        self.heap.is_empty() && !self.open.iter().any(|o| *o)
    }

    /// The responses that can go out at `now`, in time order.
    pub fn ready(&mut self, now: Instant) -> Vec<GetFlowsResponse> {
        let mut out = Vec::new();
        while let Some(Reverse(top)) = self.heap.peek() {
            let covered =
                self.open.iter().zip(&self.newest).all(|(open, newest)| !open || newest.is_some_and(|t| t >= top.time));
            let waited = now.saturating_duration_since(top.arrived) >= self.window;
            if !(covered || waited) {
                break;
            }
            if let Some(Reverse(h)) = self.heap.pop() {
                out.push(h.resp);
            }
        }
        out
    }

    /// When the oldest held response will have waited long enough.
    pub fn deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(h)| h.arrived + self.window)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use myelin_observe::proto::flow::{Flow, LostEvent};
    use myelin_observe::proto::Timestamp;

    fn flow(node: &str, secs: i64) -> GetFlowsResponse {
        let time = Some(Timestamp { seconds: secs, nanos: 0 });
        GetFlowsResponse {
            node_name: node.into(),
            time,
            response_types: Some(ResponseTypes::Flow(Flow { time, node_name: node.into(), ..Default::default() })),
        }
    }

    fn lost(node: &str, secs: i64) -> GetFlowsResponse {
        GetFlowsResponse {
            node_name: node.into(),
            time: Some(Timestamp { seconds: secs, nanos: 0 }),
            response_types: Some(ResponseTypes::LostEvents(LostEvent { num_events_lost: 1, ..Default::default() })),
        }
    }

    fn label(r: &GetFlowsResponse) -> String {
        let kind = if is_flow(r) { "" } else { "lost@" };
        format!("{kind}{}:{}", r.node_name, time_of(r) / 1_000_000_000)
    }

    fn labels(v: &[GetFlowsResponse]) -> Vec<String> {
        v.iter().map(label).collect()
    }

    #[test]
    fn complete_answers_merge_in_time_order_with_limits() {
        let a = vec![flow("n1", 1), flow("n1", 4), flow("n1", 6)];
        let b = vec![flow("n2", 2), lost("n2", 3), flow("n2", 5)];
        assert_eq!(
            labels(&merge_all(vec![a.clone(), b.clone()], Limit::All)),
            ["n1:1", "n2:2", "lost@n2:3", "n1:4", "n2:5", "n1:6"]
        );
        // --last 2: the newest two flows of all nodes; lost events stay.
        assert_eq!(labels(&merge_all(vec![a.clone(), b.clone()], Limit::Last(2))), ["lost@n2:3", "n2:5", "n1:6"]);
        assert_eq!(labels(&merge_all(vec![a.clone(), b.clone()], Limit::First(2))), ["n1:1", "n2:2", "lost@n2:3"]);
        assert_eq!(merge_all(vec![a, b], Limit::Last(100)).len(), 6);
        // Equal times keep each node's order.
        let c = vec![flow("n1", 7), flow("n1", 7)];
        let d = vec![flow("n2", 7)];
        assert_eq!(labels(&merge_all(vec![c, d], Limit::All)), ["n1:7", "n1:7", "n2:7"]);
    }

    #[test]
    fn follow_waits_for_every_streaming_node_then_emits_in_time_order() {
        let t0 = Instant::now();
        let mut m = Merger::new(2, WINDOW);
        m.push(0, flow("n1", 10), t0);
        m.push(0, flow("n1", 12), t0);
        // n2 has said nothing yet: hold (it may still send something older).
        assert!(m.ready(t0).is_empty());
        assert_eq!(m.deadline(), Some(t0 + WINDOW));
        m.push(1, flow("n2", 11), t0);
        // Now n2 has covered 10 and 11, not 12.
        assert_eq!(labels(&m.ready(t0)), ["n1:10", "n2:11"]);
        m.push(1, flow("n2", 13), t0);
        assert_eq!(labels(&m.ready(t0)), ["n1:12"]);
        // n1 is quiet: n2's 13 goes out once it has waited a window.
        assert!(m.ready(t0 + WINDOW / 2).is_empty());
        assert_eq!(labels(&m.ready(t0 + WINDOW)), ["n2:13"]);
        assert!(!m.done());
        m.close(0);
        m.close(1);
        assert!(m.done());
    }

    #[test]
    fn follow_a_closed_node_holds_nothing_back() {
        let t0 = Instant::now();
        let mut m = Merger::new(3, WINDOW);
        m.close(2);
        m.push(1, flow("n2", 5), t0);
        m.push(0, flow("n1", 4), t0);
        m.push(0, lost("n1", 6), t0);
        assert_eq!(labels(&m.ready(t0)), ["n1:4", "n2:5"]);
        m.close(1);
        assert_eq!(labels(&m.ready(t0)), ["lost@n1:6"]);
        m.close(0);
        assert!(m.done());
    }

    #[test]
    fn follow_backlogs_of_two_nodes_interleave() {
        // Two nodes replaying a --since backlog, arriving in bursts.
        let t0 = Instant::now();
        let mut m = Merger::new(2, WINDOW);
        let mut out = Vec::new();
        for s in [1, 3, 5, 7] {
            m.push(0, flow("n1", s), t0);
        }
        out.extend(m.ready(t0));
        for s in [2, 4, 6, 8] {
            m.push(1, flow("n2", s), t0 + Duration::from_millis(10));
        }
        out.extend(m.ready(t0 + Duration::from_millis(10)));
        out.extend(m.ready(t0 + Duration::from_millis(10) + WINDOW));
        assert_eq!(labels(&out), ["n1:1", "n2:2", "n1:3", "n2:4", "n1:5", "n2:6", "n1:7", "n2:8"]);
    }
}
