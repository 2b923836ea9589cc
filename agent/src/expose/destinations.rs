//! The destinations group: for each owner (a pod, the node) and direction, its top remote ends by
//! bytes — a Service, a pod, a node, an AWS service, an address — each with its bytes and
//! dollars, and everything else in one `other` series per traffic class. Summed over an owner's
//! destinations, bytes equal the owner's `netcost_network_bytes_total`.
//!
//! Ranking: each owner and direction keeps a small table of candidates (four times `top`) with a
//! byte score that decays with `half_life` (an exponentially decayed byte count, updated at every
//! drain). When the table is full, a new remote end takes the weakest non-member's place only if
//! its bytes in this drain exceed that candidate's score, so a spray of small talkers cannot
//! push out a steady one. A candidate joins the top when there is room, or when its score is
//! more than twice the weakest member's: membership does not flap from drain to drain. A member
//! that drops out loses its series (its past stays in Prometheus' history, which is what
//! `increase()` reads) and later bytes to it go to `other`. Member series are capped at
//! `max_series` for the whole agent; remote ends the cap refuses are counted once each, their
//! bytes go to `other`. So over any range, the increases of an owner's destination series add
//! up to the increase of its `netcost_network_bytes_total`.

use std::{
    collections::{HashMap, HashSet},
    time::Instant,
};

use prometheus_client::{
    encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Unit,
};
use serde::{Deserialize, Serialize};

use crate::{
    config::DestinationsConfig,
    vocab::{
        Direction, DollarCounter, Owner, Peer, PeerKind, PodLabels, Registries, TrafficClass,
        TrafficLabels,
    },
};

/// A member must outscore the weakest member this many times to take its place.
const HYSTERESIS: f64 = 2.0;
/// Candidates kept per owner and direction, per member.
const CANDIDATES_PER_MEMBER: usize = 4;

/// The labels of one destination series: the owner's, the direction and class, the remote end.
#[derive(Clone, Debug, Hash, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationLabels {
    pub owner: Owner,
    pub pod: PodLabels,
    pub direction: Direction,
    pub class: TrafficClass,
    pub peer: Peer,
}

/// Empty values are left out, as in the traffic series.
impl EncodeLabelSet for DestinationLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        ("owner", self.owner).encode(encoder.encode_label())?;
        let p = &self.pod;
        let peer = &self.peer;
        for (key, value) in [
            ("namespace", p.namespace.as_str()),
            ("pod", p.pod.as_str()),
            ("workload_kind", p.workload_kind.as_str()),
            ("workload", p.workload.as_str()),
            ("pod_uid", p.pod_uid.as_str()),
        ] {
            if !value.is_empty() {
                (key, value).encode(encoder.encode_label())?;
            }
        }
        ("traffic_class", self.class).encode(encoder.encode_label())?;
        ("direction", self.direction).encode(encoder.encode_label())?;
        ("remote_kind", peer.kind).encode(encoder.encode_label())?;
        for (key, value) in [
            ("remote_namespace", &*peer.namespace),
            ("remote_name", &*peer.name),
            ("remote_zone", &*peer.zone),
            ("remote_address", &*peer.address),
        ] {
            if !value.is_empty() {
                (key, value).encode(encoder.encode_label())?;
            }
        }
        if peer.port != 0 {
            ("port", peer.port.to_string().as_str()).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

type BoardKey = (Owner, PodLabels, Direction);
type Target = (TrafficClass, Peer);

#[derive(Clone, Copy, Debug, Default)]
struct Candidate {
    score: f64,
    member: bool,
    /// Refused by the cap once already (counted once).
    refused: bool,
}

#[derive(Debug, Default)]
struct Board {
    candidates: HashMap<Target, Candidate>,
    /// The classes whose `other` series exist.
    others: HashSet<TrafficClass>,
}

/// One series as a checkpoint keeps it; `score` is a member's ranking (0 for `other`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DestinationTotal {
    pub labels: DestinationLabels,
    pub bytes: u64,
    pub dollars: f64,
    pub score: f64,
}

pub struct DestinationMetrics {
    config: DestinationsConfig,
    bytes: Family<DestinationLabels, Counter>,
    cost: Family<DestinationLabels, DollarCounter>,
    series: Gauge,
    refused: Counter,
    boards: HashMap<BoardKey, Board>,
    /// This drain's bytes and dollars, ranked and recorded at `flush`.
    pending: HashMap<(BoardKey, Target), (u64, f64)>,
    members: usize,
    decayed_at: Option<Instant>,
}

impl DestinationMetrics {
    /// Registers nothing when destinations are off.
    pub fn register(registries: &mut Registries, config: &DestinationsConfig) -> Self {
        let m = DestinationMetrics {
            config: config.clone(),
            bytes: Family::default(),
            cost: Family::default(),
            series: Gauge::default(),
            refused: Counter::default(),
            boards: HashMap::new(),
            pending: HashMap::new(),
            members: 0,
            decayed_at: None,
        };
        if !config.enabled {
            return m;
        }
        let r = registries.durable();
        r.register_with_unit(
            "destination",
            "Bytes of netcost_network_bytes_total by remote end: each owner's top destinations per direction (remote_kind service, pod, node, aws_service, address, external), the rest in remote_kind=\"other\"",
            Unit::Bytes,
            m.bytes.clone(),
        );
        r.register_with_unit(
            "destination_cost",
            "Dollars of netcost_network_cost_dollars_total by remote end, as netcost_destination_bytes_total",
            Unit::Other("dollars".into()),
            m.cost.clone(),
        );
        let r = registries.live();
        r.register(
            "destination_series",
            "Destination series other than remote_kind=\"other\" (capped by destinations.max_series)",
            m.series.clone(),
        );
        r.register(
            "destination_refused",
            "Remote ends that ranked into an owner's top but got no series because destinations.max_series was reached (their bytes are in remote_kind=\"other\")",
            m.refused.clone(),
        );
        m
    }

    /// Bytes of `labels` (a traffic series) to `peer`, with their dollars; ranked at `flush`.
    pub fn add(&mut self, labels: &TrafficLabels, peer: Peer, bytes: u64, dollars: Option<f64>) {
        if !self.config.enabled {
            return;
        }
        let board = (labels.owner, labels.pod.clone(), labels.direction);
        let p = self
            .pending
            .entry((board, (labels.destination.class, peer)))
            .or_default();
        p.0 += bytes;
        p.1 += dollars.unwrap_or(0.0);
    }

    /// Ranks this drain's bytes and records them, each under its member or `other`.
    pub fn flush(&mut self, now: Instant) {
        if !self.config.enabled {
            return;
        }
        self.decay(now);
        let pending = std::mem::take(&mut self.pending);
        // Heaviest first, so that within a drain a heavy talker is never crowded out by many
        // small ones (and the outcome does not depend on hash order).
        let mut ranked: Vec<_> = pending
            .iter()
            .filter(|((_, target), _)| target.1.kind != PeerKind::Other)
            .map(|((board, target), (bytes, _))| (board, target, *bytes))
            .collect();
        ranked.sort_by_key(|r| std::cmp::Reverse(r.2));
        let mut touched: HashSet<BoardKey> = HashSet::new();
        let capacity = self.config.top * CANDIDATES_PER_MEMBER;
        for (board, target, bytes) in ranked {
            let b = self.boards.entry(board.clone()).or_default();
            if !b.candidates.contains_key(target) && b.candidates.len() >= capacity {
                // The table is full: a newcomer takes the weakest non-member's place only when
                // it outweighs it, so a spray of small talkers cannot push out a steady one.
                let weakest = b
                    .candidates
                    .iter()
                    .filter(|(_, c)| !c.member)
                    .min_by(|x, y| x.1.score.total_cmp(&y.1.score))
                    .map(|(t, c)| (t.clone(), c.score));
                match weakest {
                    Some((t, s)) if (bytes as f64) > s => {
                        b.candidates.remove(&t);
                    }
                    _ => continue,
                }
            }
            b.candidates.entry(target.clone()).or_default().score += bytes as f64;
            touched.insert(board.clone());
        }
        for board in &touched {
            self.rebalance(board);
        }
        for ((board, target), (bytes, dollars)) in pending {
            let member = self
                .boards
                .get(&board)
                .and_then(|b| b.candidates.get(&target))
                .is_some_and(|c| c.member);
            let target = if member {
                target
            } else {
                self.boards
                    .entry(board.clone())
                    .or_default()
                    .others
                    .insert(target.0);
                (target.0, Peer::other())
            };
            let labels = labels_of(&board, &target);
            self.bytes.get_or_create(&labels).inc_by(bytes);
            self.cost.get_or_create(&labels).inc_by(dollars);
        }
        self.series.set(self.members as i64);
    }

    fn decay(&mut self, now: Instant) {
        let Some(at) = self.decayed_at.replace(now) else {
            return;
        };
        let elapsed = now.saturating_duration_since(at).as_secs_f64();
        let factor = 0.5f64.powf(elapsed / self.config.half_life.as_secs_f64().max(1.0));
        for b in self.boards.values_mut() {
            for c in b.candidates.values_mut() {
                c.score *= factor;
            }
            // Forgotten talkers leave the table (members stay until replaced).
            b.candidates.retain(|_, c| c.member || c.score >= 1.0);
        }
    }

    /// Admits the best candidates while there is room, and swaps in one that clearly outranks
    /// the weakest member.
    fn rebalance(&mut self, board: &BoardKey) {
        loop {
            let Some(b) = self.boards.get(board) else {
                return;
            };
            let members = b.candidates.values().filter(|c| c.member).count();
            let best = b
                .candidates
                .iter()
                .filter(|(_, c)| !c.member && c.score > 0.0)
                .max_by(|x, y| x.1.score.total_cmp(&y.1.score))
                .map(|(t, c)| (t.clone(), c.score));
            let Some((best, best_score)) = best else {
                return;
            };
            if members >= self.config.top {
                let weakest = b
                    .candidates
                    .iter()
                    .filter(|(_, c)| c.member)
                    .min_by(|x, y| x.1.score.total_cmp(&y.1.score))
                    .map(|(t, c)| (t.clone(), c.score));
                match weakest {
                    Some((t, s)) if best_score > HYSTERESIS * s => self.demote(board, &t),
                    _ => return,
                }
            }
            if !self.admit(board, &best) {
                return;
            }
        }
    }

    fn admit(&mut self, board: &BoardKey, target: &Target) -> bool {
        let room = self.members < self.config.max_series;
        let top = self.config.top;
        let Some(b) = self.boards.get_mut(board) else {
            return false;
        };
        if !room {
            // Every candidate that would have had a place here is refused (counted once each).
            let members = b.candidates.values().filter(|c| c.member).count();
            let mut waiting: Vec<&mut Candidate> = b
                .candidates
                .values_mut()
                .filter(|c| !c.member && c.score > 0.0)
                .collect();
            waiting.sort_by(|x, y| y.score.total_cmp(&x.score));
            for c in waiting.into_iter().take(top.saturating_sub(members).max(1)) {
                if !c.refused {
                    c.refused = true;
                    self.refused.inc();
                }
            }
            return false;
        }
        let Some(c) = b.candidates.get_mut(target) else {
            return false;
        };
        c.member = true;
        self.members += 1;
        true
    }

    fn demote(&mut self, board: &BoardKey, target: &Target) {
        if let Some(c) = self
            .boards
            .get_mut(board)
            .and_then(|b| b.candidates.get_mut(target))
        {
            c.member = false;
            self.members -= 1;
            let labels = labels_of(board, target);
            self.bytes.remove(&labels);
            self.cost.remove(&labels);
        }
    }

    /// Removes every destination series of a pod (after its grace period).
    pub fn remove_pod(&mut self, uid: &str) {
        let gone: Vec<BoardKey> = self
            .boards
            .keys()
            .filter(|(owner, pod, _)| *owner == Owner::Pod && pod.pod_uid == uid)
            .cloned()
            .collect();
        for key in gone {
            let Some(b) = self.boards.remove(&key) else {
                continue;
            };
            for (target, c) in &b.candidates {
                if c.member {
                    self.members -= 1;
                    let labels = labels_of(&key, target);
                    self.bytes.remove(&labels);
                    self.cost.remove(&labels);
                }
            }
            for class in b.others {
                let labels = labels_of(&key, &(class, Peer::other()));
                self.bytes.remove(&labels);
                self.cost.remove(&labels);
            }
        }
        self.series.set(self.members as i64);
    }

    /// Every member and `other` series with its totals (and members' scores).
    pub fn totals(&self) -> Vec<DestinationTotal> {
        let mut out = Vec::new();
        for (key, b) in &self.boards {
            let members = b.candidates.iter().filter(|(_, c)| c.member);
            let others = b.others.iter().map(|class| ((*class, Peer::other()), 0.0));
            for (target, score) in members.map(|(t, c)| (t.clone(), c.score)).chain(others) {
                let labels = labels_of(key, &target);
                out.push(DestinationTotal {
                    bytes: self.bytes.get_or_create(&labels).get(),
                    dollars: self.cost.get_or_create(&labels).get(),
                    labels,
                    score,
                });
            }
        }
        out
    }

    /// Takes over a predecessor's series and ranking (labels cleaned by the caller).
    pub fn restore(&mut self, totals: &[DestinationTotal]) {
        if !self.config.enabled {
            return;
        }
        for t in totals {
            let l = &t.labels;
            let key = (l.owner, l.pod.clone(), l.direction);
            let b = self.boards.entry(key).or_default();
            if l.peer.kind == PeerKind::Other {
                b.others.insert(l.class);
            } else {
                let c = b.candidates.entry((l.class, l.peer.clone())).or_default();
                if !c.member {
                    c.member = true;
                    self.members += 1;
                }
                c.score = t.score;
            }
            self.bytes.get_or_create(l).inc_by(t.bytes);
            self.cost.get_or_create(l).inc_by(t.dollars);
        }
        self.series.set(self.members as i64);
    }
}

fn labels_of(board: &BoardKey, target: &Target) -> DestinationLabels {
    DestinationLabels {
        owner: board.0,
        pod: board.1.clone(),
        direction: board.2,
        class: target.0,
        peer: target.1.clone(),
    }
}

#[cfg(test)]
#[path = "destinations_tests.rs"]
mod tests;
